"""Time the linearizability checker on the reference histories and compare with Porcupine.

Usage: python benchmarks/bench_checker.py [--repeat N] [--markdown]

For every file listed in tests/data/histories/VERDICTS.tsv the script parses the history
once (not timed), checks it ``--repeat`` times and reports the median check time next to
the reference checker's time from VERDICTS.tsv (Porcupine, Go, median of 3, parsing
excluded). It reports wall time and CPU time of this process. The ratio uses CPU time,
which other processes on a shared machine disturb less. The script also confirms that
each verdict matches the expected one and exits with status 1 if any does not.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import time
from pathlib import Path

from osqueue.checker import (
    Verdict,
    cas_register_model,
    check_operations,
    kv_model,
    parse_history_file,
)
from rich.console import Console
from rich.table import Table

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "histories"


def load_rows() -> list[dict[str, str]]:
    with open(DATA / "VERDICTS.tsv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def measure(row: dict[str, str], repeat: int) -> dict[str, object]:
    parsed = parse_history_file(DATA / row["path"])
    model = kv_model() if parsed.model == "kv" else cas_register_model()
    wall_times = []
    cpu_times = []
    verdict = None
    for _ in range(repeat):
        cpu_started = time.process_time()
        result = check_operations(parsed.operations, model)
        cpu_times.append(time.process_time() - cpu_started)
        wall_times.append(result.elapsed)
        verdict = result.verdict
    expected = Verdict.LINEARIZABLE if row["linearizable"] == "true" else Verdict.NOT_LINEARIZABLE
    return {
        "path": row["path"],
        "operations": len(parsed.operations),
        "expected": expected,
        "verdict": verdict,
        "wall_ms": statistics.median(wall_times) * 1000,
        "ours_ms": statistics.median(cpu_times) * 1000,
        "reference_ms": float(row["reference_checker_ms"]),
    }


def ratio(ours: float, reference: float) -> str:
    return f"{ours / reference:.1f}x" if reference > 0 else "-"


def group_total(results: list[dict], prefix: str) -> tuple[float, float, int]:
    chosen = [item for item in results if item["path"].startswith(prefix)]
    return (
        sum(item["ours_ms"] for item in chosen),
        sum(item["reference_ms"] for item in chosen),
        len(chosen),
    )


def print_table(console: Console, results: list[dict]) -> None:
    table = Table(title="Linearizability checker vs Porcupine (check time, parsing excluded)")
    for name in (
        "history",
        "ops",
        "verdict",
        "ours wall ms",
        "ours CPU ms",
        "Porcupine ms",
        "ratio",
    ):
        table.add_column(name, justify="left" if name in ("history", "verdict") else "right")
    for item in results:
        agrees = item["verdict"] is item["expected"]
        verdict = item["verdict"].value + (
            "" if agrees else " (EXPECTED " + item["expected"].value + ")"
        )
        table.add_row(
            item["path"],
            str(item["operations"]),
            verdict,
            f"{item['wall_ms']:.2f}",
            f"{item['ours_ms']:.2f}",
            f"{item['reference_ms']:.3f}",
            ratio(item["ours_ms"], item["reference_ms"]),
        )
    table.add_section()
    for label, prefix in (("total jepsen/etcd", "jepsen/"), ("total kv", "kv/"), ("total", "")):
        ours, reference, count = group_total(results, prefix)
        wall = sum(item["wall_ms"] for item in results if item["path"].startswith(prefix))
        table.add_row(
            label,
            f"{count} files",
            "",
            f"{wall:.1f}",
            f"{ours:.1f}",
            f"{reference:.1f}",
            ratio(ours, reference),
        )
    console.print(table)


def print_markdown(results: list[dict]) -> None:
    print("| history | ops | verdict | ours, CPU (ms) | Porcupine (ms) | ratio |")
    print("|---|---:|---|---:|---:|---:|")
    for item in sorted(results, key=lambda item: -item["reference_ms"])[:10]:
        print(
            f"| {item['path']} | {item['operations']} | {item['verdict'].value} | "
            f"{item['ours_ms']:.2f} | {item['reference_ms']:.3f} | "
            f"{ratio(item['ours_ms'], item['reference_ms'])} |"
        )
    for label, prefix in (("all jepsen/etcd", "jepsen/"), ("all kv", "kv/"), ("all files", "")):
        ours, reference, count = group_total(results, prefix)
        print(
            f"| **{label}** ({count} files) | | | {ours:.1f} | {reference:.1f} | "
            f"{ratio(ours, reference)} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=3, help="checks per file; the median is reported"
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="also print the ten slowest files and the totals as a Markdown table",
    )
    options = parser.parse_args()
    if options.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {options.repeat}")

    results = [measure(row, options.repeat) for row in load_rows()]
    console = Console(width=130)
    print_table(console, results)
    agreeing = sum(1 for item in results if item["verdict"] is item["expected"])
    console.print(
        f"verdicts matching VERDICTS.tsv: {agreeing}/{len(results)}; "
        f"Python {platform.python_version()}"
    )
    if options.markdown:
        print_markdown(results)
    return 0 if agreeing == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
