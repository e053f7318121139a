"""Measure simulator speed: simulated storage operations per wall second, and seeds per minute.

Run ``.venv/bin/python benchmarks/bench_simulator.py [--seeds N] [--jobs J]``. It prints a Markdown table
for the simulator section of docs/benchmarks.md. The default configuration is the one
``osqueue sim`` uses (5 clients, 1000 operations, default faults).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import time

from osqueue.sim.runner import SimConfig, check_run, simulate
from osqueue.sim.sweep import sweep


def measure_single_process(seeds: int) -> tuple[int, float, float]:
    """Return (operations, simulate seconds, check seconds) over ``seeds`` runs in this process."""

    operations = 0
    simulate_seconds = 0.0
    check_seconds = 0.0
    for seed in range(1, seeds + 1):
        run = simulate(SimConfig(seed=seed))
        started = time.perf_counter()
        outcome = check_run(run)
        check_seconds += time.perf_counter() - started
        if not outcome.passed:
            raise SystemExit(f"seed {seed} failed its checks; run `osqueue sim --seed {seed}`")
        operations += len(run.history)
        simulate_seconds += run.wall_time
    return operations, simulate_seconds, check_seconds


def measure_sweep(seeds: int, jobs: int) -> float:
    """Return the wall seconds of a sweep over seeds 1..``seeds`` on ``jobs`` processes."""

    started = time.perf_counter()
    summaries = sweep(SimConfig(), range(1, seeds + 1), jobs=jobs, out=None, check_timeout=60.0)
    elapsed = time.perf_counter() - started
    failed = [summary.seed for summary in summaries if not summary.passed]
    if failed:
        raise SystemExit(f"seeds {failed} failed their checks")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100, help="seeds to run in each measurement")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="processes for the sweep measurement")
    args = parser.parse_args()

    config = dataclasses.asdict(SimConfig().workload)
    operations, simulate_seconds, check_seconds = measure_single_process(args.seeds)
    sweep_seconds = measure_sweep(args.seeds, args.jobs)

    print(f"date: {dt.date.today().isoformat()}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"workload: {config['clients']} clients, {config['operations']} operations per seed")
    print()
    print("| measurement | value |")
    print("| --- | --- |")
    print(f"| simulated operations per wall second (simulation only, 1 process) | "
          f"{operations / simulate_seconds:,.0f} |")
    print(f"| simulated operations per wall second (simulation + both checks, 1 process) | "
          f"{operations / (simulate_seconds + check_seconds):,.0f} |")
    print(f"| seeds per minute, sweep of {args.seeds} seeds on {args.jobs} processes | "
          f"{args.seeds / sweep_seconds * 60:,.0f} |")


if __name__ == "__main__":
    main()
