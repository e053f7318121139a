"""Measure simulator speed: simulated storage operations per wall second, and seeds per minute.

Run ``.venv/bin/python benchmarks/bench_simulator.py [--seeds N] [--jobs J] [--no-docs]``.
It prints a table and rewrites the simulator section of docs/benchmarks.md (the text
between ``<!-- section: simulator -->`` and the next section marker) with the figures, the
command, the machine, the versions and the date. The configuration is the one
``osqueue sim`` uses by default (5 clients, 1000 operations, default faults).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.metadata
import os
import platform
import re
import sys
import time
from pathlib import Path

from osqueue.sim.runner import SimConfig, check_run, simulate
from osqueue.sim.sweep import sweep

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "simulator"


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


def machine_description() -> str:
    """Return the CPU model, core count, memory, Python and library versions."""

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        match = re.search(r"MemTotal:\s+(\d+) kB", meminfo.read_text())
        if match:
            memory = f", {int(match.group(1)) / 1024 / 1024:.0f} GiB of memory"
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("trio", "msgspec", "anyio")
    )
    return f"{os.cpu_count()} CPUs ({cpu}){memory}, Python {platform.python_version()}, {versions}"


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def render(figures: dict[str, float], seeds: int, jobs: int, load_before: str) -> str:
    """Return the simulator section of docs/benchmarks.md, marker included."""

    workload = SimConfig().workload
    return "\n".join([
        f"<!-- section: {SECTION} -->",
        "## Simulator",
        "",
        (f"Command: `.venv/bin/python benchmarks/bench_simulator.py --seeds {seeds} "
        f"--jobs {jobs}`. It runs seeds 1 to {seeds} at the defaults of `osqueue sim`: "
        f"{workload.clients} clients, {workload.operations} store operations per seed, "
        f"{workload.keys} keys, unique tokens, and 2% dropped requests, 2% dropped responses, "
        "2% late writes and 5% transient errors. First it runs them one after another in one "
        "process, timing the simulation and the two checks (spec predicates and "
        "linearizability) apart. Then it sweeps the same seeds through "
        f"`osqueue.sim.sweep.sweep` on {jobs} spawned processes; the sweep time includes "
        "process start-up and the checks."),
        "",
        f"Machine: {machine_description()}.  ",
        (f"Date: {dt.date.today().isoformat()}. Load average before the run: {load_before}. "
        "Other processes on the machine change these figures between runs."),
        "",
        "| measurement | value |",
        "| --- | ---: |",
        ("| simulated storage operations per wall second, simulation only, 1 process | "
        f"{figures['simulate_ops']:,.0f} |"),
        ("| simulated storage operations per wall second, simulation and both checks, "
        f"1 process | {figures['checked_ops']:,.0f} |"),
        (f"| seeds per minute, {seeds} seeds on {jobs} processes, with checks | "
        f"{figures['seeds_per_minute']:,.0f} |"),
        "",
    ])


def update_doc(section_text: str) -> None:
    """Replace the simulator section of docs/benchmarks.md with ``section_text``."""

    text = DOC.read_text()
    pattern = re.compile(rf"<!-- section: {SECTION} -->.*?(?=<!-- section: |\Z)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{DOC} has no '<!-- section: {SECTION} -->' marker; add it first")
    DOC.write_text(pattern.sub(lambda _: section_text + "\n", text, count=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100, help="seeds to run in each measurement")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="processes for the sweep measurement")
    parser.add_argument("--no-docs", action="store_true",
                        help="print the table only; leave docs/benchmarks.md unchanged")
    args = parser.parse_args()
    if args.seeds < 1 or args.jobs < 1:
        parser.error(f"--seeds and --jobs must be at least 1, got {args.seeds} and {args.jobs}")

    load_before = load_average()
    config = dataclasses.asdict(SimConfig().workload)
    operations, simulate_seconds, check_seconds = measure_single_process(args.seeds)
    sweep_seconds = measure_sweep(args.seeds, args.jobs)
    figures = {
        "simulate_ops": operations / simulate_seconds,
        "checked_ops": operations / (simulate_seconds + check_seconds),
        "seeds_per_minute": args.seeds / sweep_seconds * 60,
    }

    print(f"date: {dt.date.today().isoformat()}")
    print(f"machine: {machine_description()}")
    print(f"workload: {config['clients']} clients, {config['operations']} operations per seed")
    print()
    section = render(figures, args.seeds, args.jobs, load_before)
    print("\n".join(line for line in section.splitlines() if line.startswith("|")))
    if not args.no_docs:
        update_doc(section)
        print(f"\nupdated the {SECTION} section of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
