"""Run every benchmark script in this folder, one after another, and record each in the docs.

``make bench`` runs this file. Each ``bench_*.py`` script runs with the arguments in
``SCRIPT_ARGUMENTS`` (none for a script not listed). ``bench_backends.py``,
``bench_engine.py --write-docs`` and ``bench_simulator.py`` rewrite their own section of
``docs/benchmarks.md``. ``bench_checker.py`` only prints, so this runner captures its
Markdown table and writes it, with the machine, versions and date, between the
``generated: checker`` markers of the checker section.

After each script the runner checks that the script's section names today's date and
warns when it does not. It stops at the first script that fails.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
DOC = FOLDER.parent / "docs" / "benchmarks.md"

SCRIPT_ARGUMENTS = {
    "bench_checker.py": ["--repeat", "5", "--markdown"],
    "bench_engine.py": ["--write-docs"],
}
SECTIONS = {
    "bench_backends.py": "backends",
    "bench_checker.py": "checker",
    "bench_engine.py": "engine",
    "bench_simulator.py": "simulator",
}
CHECKER_BLOCK = re.compile(
    r"(<!-- generated: checker -->\n).*?(<!-- end generated: checker -->)", re.DOTALL
)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def record_checker(output: str) -> None:
    """Write the Markdown table that ``bench_checker.py --markdown`` printed into the docs."""

    table = [line for line in output.splitlines() if line.startswith("|")]
    verdicts = re.search(r"verdicts matching VERDICTS\.tsv: (\d+)/(\d+)", output)
    if not table or verdicts is None:
        raise SystemExit(
            "bench_checker.py printed no Markdown table or verdict count; run it with "
            "--markdown and check its output"
        )
    try:
        load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        load = "unknown"
    block = "\n".join([
        (f"Machine: {machine_description()}, msgspec "
        f"{importlib.metadata.version('msgspec')}.  "),
        f"Date: {dt.date.today().isoformat()}. Load average after the run: {load}.",
        "",
        (f"Verdicts: {verdicts.group(1)} of {verdicts.group(2)} match `VERDICTS.tsv`. The ten "
        "files that take the reference longest, and the totals:"),
        "",
        *table,
        "",
    ])
    text = DOC.read_text()
    if not CHECKER_BLOCK.search(text):
        raise SystemExit(
            f"{DOC} has no '<!-- generated: checker -->' ... '<!-- end generated: checker -->' "
            "markers in its checker section; add them around the table first"
        )
    DOC.write_text(CHECKER_BLOCK.sub(lambda match: match.group(1) + block + match.group(2),
                                     text, count=1))


def section_is_current(name: str) -> bool:
    """Return True when the docs section of script ``name`` names today's date."""

    section = SECTIONS.get(name)
    if section is None:
        return False
    text = DOC.read_text()
    match = re.search(rf"<!-- section: {section} -->(.*?)(?=<!-- section: |\Z)", text, re.DOTALL)
    return bool(match) and dt.date.today().isoformat() in match.group(1)


def run_script(script: Path) -> int:
    command = [sys.executable, str(script), *SCRIPT_ARGUMENTS.get(script.name, [])]
    sys.stdout.write(f"\n== {' '.join([script.name, *command[2:]])}\n")
    sys.stdout.flush()
    if script.name != "bench_checker.py":
        return subprocess.run(command, check=False).returncode

    completed = subprocess.run(command, check=False, capture_output=True, text=True)
    sys.stdout.write(completed.stdout)
    sys.stderr.write(completed.stderr)
    if completed.returncode == 0:
        record_checker(completed.stdout)
    return completed.returncode


def main() -> int:
    scripts = sorted(FOLDER.glob("bench_*.py"))
    if not scripts:
        sys.stderr.write(f"no bench_*.py scripts found in {FOLDER}\n")
        return 1

    for script in scripts:
        status = run_script(script)
        if status != 0:
            sys.stderr.write(f"{script.name} failed with exit code {status}\n")
            return status
        if not section_is_current(script.name):
            sys.stderr.write(
                f"warning: {script.name} did not record today's figures in {DOC.name}; "
                "give it a section there and add it to SECTIONS in run_all.py\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
