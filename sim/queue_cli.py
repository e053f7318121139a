"""The queue-level mode of ``osqueue sim`` (``--scenario NAME``): simulate the whole queue.

``osqueue.sim.cli`` parses the options and calls ``run_queue_simulation``. Exit codes: 0
when every property held for every seed of every variant, 1 when any property was
violated, 2 for invalid options (raised as ``typer.BadParameter``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from osqueue.sim.queue_scenarios import FaultSchedule, QueueScenario
    from osqueue.sim.queue_sweep import QueueSeedSummary

DEFAULT_SEED = 1
MAX_FAILURES_SHOWN = 10


def run_queue_simulation(
    *,
    scenario: str,
    seed: int | None,
    seeds: str | None,
    jobs: int,
    schedule: Path | None,
    reference: list[str] | None,
    lying: bool,
    shrink: bool,
    shrink_examples: int,
    check_timeout: float,
    out: Path | None,
) -> int:
    """Run ``scenario`` for one seed or a range, print the summary and return the exit code.

    Every option is checked before the first seed runs, so invalid input raises
    ``typer.BadParameter`` (exit 2) and never starts a run.
    """

    from osqueue.sim.queue_scenarios import FLAWS, FaultSchedule, scenario_variants
    from osqueue.sim.sweep import parse_seed_range

    console = Console()
    if not console.is_terminal:
        # A pipe or file gets 80 columns by default, too narrow for the summary table.
        console = Console(width=150)
    try:
        variants = scenario_variants(scenario)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--scenario") from None
    seed_range = _parse_seeds(seed, seeds, parse_seed_range)
    flaws = frozenset(reference or ())
    unknown = sorted(flaws - set(FLAWS))
    if unknown:
        raise typer.BadParameter(
            f"unknown flaw {unknown[0]!r}; use one of {', '.join(FLAWS)}",
            param_hint="--reference")
    if not (math.isfinite(check_timeout) and check_timeout > 0):
        raise typer.BadParameter(
            f"must be a finite number of wall seconds > 0, got {check_timeout}",
            param_hint="--check-timeout")
    if shrink_examples < 1:
        raise typer.BadParameter(f"must be >= 1, got {shrink_examples}",
                                 param_hint="--shrink-examples")
    loaded: FaultSchedule | None = None
    if schedule is not None:
        try:
            loaded = FaultSchedule.load(schedule)
        except (ValueError, TypeError) as error:
            raise typer.BadParameter(str(error), param_hint="--schedule") from None
        if seeds is not None:
            raise typer.BadParameter(
                "--schedule replays one run; combine it with --seed N, not --seeds",
                param_hint="--schedule")
    _quiet_expected_warnings()

    started = time.perf_counter()
    summaries = _run(console, variants, seed_range, jobs or os.cpu_count() or 1, flaws, lying,
                     loaded, schedule, out, check_timeout, single=seeds is None)
    elapsed = time.perf_counter() - started
    _print_summary(console, variants, summaries, elapsed)
    failed = [summary for summary in summaries if not summary.passed]
    if seeds is None:
        # Failing runs list their files with their violations; passing ones list them here.
        for summary in summaries:
            if summary.passed and summary.output:
                console.print(f"wrote {summary.output}", markup=False)
    _print_failures(console, failed)
    if failed and shrink:
        _shrink(console, variants, failed[0], flaws, lying, shrink_examples, out, check_timeout)
    return 1 if failed else 0


def _parse_seeds(seed: int | None, seeds: str | None, parse_seed_range) -> range:
    if seed is not None and seeds is not None:
        raise typer.BadParameter(
            f"--seed {seed} and --seeds {seeds} cannot be combined; pass --seed N for one run "
            "or --seeds A..B for a sweep", param_hint="--seed")
    if seeds is not None:
        try:
            return parse_seed_range(seeds)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--seeds") from None
    value = DEFAULT_SEED if seed is None else seed
    if value < 0:
        raise typer.BadParameter(f"must be >= 0, got {value}", param_hint="--seed")
    return range(value, value + 1)


def _quiet_expected_warnings() -> None:
    # The simulation injects faults on purpose, so the engine's warnings about failed
    # batches are expected; the summary reports them as figures instead.
    for name in ("osqueue.engine", "osqueue.election", "osqueue.sim.reference_engine",
                 "osqueue.sim.queue_world"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() >= logging.WARNING:
            logger.setLevel(logging.CRITICAL)


def _run(console: Console, variants: list[QueueScenario], seed_range: range, jobs: int,
         flaws: frozenset[str], lying: bool, schedule: FaultSchedule | None,
         schedule_file: Path | None, out: Path | None, check_timeout: float,
         single: bool) -> list[QueueSeedSummary]:
    from osqueue.sim.queue_sweep import run_queue_seed, sweep_queue

    if single:
        return [
            run_queue_seed(variant, seed_range.start, flaws=flaws, lying=lying,
                           schedule=schedule, schedule_file=schedule_file, out=out,
                           always_write=True, check_timeout=check_timeout)
            for variant in variants
        ]
    summaries = []
    total = len(seed_range) * len(variants)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[failed]} failed"))
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("seeds", total=total, failed=0)
        failed = 0
        for summary in sweep_queue(variants, seed_range, jobs=jobs, flaws=flaws, lying=lying,
                                   out=out, check_timeout=check_timeout):
            summaries.append(summary)
            failed += not summary.passed
            progress.update(task, advance=1, failed=failed)
    summaries.sort(key=lambda summary: (summary.scenario, summary.seed))
    return summaries


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _print_summary(console: Console, variants: list[QueueScenario],
                   summaries: list[QueueSeedSummary], elapsed: float) -> None:
    table = Table(title="osqueue sim --scenario: virtual time, means over seeds")
    for column in ("scenario", "passed", "requests", "acked/s", "latency p50/p95/p99 ms",
                   "commits", "conflicts", "faults", "linearizable queue/store"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for variant in variants:
        rows = [summary for summary in summaries if summary.scenario == variant.name]
        if not rows:
            continue
        latencies = "/".join(
            f"{1000 * _mean([getattr(row, name) for row in rows]):.0f}"
            for name in ("latency_p50", "latency_p95", "latency_p99"))
        queue_ok = sum(row.queue_verdict == "linearizable" for row in rows)
        store_ok = sum(row.store_verdict == "linearizable" for row in rows)
        table.add_row(
            variant.name, f"{sum(row.passed for row in rows)}/{len(rows)}",
            f"{_mean([row.requests for row in rows]):.0f}",
            f"{_mean([row.throughput for row in rows]):.2f}",
            latencies,
            f"{_mean([row.commits for row in rows]):.0f}",
            f"{_mean([row.conflicts for row in rows]):.1f}",
            f"{_mean([row.faults for row in rows]):.1f}",
            f"{queue_ok}/{store_ok} of {len(rows)}",
        )
    console.print(table)

    faults: dict[str, int] = {}
    for summary in summaries:
        for kind, count in summary.faults_by_kind.items():
            faults[kind] = faults.get(kind, 0) + count
    if faults:
        console.print("faults injected: " + ", ".join(
            f"{kind} {count}" for kind, count in sorted(faults.items())), soft_wrap=True)
    rate = len(summaries) / elapsed * 60 if elapsed > 0 else 0.0
    console.print(f"{len(summaries)} run(s) in {elapsed:.1f} wall s ({rate:.0f} runs/minute)")


def _print_failures(console: Console, failed: list[QueueSeedSummary]) -> None:
    if not failed:
        console.print("[bold green]PASSED[/]: every property held")
        return
    console.print(f"[bold red]FAILED[/]: {len(failed)} run(s) violated a property")
    for summary in failed[:MAX_FAILURES_SHOWN]:
        console.print(f"{summary.scenario} seed {summary.seed}: {', '.join(summary.violated)}",
                      markup=False)
        for message in summary.messages[:2]:
            console.print(f"  {message[:400]}", markup=False, soft_wrap=True)
        if summary.output:
            console.print(f"  files: {summary.output}", markup=False)
        console.print(f"  replay: {summary.replay}", markup=False, soft_wrap=True)
    if len(failed) > MAX_FAILURES_SHOWN:
        console.print(f"... and {len(failed) - MAX_FAILURES_SHOWN} more")


def _shrink(console: Console, variants: list[QueueScenario], failed: QueueSeedSummary,
            flaws: frozenset[str], lying: bool, examples: int, out: Path | None,
            check_timeout: float) -> None:
    from hypothesis.errors import NoSuchExample
    from osqueue.sim.queue_sweep import replay_command, shrink_schedule

    (variant,) = [item for item in variants if item.name == failed.scenario]
    console.print(f"shrinking the fault schedule of {variant.name} seed {failed.seed} "
                  f"(up to {examples} schedules)...")
    try:
        schedule = shrink_schedule(variant, failed.seed, flaws=flaws, lying=lying,
                                   max_examples=examples, check_timeout=check_timeout)
    except NoSuchExample:
        console.print("no failing schedule found; the failure may need the seed's own "
                      "background faults only", markup=False)
        return
    path = (out or Path(".")) / "shrunk-schedule.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    schedule.dump(path)
    console.print(f"shrunk schedule: {schedule.describe()}", markup=False)
    console.print(f"  written to {path}; replay: "
                  f"{replay_command(variant.name, failed.seed, flaws=sorted(flaws), lying=lying, schedule_file=path, check_timeout=check_timeout)}",
                  markup=False, soft_wrap=True)
