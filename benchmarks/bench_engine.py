"""Benchmark the group-commit engine on the in-memory backend.

Scenarios (each on a fresh MemoryBackend):

1. enqueue throughput: 1000 concurrent submitters enqueue 20,000 jobs in total, with
   storage latency 0 and 10 ms per operation;
2. steady mix: 1000 submitters loop over enqueue, claim and complete at latency 0, one
   ``submit`` call per mutation (the row compared with the reference figure);
3. the same mix with ``submit_many``: each round a submitter sends its complete of the
   previous round's claim, an enqueue and a claim in one call, so it waits once per round
   instead of three times. The mutations are the same; only the calls differ, and the
   reference has no figure for it;
4. large state: single-enqueue commits while 100,000 jobs (about 14.7 MB of JSON) are in
   the queue; reports the median commit latency.

Every scenario runs under asyncio; the two steady-mix scenarios run again under trio.

Run ``python benchmarks/bench_engine.py`` (add ``--write-docs`` to replace the engine
section of docs/benchmarks.md, ``--quick`` for a smaller smoke run). The reference figures
are those of the TypeScript implementation, with its Node.js figures in brackets.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec
from osqueue.engine import EngineConfig, GroupCommitEngine
from osqueue.mutations import apply_batch
from osqueue.spec import queue as spec
from osqueue.state import encode_state, initial_state
from osqueue.storage.memory import MemoryBackend
from rich.console import Console
from rich.table import Table

KEY = "queue.json"
LOAD_BEFORE = " ".join(f"{value:.2f}" for value in os.getloadavg())
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTION = "<!-- section: engine -->"

REFERENCE = {
    "enqueue, latency 0 ms": (37_839, "37,839 (Node 15,467) mutations/s"),
    "enqueue, latency 10 ms": (24_551, "24,551 (Node 11,356) mutations/s"),
    "steady mix, latency 0 ms": (239_000, "239k mutations/s"),
    "commit with 100,000 jobs": (27.9, "median 27.9 ms (Node 77 ms)"),
}


@dataclass
class Row:
    name: str
    value: float
    unit: str
    detail: str


def make_engine(backend: MemoryBackend, seed: int) -> GroupCommitEngine:
    config = EngineConfig(
        lease_seconds=60.0, heartbeat_timeout=300.0, max_batch_size=5000, max_pending=200_000,
        max_state_bytes=256 * 1024 * 1024,
    )
    return GroupCommitEngine(backend, address="bench", config=config, rng=random.Random(seed))


async def enqueue_throughput(latency: float, submitters: int, total: int) -> Row:
    backend = MemoryBackend(latency=latency)
    per_submitter = total // submitters

    async with make_engine(backend, 1) as engine:
        async def submitter(worker: int) -> None:
            for number in range(per_submitter):
                await engine.submit(spec.Enqueue.one("email", {"worker": worker, "n": number}))

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for worker in range(submitters):
                group.start_soon(submitter, worker)
        elapsed = time.perf_counter() - started
        summary = engine.stats.summary()

    rate = submitters * per_submitter / elapsed
    return Row(
        f"enqueue, latency {latency * 1000:g} ms", rate, "mutations/s",
        f"{submitters * per_submitter} enqueues by {submitters} submitters in {elapsed:.2f} s; "
        f"{summary['commits']} commits, mean batch {summary['batch_size_mean']:.0f}",
    )


async def steady_mix(submitters: int, rounds: int) -> Row:
    backend = MemoryBackend()
    count = 0

    async with make_engine(backend, 2) as engine:
        async def submitter(worker: int) -> None:
            nonlocal count
            for number in range(rounds):
                await engine.submit(spec.Enqueue.one("email", {"n": number}))
                claimed = await engine.submit(spec.Claim(f"w{worker}"))
                count += 2
                if isinstance(claimed, spec.Claimed):
                    await engine.submit(spec.Complete(claimed.job_id, claimed.token))
                    count += 1

        started = time.perf_counter()
        cpu_started = time.process_time()
        async with anyio.create_task_group() as group:
            for worker in range(submitters):
                group.start_soon(submitter, worker)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        summary = engine.stats.summary()

    return Row(
        "steady mix, latency 0 ms", count / elapsed, "mutations/s",
        f"{count} mutations (enqueue, claim, complete) by {submitters} submitters in "
        f"{elapsed:.2f} s ({count / cpu:,.0f} per CPU second); mean batch "
        f"{summary['batch_size_mean']:.0f}",
    )


async def steady_mix_many(submitters: int, rounds: int) -> Row:
    backend = MemoryBackend()
    count = 0

    async with make_engine(backend, 2) as engine:
        async def submitter(worker: int) -> None:
            nonlocal count
            claimed = None
            for number in range(rounds):
                mutations = [spec.Enqueue.one("email", {"n": number}), spec.Claim(f"w{worker}")]
                if isinstance(claimed, spec.Claimed):
                    mutations.insert(0, spec.Complete(claimed.job_id, claimed.token))
                results = await engine.submit_many(mutations)
                count += len(results)
                claimed = results[-1]
            if isinstance(claimed, spec.Claimed):
                await engine.submit(spec.Complete(claimed.job_id, claimed.token))
                count += 1

        started = time.perf_counter()
        cpu_started = time.process_time()
        async with anyio.create_task_group() as group:
            for worker in range(submitters):
                group.start_soon(submitter, worker)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        summary = engine.stats.summary()

    return Row(
        "steady mix with submit_many, latency 0 ms", count / elapsed, "mutations/s",
        f"{count} mutations (enqueue, claim, complete) by {submitters} submitters in "
        f"{elapsed:.2f} s ({count / cpu:,.0f} per CPU second), one submit_many call per "
        f"round; mean batch {summary['batch_size_mean']:.0f}",
    )


async def large_state_commit(jobs: int, samples: int) -> Row:
    state = initial_state()
    # About 155 bytes of JSON per job with this payload, close to the reference's 14.7 MB
    # for 100,000 jobs.
    payload = {"to": "user@example.com"}
    chunk = 5000
    for start in range(0, jobs, chunk):
        batch = spec.Enqueue(tuple(spec.NewJob("email", payload) for _ in range(chunk)))
        state = apply_batch(state, [batch], now=0.0, commit_id=f"load-{start}",
                            heartbeat_timeout=300.0).state
    data = encode_state(state)
    backend = MemoryBackend()
    await backend.create_if_not_exists(KEY, data)

    latencies = []
    async with make_engine(backend, 3) as engine:
        for number in range(samples):
            started = time.perf_counter()
            await engine.submit(spec.Enqueue.one("email", {"sample": number}))
            latencies.append(time.perf_counter() - started)

    median = statistics.median(latencies) * 1000
    return Row(
        f"commit with {jobs:,} jobs", median, "ms (median)",
        f"{samples} single-enqueue commits on a {len(data) / 1e6:.1f} MB state; "
        f"p90 {sorted(latencies)[int(samples * 0.9)] * 1000:.1f} ms",
    )


async def median_of(runs: int, scenario, *args) -> Row:
    """Run ``scenario`` ``runs`` times and return the run with the median value."""

    rows = [await scenario(*args) for _ in range(runs)]
    rows.sort(key=lambda row: row.value)
    chosen = rows[len(rows) // 2]
    values = ", ".join(f"{row.value:,.0f}" for row in rows)
    chosen.detail += f"; median of {runs} runs ({values})"
    return chosen


async def run(quick: bool) -> list[Row]:
    scale = 10 if quick else 1
    runs = 1 if quick else 3
    rows = [
        await median_of(runs, enqueue_throughput, 0.0, 1000, 20_000 // scale),
        await median_of(runs, enqueue_throughput, 0.010, 1000, 20_000 // scale),
        await median_of(runs, steady_mix, 1000, 30 // min(scale, 3)),
        await median_of(runs, steady_mix_many, 1000, 30 // min(scale, 3)),
        await large_state_commit(100_000 // scale, 30),
    ]
    return rows


async def run_steady_mix_only(quick: bool) -> list[Row]:
    """Run the two steady-mix scenarios, for the comparison of event loops."""

    runs = 1 if quick else 3
    rounds = 30 // (3 if quick else 1)
    return [
        await median_of(runs, steady_mix, 1000, rounds),
        await median_of(runs, steady_mix_many, 1000, rounds),
    ]


def run_all(quick: bool) -> list[Row]:
    """Run every scenario under asyncio, then the steady mix again under trio."""

    rows = anyio.run(run, quick, backend="asyncio")
    for row in anyio.run(run_steady_mix_only, quick, backend="trio"):
        row.name += ", trio"
        rows.append(row)
    return rows


def ratio(row: Row) -> str:
    reference = REFERENCE.get(row.name)
    if reference is None:
        return "-"
    value = reference[0]
    if row.unit.startswith("ms"):
        return f"{value / row.value:.2f}x"  # lower latency is better
    return f"{row.value / value:.2f}x"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"msgspec {msgspec.__version__}, {platform.system()}")


def render_markdown(rows: list[Row], command: str) -> str:
    lines = [
        SECTION,
        "## Group-commit engine",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Load average before the run: {LOAD_BEFORE}  ",
        (
            "Backend: `MemoryBackend` in the same process. Event loop: asyncio (the default "
            "of `anyio.run`), and trio for the rows marked so."
        ),
        "",
        "| scenario | result | reference (TypeScript) | ratio | detail |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        reference = REFERENCE.get(row.name, (None, "-"))[1]
        lines.append(
            f"| {row.name} | {row.value:,.1f} {row.unit} | {reference} | {ratio(row)} | "
            f"{row.detail} |"
        )
    lines += [
        "",
        (
            "A ratio above 1 means faster than the reference. Throughput counts mutations "
            "acknowledged to their submitters, each after its commit landed. Other processes "
            "shared the machine (see the load average), so single runs vary by up to a factor "
            "of two; the throughput rows give the median of three runs. The steady-mix rows "
            "also give mutations per second of the process's CPU time, which depends less on "
            "that load."
        ),
        "",
        (
            "The steady-mix rows with `submit_many` run the same mutations as the steady mix "
            "(per submitter and round one enqueue, one claim and the complete of that claim), "
            "but each submitter sends the complete of its previous claim, its next enqueue and "
            "its next claim in one `GroupCommitEngine.submit_many` call and waits once per "
            "round instead of three times. These rows have no reference figure and no ratio: "
            "the reference's steady-mix figure is compared with the plain steady-mix row, "
            "which waits once per mutation."
        ),
        "",
    ]
    return "\n".join(lines)


def write_docs(markdown: str) -> None:
    text = DOCS.read_text()
    start = text.index(SECTION)
    following = text.find("<!-- section:", start + len(SECTION))
    end = following if following != -1 else len(text)
    DOCS.write_text(text[:start] + markdown + "\n" + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", action="store_true",
                        help="replace the engine section of docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="a tenth of the work, for a smoke run")
    arguments = parser.parse_args()

    rows = run_all(arguments.quick)

    table = Table(title="group-commit engine")
    for column in ("scenario", "result", "reference", "ratio", "detail"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.name, f"{row.value:,.1f} {row.unit}",
                      REFERENCE.get(row.name, (None, "-"))[1], ratio(row), row.detail)
    Console().print(table)

    if arguments.write_docs:
        if arguments.quick:
            sys.stderr.write("--quick results are not written to the docs\n")
            return 2
        write_docs(render_markdown(rows, "python benchmarks/bench_engine.py --write-docs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
