"""Run every benchmark script in this folder, one after another.

Each ``bench_*.py`` script prints its own table and updates its section of
``docs/benchmarks.md``; this runner only starts them and stops at the first failure.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    folder = Path(__file__).resolve().parent
    scripts = sorted(folder.glob("bench_*.py"))
    if not scripts:
        sys.stderr.write(f"no bench_*.py scripts found in {folder}\n")
        return 1

    for script in scripts:
        sys.stdout.write(f"\n== {script.name}\n")
        sys.stdout.flush()
        completed = subprocess.run([sys.executable, str(script)], check=False)
        if completed.returncode != 0:
            sys.stderr.write(f"{script.name} failed with exit code {completed.returncode}\n")
            return completed.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
