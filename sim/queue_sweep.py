"""Running queue scenarios over many seeds, summarising them, and shrinking failures.

``run_queue_seed`` runs and checks one seed of one scenario variant and returns a
``QueueSeedSummary`` (small and picklable, so sweeps run seeds in worker processes).
``sweep_queue`` runs a range of seeds in parallel. ``shrink_schedule`` searches fault
schedules with Hypothesis for the smallest one that still breaks a property, and
``replay_command`` prints the command that runs a seed (and schedule) again.
"""

from __future__ import annotations

import json
import logging
import random
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osqueue.checker import UNKNOWN
from osqueue.sim.queue_checks import QueueOutcome, check_queue_run, render_reports
from osqueue.sim.queue_report import REPORT_NAME, render_violation_report
from osqueue.sim.queue_scenarios import (
    FaultSchedule,
    QueueScenario,
    scenario_variants,
    schedule_for_seed,
    schedule_strategy,
)
from osqueue.sim.queue_world import NOT_APPLIED, QueueRun, QueueRunConfig, simulate_queue

logger = logging.getLogger(__name__)

DEFAULT_CHECK_TIMEOUT = 30.0
"""Wall seconds for each linearizability search of a run."""


@dataclass(frozen=True, slots=True)
class QueueSeedSummary:
    """One seed of one scenario variant: verdicts, violations and measured figures.

    Throughput is acknowledged client requests per virtual second of the whole run.
    Latencies are virtual seconds from invocation to completion of acknowledged requests.
    """

    scenario: str
    seed: int
    passed: bool
    violated: tuple[str, ...]
    messages: tuple[str, ...]
    queue_verdict: str
    store_verdict: str
    requests: int
    acknowledged: int
    throughput: float
    latency_p50: float
    latency_p95: float
    latency_p99: float
    commits: int
    conflicts: int
    faults: int
    faults_by_kind: dict[str, int] = field(default_factory=dict)
    simulate_seconds: float = 0.0
    check_seconds: float = 0.0
    replay: str = ""
    output: str | None = None


def replay_command(scenario: str, seed: int, *, flaws: Sequence[str] = (), lying: bool = False,
                   schedule_file: Path | None = None,
                   check_timeout: float = DEFAULT_CHECK_TIMEOUT) -> str:
    """Return the ``osqueue sim --scenario`` command that runs this seed again.

    ``--check-timeout`` is spelled out only when it differs from the queue-level default,
    because only then can it change the verdict of the replay.
    """

    words = ["osqueue", "sim", "--scenario", scenario, "--seed", str(seed)]
    if schedule_file is not None:
        words += ["--schedule", str(schedule_file)]
    for flaw in sorted(flaws):
        words += ["--reference", flaw]
    if lying:
        words.append("--lying")
    if check_timeout != DEFAULT_CHECK_TIMEOUT:
        words += ["--check-timeout", repr(float(check_timeout))]
    return shlex.join(words)


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
    return ordered[index]


def summarize(run: QueueRun, outcome: QueueOutcome, *, check_seconds: float,
              replay: str, output: str | None = None) -> QueueSeedSummary:
    """Return the summary of one checked run."""

    acknowledged = [op for op in run.ops if op.result is not UNKNOWN
                    and op.result is not NOT_APPLIED]
    latencies = [op.returned_at - op.called_at for op in acknowledged
                 if op.returned_at is not None]
    faults = {kind: count for kind, count in run.faults_injected.items() if count}
    messages = tuple(f"{violation.property}: {violation.message}"
                     for violation in outcome.violations[:5])
    return QueueSeedSummary(
        scenario=run.config.scenario.name,
        seed=run.config.seed,
        passed=outcome.passed,
        violated=tuple(outcome.violated()),
        messages=messages,
        queue_verdict=outcome.verdict("queue"),
        store_verdict=outcome.verdict("store"),
        requests=len(run.ops),
        acknowledged=len(acknowledged),
        throughput=len(acknowledged) / run.virtual_duration if run.virtual_duration else 0.0,
        latency_p50=_percentile(latencies, 0.50),
        latency_p95=_percentile(latencies, 0.95),
        latency_p99=_percentile(latencies, 0.99),
        commits=len(run.commits),
        conflicts=run.conflicts,
        faults=sum(faults.values()),
        faults_by_kind=faults,
        simulate_seconds=run.wall_time,
        check_seconds=check_seconds,
        replay=replay,
        output=output,
    )


def run_queue_seed(
    scenario: QueueScenario,
    seed: int,
    *,
    flaws: frozenset[str] = frozenset(),
    lying: bool = False,
    schedule: FaultSchedule | None = None,
    schedule_file: Path | None = None,
    out: Path | None = None,
    always_write: bool = False,
    check_timeout: float = DEFAULT_CHECK_TIMEOUT,
) -> QueueSeedSummary:
    """Run and check one seed; write its files to ``out`` when it fails (or always).

    Without ``schedule`` the seed draws its own (``schedule_for_seed``).
    """

    if schedule is None:
        schedule = schedule_for_seed(scenario, seed)
    config = QueueRunConfig(scenario, seed, schedule, flaws, lying)
    run = simulate_queue(config)
    started = time.perf_counter()
    outcome = check_queue_run(run, check_timeout=check_timeout)
    check_seconds = time.perf_counter() - started

    directory = None
    if out is not None and (always_write or not outcome.passed):
        directory = out / f"{scenario.name.replace('/', '-')}-seed-{seed}"
    if not _explicit(scenario, seed, schedule):
        schedule_file = None
    elif schedule_file is None and directory is not None:
        schedule_file = directory / "schedule.json"
    replay = replay_command(scenario.name, seed, flaws=sorted(flaws), lying=lying,
                            schedule_file=schedule_file, check_timeout=check_timeout)
    summary = summarize(run, outcome, check_seconds=check_seconds, replay=replay,
                        output=None if directory is None else str(directory))
    if directory is not None:
        write_run_outputs(run, outcome, directory, summary)
    return summary


def _explicit(scenario: QueueScenario, seed: int, schedule: FaultSchedule) -> bool:
    """True when ``schedule`` is not the one the seed draws by itself."""

    return schedule != schedule_for_seed(scenario, seed)


def write_run_outputs(run: QueueRun, outcome: QueueOutcome, directory: Path,
                      summary: QueueSeedSummary) -> list[Path]:
    """Write the histories, schedule, violations and HTML reports of a run to ``directory``.

    A failing run also gets ``violations.html``, a timeline of each violation.
    """

    directory.mkdir(parents=True, exist_ok=True)
    written = []

    schedule_path = directory / "schedule.json"
    run.config.schedule.dump(schedule_path)
    written.append(schedule_path)

    queue_path = directory / "queue-history.jsonl"
    with queue_path.open("w", encoding="utf-8") as stream:
        for op in run.ops:
            stream.write(json.dumps({
                "op_id": op.op_id, "client": op.client, "mutation": repr(op.mutation),
                "called_at": op.called_at, "returned_at": op.returned_at,
                "result": repr(op.result), "detail": op.detail, "delivered": op.delivered,
                "effect": repr(op.effect), "effect_at": op.effect_at,
            }) + "\n")
    written.append(queue_path)

    store_path = directory / "store-history.jsonl"
    with store_path.open("w", encoding="utf-8") as stream:
        for operation in run.store_history:
            stream.write(json.dumps(operation.to_record()) + "\n")
    written.append(store_path)

    violations_path = directory / "violations.txt"
    lines = [f"replay: {summary.replay}", f"schedule: {run.config.schedule.describe()}", ""]
    for violation in outcome.violations:
        lines.append(f"[{violation.property}] {violation.message}")
        lines.extend(f"    {item}" for item in violation.involved)
    violations_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    written.append(violations_path)

    for name, html in render_reports(run, outcome).items():
        path = directory / name
        path.write_text(html, encoding="utf-8")
        written.append(path)

    if outcome.violations:
        report_path = directory / REPORT_NAME
        report_path.write_text(render_violation_report(run, outcome, summary.replay),
                               encoding="utf-8")
        written.append(report_path)
    return written


def _run_task(arguments: tuple) -> QueueSeedSummary:
    name, seed, flaws, lying, out, check_timeout = arguments
    (scenario,) = scenario_variants(name)
    return run_queue_seed(scenario, seed, flaws=flaws, lying=lying, out=out,
                          check_timeout=check_timeout)


def sweep_queue(
    variants: Sequence[QueueScenario],
    seeds: Sequence[int],
    *,
    jobs: int = 1,
    flaws: frozenset[str] = frozenset(),
    lying: bool = False,
    out: Path | None = None,
    check_timeout: float = DEFAULT_CHECK_TIMEOUT,
) -> Iterator[QueueSeedSummary]:
    """Run every variant for every seed, in ``jobs`` processes; yield summaries as they end."""

    tasks = [(variant.name, seed, flaws, lying, out, check_timeout)
             for seed in seeds for variant in variants]
    if jobs <= 1:
        for task in tasks:
            yield _run_task(task)
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_run_task, task) for task in tasks]
        for future in as_completed(futures):
            yield future.result()


def shrink_schedule(
    scenario: QueueScenario,
    seed: int,
    *,
    flaws: frozenset[str] = frozenset(),
    lying: bool = False,
    kinds: Sequence[str] | None = None,
    max_examples: int = 100,
    fails: Callable[[QueueOutcome], bool] | None = None,
    check_timeout: float = DEFAULT_CHECK_TIMEOUT,
) -> FaultSchedule:
    """Return the smallest fault schedule Hypothesis finds for which the run of ``seed`` fails.

    ``fails`` decides what counts as failing (default: any violated property). Raises
    ``hypothesis.errors.NoSuchExample`` when no schedule among ``max_examples`` fails.
    """

    from hypothesis import HealthCheck, Phase, find, settings

    def failing(schedule: FaultSchedule) -> bool:
        run = simulate_queue(QueueRunConfig(scenario, seed, schedule, flaws, lying))
        outcome = check_queue_run(run, check_timeout=check_timeout)
        return fails(outcome) if fails is not None else not outcome.passed

    found = find(
        schedule_strategy(scenario, kinds),
        failing,
        settings=settings(
            max_examples=max_examples, database=None, deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate, Phase.shrink],
        ),
        random=random.Random(seed),
    )
    logger.info("shrunk schedule for %s seed %d: %s", scenario.name, seed, found.describe())
    return found


def summary_record(summary: QueueSeedSummary) -> dict[str, Any]:
    """Return a JSON-ready dict of ``summary``."""

    from dataclasses import asdict

    return asdict(summary)


__all__ = [
    "DEFAULT_CHECK_TIMEOUT",
    "QueueSeedSummary",
    "replay_command",
    "run_queue_seed",
    "shrink_schedule",
    "summarize",
    "sweep_queue",
    "write_run_outputs",
]
