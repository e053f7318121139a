"""Running many seeds in parallel processes and summarising each one."""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import re
import shlex
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from osqueue.sim.faults import FaultConfig
from osqueue.sim.runner import (
    DEFAULT_CHECK_TIMEOUT,
    SimConfig,
    check_run,
    simulate,
    write_outputs,
)
from osqueue.sim.workload import WorkloadConfig

logger = logging.getLogger(__name__)

# The signs are matched so that a negative seed gets its own message.
_SEED_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")

_CLI_FAULT_FIELDS = frozenset({
    "timeout", "drop_request", "drop_response", "applied_late", "error_rate",
    "write_rate_limit_per_second", "lying",
})
"""The ``FaultConfig`` fields that ``osqueue sim`` options set."""

_CLI_WORKLOAD_FIELDS = frozenset({
    "clients", "operations", "keys", "reads_per_minute", "writes_per_minute",
})
"""The ``WorkloadConfig`` fields that ``osqueue sim`` options set."""


def parse_seed_range(text: str) -> range:
    """Return the seeds of ``"A..B"`` (both ends included).

    Raises ValueError for other text, for a negative seed (``random.Random(-n)`` draws the
    same numbers as ``random.Random(n)``) and for an empty range.
    """

    match = _SEED_RANGE.match(text)
    if match is None:
        raise ValueError(f"invalid seed range {text!r}; write it as A..B, for example 1..20")
    first, last = int(match.group(1)), int(match.group(2))
    if first < 0 or last < 0:
        raise ValueError(
            f"seed range {text!r} contains a negative seed; seeds must be >= 0 because a "
            "negative seed repeats the history of its absolute value"
        )
    if last < first:
        raise ValueError(f"seed range {text!r} is empty; the second seed must be >= the first")
    return range(first, last + 1)


@dataclass(frozen=True, slots=True)
class SeedSummary:
    """The result of one seed's run and checks, small enough to send between processes."""

    seed: int
    operations: int
    faults_injected: dict[str, int]
    violations: int
    first_violation: str | None
    verdict: str
    passed: bool
    simulate_seconds: float
    check_seconds: float
    output: str | None
    """The directory the history was written to, or None."""


def run_seed(
    config: SimConfig, out: Path | None, write_passing: bool, check_timeout: float | None
) -> SeedSummary:
    """Simulate and check one configuration; write its files to ``out`` if it failed.

    Passing runs are written only when ``write_passing`` is True. An exception in the
    simulator or a checker fails the seed instead of the sweep, with the error as its
    first violation.
    """

    try:
        return _run_seed(config, out, write_passing, check_timeout)
    except Exception as error:  # a crash is a finding: report the seed, keep sweeping
        logger.exception("seed %d crashed", config.seed)
        return SeedSummary(
            seed=config.seed,
            operations=0,
            faults_injected={},
            violations=0,
            first_violation=f"crashed: {type(error).__name__}: {error}",
            verdict="error",
            passed=False,
            simulate_seconds=0.0,
            check_seconds=0.0,
            output=None,
        )


def _run_seed(
    config: SimConfig, out: Path | None, write_passing: bool, check_timeout: float | None
) -> SeedSummary:
    run = simulate(config)
    started = time.perf_counter()
    outcome = check_run(run, timeout=check_timeout)
    check_seconds = time.perf_counter() - started

    output = None
    if out is not None and (write_passing or not outcome.passed):
        write_outputs(run, outcome, out)
        output = str(out)
    first = outcome.violations[0] if outcome.violations else None
    return SeedSummary(
        seed=config.seed,
        operations=len(run.history),
        faults_injected=run.faults_injected,
        violations=len(outcome.violations),
        first_violation=None if first is None else f"{first.guarantee}: {first.message}",
        verdict=outcome.verdict,
        passed=outcome.passed,
        simulate_seconds=run.wall_time,
        check_seconds=check_seconds,
        output=output,
    )


def sweep(
    config: SimConfig,
    seeds: range,
    *,
    jobs: int,
    out: Path | None,
    check_timeout: float | None,
    on_done: Callable[[SeedSummary], None] | None = None,
) -> list[SeedSummary]:
    """Run ``config`` under every seed in ``seeds`` on ``jobs`` processes.

    Failing seeds write their history to ``out / f"seed-{seed}"``. ``on_done`` is called in
    this process as each seed finishes, in completion order; the result is sorted by seed.
    """

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    # Checked here because otherwise every seed would fail in the checker with the same error.
    if check_timeout is not None and not (math.isfinite(check_timeout) and check_timeout > 0):
        raise ValueError(
            f"check_timeout must be a finite number of seconds > 0 or None, got {check_timeout}"
        )
    logger.info("sweep of seeds %d..%d starts on %d processes", seeds.start, seeds[-1], jobs)
    summaries: list[SeedSummary] = []
    for summary in _run_all(config, seeds, jobs, out, check_timeout):
        summaries.append(summary)
        if on_done is not None:
            on_done(summary)
    logger.info("sweep finished: %d of %d seeds failed", sum(not s.passed for s in summaries),
                len(summaries))
    return sorted(summaries, key=lambda summary: summary.seed)


def _run_all(
    config: SimConfig, seeds: range, jobs: int, out: Path | None, check_timeout: float | None
) -> Iterator[SeedSummary]:
    def seed_dir(seed: int) -> Path | None:
        return None if out is None else out / f"seed-{seed}"

    if jobs == 1:
        for seed in seeds:
            yield run_seed(dataclasses.replace(config, seed=seed), seed_dir(seed), False,
                           check_timeout)
        return

    # spawn starts clean interpreters, so no state of this process leaks into the runs.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures: list[Future[SeedSummary]] = [
            pool.submit(run_seed, dataclasses.replace(config, seed=seed), seed_dir(seed), False,
                        check_timeout)
            for seed in seeds
        ]
        for future in as_completed(futures):
            yield future.result()


def replay_command(
    config: SimConfig, out: str | None = None, check_timeout: float = DEFAULT_CHECK_TIMEOUT
) -> str:
    """Return the ``osqueue sim`` command line that reruns ``config`` and its checks.

    The command spells out every option that changes the history or the verdict, including
    ``--check-timeout``. Raises ValueError when ``config`` sets a field that no option can
    express (a latency distribution, for example), because the command would then run a
    different configuration.
    """

    _require_cli_config(config)
    faults = config.faults
    workload = config.workload
    parts = [
        "osqueue", "sim",
        "--seed", str(config.seed),
        "--clients", str(workload.clients),
        "--ops", str(workload.operations),
        "--keys", str(workload.keys),
        "--drop-request", repr(faults.drop_request),
        "--drop-response", repr(faults.drop_response),
        "--late", repr(faults.applied_late),
        "--error-rate", repr(faults.error_rate),
        "--timeout", repr(faults.timeout),
        "--rate-limit-per-second", repr(faults.write_rate_limit_per_second or 0.0),
        "--token-policy", config.policy.value,
        "--check-timeout", repr(float(check_timeout)),
    ]
    if workload.reads_per_minute is not None:
        parts += ["--reads-per-minute", repr(workload.reads_per_minute)]
    if workload.writes_per_minute is not None:
        parts += ["--writes-per-minute", repr(workload.writes_per_minute)]
    if faults.lying:
        parts.append("--lying")
    if out is not None:
        parts += ["--out", out]
    return shlex.join(parts)


def _require_cli_config(config: SimConfig) -> None:
    """Raise ValueError naming the fields of ``config`` that no ``osqueue sim`` option sets
    and that differ from their defaults."""

    fixed = [
        f"faults.{name}" for name in _differing_fields(config.faults, FaultConfig())
        if name not in _CLI_FAULT_FIELDS
    ] + [
        f"workload.{name}" for name in _differing_fields(config.workload, WorkloadConfig())
        if name not in _CLI_WORKLOAD_FIELDS
    ]
    if fixed:
        raise ValueError(
            f"no osqueue sim options set {', '.join(fixed)}; rerun this configuration from "
            "Python with the same SimConfig"
        )


def _differing_fields(value: object, default: object) -> list[str]:
    return [
        item.name for item in dataclasses.fields(value)  # type: ignore[arg-type]
        if getattr(value, item.name) != getattr(default, item.name)
    ]
