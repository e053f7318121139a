"""Measure read and CAS-write latency of each backend on loopback servers.

Starts SeaweedFS, moto and fake-gcs-server on 127.0.0.1 through the test fixtures, times
sequential reads and conditional writes of one 4 KiB object, prints a table and rewrites
the backends section of ``docs/benchmarks.md``.

    .venv/bin/python benchmarks/bench_backends.py
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "backends"


def machine_description() -> str:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def run_probes(out: Path) -> int:
    sys.path.insert(0, str(ROOT))
    os.environ["OSQUEUE_BENCH_OUT"] = str(out)
    return pytest.main([
        str(ROOT / "benchmarks" / "backend_latency_probe.py"),
        "-q",
        "-p", "tests.support.s3_servers",
        "-p", "tests.support.gcs_servers",
        "-p", "no:cacheprovider",
        "--rootdir", str(ROOT),
    ])


def render(results: dict[str, dict[str, float]]) -> str:
    rounds = os.environ.get("OSQUEUE_BENCH_ROUNDS", "200")
    lines = [
        f"<!-- section: {SECTION} -->",
        "## Backend latency on loopback servers",
        "",
        (
            f"Command: `.venv/bin/python benchmarks/bench_backends.py` ({rounds} sequential "
            "reads and CAS writes of one 4 KiB object per backend, servers on 127.0.0.1)."
        ),
        f"Machine: {machine_description()}. Date: {datetime.date.today().isoformat()}.",
        "",
        "| backend | read median (ms) | read p99 (ms) | write median (ms) | write p99 (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, figures in sorted(results.items()):
        lines.append(
            f"| {name} | {figures['read_median_ms']:.2f} | {figures['read_p99_ms']:.2f} "
            f"| {figures['write_median_ms']:.2f} | {figures['write_p99_ms']:.2f} |"
        )
    lines += [
        "",
        "Loopback figures show the cost of the client stack and the server, not of a network;",
        "against a cloud region each request adds the round trip to that region.",
        "",
    ]
    return "\n".join(lines)


def update_doc(section_text: str) -> None:
    text = DOC.read_text()
    pattern = re.compile(rf"<!-- section: {SECTION} -->.*?(?=<!-- section: |\Z)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{DOC} has no '<!-- section: {SECTION} -->' marker; add it first")
    DOC.write_text(pattern.sub(lambda _: section_text + "\n", text, count=1))


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "latency.json"
        status = run_probes(out)
        if status != 0 or not out.exists():
            sys.stderr.write(f"latency probes failed (pytest exit code {status})\n")
            return int(status) or 1
        results = json.loads(out.read_text())

    table = Table(title="Backend latency (ms)")
    for column in ("backend", "read median", "read p99", "write median", "write p99"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for name, figures in sorted(results.items()):
        table.add_row(name, *(f"{figures[k]:.2f}" for k in (
            "read_median_ms", "read_p99_ms", "write_median_ms", "write_p99_ms")))
    Console().print(table)

    update_doc(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
