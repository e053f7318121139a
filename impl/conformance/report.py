"""Results of a conformance run: one verdict per guarantee, plus the concurrent scenarios.

A guarantee passes only when its sequential Hypothesis run found no violation, no
concurrent scenario's history violated it, and nothing raised an unexpected error.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osqueue.spec.cas import TokenPolicy
from osqueue.spec.history import GUARANTEES, StoreOperation


class Status(enum.Enum):
    """The verdict on one guarantee."""

    PASS = "pass"
    FAIL = "fail"
    """A violation was observed."""
    ERROR = "error"
    """The backend raised an unexpected error, so the guarantee could not be checked."""
    SKIPPED = "skipped"
    """The caller left the guarantee out of the run."""


@dataclass(frozen=True, slots=True)
class Failure:
    """The first violation (or error) found for one guarantee.

    ``steps`` is the minimal failing sequence of operations. For the sequential check it is
    the program Hypothesis printed after shrinking (``state = ...`` lines). For a
    concurrent scenario it lists the recorded operations that show the violation.
    """

    guarantee: str
    source: str
    """``sequential`` or ``concurrent: <scenario>``."""
    message: str
    steps: tuple[str, ...] = ()
    steps_heading: str = ""
    """Heading for ``steps`` when it differs from the default for ``source``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "guarantee": self.guarantee,
            "source": self.source,
            "message": self.message,
            "steps": list(self.steps),
            "steps_heading": self.steps_heading,
        }


@dataclass(frozen=True, slots=True)
class GuaranteeResult:
    """The verdict on one guarantee.

    ``examples`` counts the Hypothesis examples run for the guarantee, shrinking included.
    ``rounds`` counts the concurrent rounds whose history was checked, and every round is
    checked against all four guarantees. ``seconds`` is the time of the guarantee's own
    sequential run. The concurrent scenarios are timed in ``ConformanceReport.scenarios``.
    """

    guarantee: str
    status: Status
    examples: int = 0
    rounds: int = 0
    seconds: float = 0.0
    failure: Failure | None = None

    @property
    def passed(self) -> bool:
        return self.status in (Status.PASS, Status.SKIPPED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "guarantee": self.guarantee,
            "status": self.status.value,
            "examples": self.examples,
            "rounds": self.rounds,
            "seconds": round(self.seconds, 3),
            "failure": None if self.failure is None else self.failure.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """One concurrent scenario: its rounds, time, violations and recorded history."""

    name: str
    rounds: int
    seconds: float
    failures: tuple[Failure, ...] = ()
    error: str | None = None
    history: tuple[StoreOperation, ...] = field(default=(), repr=False)

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rounds": self.rounds,
            "seconds": round(self.seconds, 3),
            "failures": [failure.to_dict() for failure in self.failures],
            "error": self.error,
            "operations": len(self.history),
        }


@dataclass(frozen=True, slots=True)
class ConformanceReport:
    """The outcome of ``run_conformance``.

    ``passed`` is True only when at least one guarantee was run and every guarantee that
    was run passed. ``violated`` lists
    the guarantees with status FAIL, in the order of ``GUARANTEES``.
    """

    backend: str
    prefix: str
    token_policy: TokenPolicy
    policy_source: str
    """``declared`` when the caller named the policy, ``detected`` when the suite probed it."""
    results: dict[str, GuaranteeResult]
    scenarios: tuple[ScenarioResult, ...]
    seconds: float
    cleanup: str
    """One-sentence account of the clean-up of the objects the run created."""

    @property
    def passed(self) -> bool:
        ran = [result for result in self.results.values() if result.status is not Status.SKIPPED]
        return bool(ran) and all(result.passed for result in ran)

    @property
    def violated(self) -> tuple[str, ...]:
        return tuple(
            name for name in GUARANTEES
            if name in self.results and self.results[name].status is Status.FAIL
        )

    @property
    def errored(self) -> tuple[str, ...]:
        return tuple(
            name for name in GUARANTEES
            if name in self.results and self.results[name].status is Status.ERROR
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "prefix": self.prefix,
            "token_policy": self.token_policy.value,
            "policy_source": self.policy_source,
            "passed": self.passed,
            "violated": list(self.violated),
            "seconds": round(self.seconds, 3),
            "cleanup": self.cleanup,
            "results": {name: result.to_dict() for name, result in self.results.items()},
            "scenarios": [scenario.to_dict() for scenario in self.scenarios],
        }

    def render_text(self) -> str:
        """Return the report as plain text (what the CLI prints, without colour)."""

        import io

        from rich.console import Console

        buffer = io.StringIO()
        console = Console(file=buffer, width=120, color_system=None, force_terminal=False)
        print_report(self, console)
        return buffer.getvalue()


def write_histories(report: ConformanceReport, directory: Path) -> list[Path]:
    """Write each scenario's history to ``directory/<scenario>.jsonl``; return the paths.

    Each file is in the osqueue JSON-lines history format (a header line, then one
    ``StoreOperation.to_record()`` per line), so ``osqueue check FILE`` can check it.
    """

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for scenario in report.scenarios:
        path = directory / f"{scenario.name}.jsonl"
        header = {
            "format": "osqueue-history",
            "version": 1,
            "model": "object-store",
            "policy": report.token_policy.value,
            "backend": report.backend,
            "scenario": scenario.name,
        }
        lines = [json.dumps(header)]
        lines += [json.dumps(operation.to_record()) for operation in scenario.history]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def print_report(report: ConformanceReport, console: Any) -> None:
    """Print ``report`` to a rich ``Console``: a table per guarantee, then each failure."""

    from rich.table import Table

    console.print(
        f"osqueue conformance: backend [bold]{report.backend}[/bold], "
        f"prefix {report.prefix!r}, token policy {report.token_policy.value} "
        f"({report.policy_source})"
    )

    table = Table(title="Guarantees")
    table.add_column("Guarantee")
    table.add_column("Result")
    table.add_column("Examples", justify="right")
    table.add_column("Rounds", justify="right")
    table.add_column("Time (s)", justify="right")
    for result in report.results.values():
        table.add_row(
            result.guarantee,
            _styled_status(result.status),
            str(result.examples),
            str(result.rounds),
            f"{result.seconds:.2f}",
        )
    console.print(table)

    if report.scenarios:
        console.print(_scenario_table(report.scenarios))

    for result in report.results.values():
        if result.failure is not None:
            _print_failure(result, console)

    ran = any(result.status is not Status.SKIPPED for result in report.results.values())
    if report.passed:
        verdict = "[green]all guarantees hold[/green]"
    elif not ran:
        verdict = "[red]no guarantee was checked[/red]"
    else:
        verdict = (
            f"[red]violated: {', '.join(report.violated) or 'none'}; "
            f"errors: {', '.join(report.errored) or 'none'}[/red]"
        )
    console.print(f"{verdict} ({report.seconds:.1f} s). {report.cleanup}")


def _scenario_table(scenarios: Sequence[ScenarioResult]) -> Any:
    from rich.table import Table

    table = Table(title="Concurrent scenarios (each history checked against all guarantees)")
    table.add_column("Scenario")
    table.add_column("Result")
    table.add_column("Rounds", justify="right")
    table.add_column("Operations", justify="right")
    table.add_column("Time (s)", justify="right")
    for scenario in scenarios:
        if scenario.error is not None:
            status = Status.ERROR
        else:
            status = Status.PASS if scenario.passed else Status.FAIL
        table.add_row(
            scenario.name,
            _styled_status(status),
            str(scenario.rounds),
            str(len(scenario.history)),
            f"{scenario.seconds:.2f}",
        )
    return table


def _styled_status(status: Status) -> str:
    colour = {
        Status.PASS: "green",
        Status.FAIL: "red",
        Status.ERROR: "yellow",
        Status.SKIPPED: "dim",
    }[status]
    return f"[{colour}]{status.value.upper()}[/{colour}]"


def _print_failure(result: GuaranteeResult, console: Any) -> None:
    from rich.markup import escape

    failure = result.failure
    assert failure is not None
    console.print()
    console.print(
        f"[bold red]{result.status.value.upper()}[/bold red] [bold]{failure.guarantee}[/bold] "
        f"({escape(failure.source)}): {escape(failure.message)}"
    )
    if failure.steps:
        if failure.steps_heading:
            heading = failure.steps_heading
        elif failure.source == "sequential":
            heading = "Minimal failing sequence (Hypothesis, after shrinking):"
        else:
            heading = "Operations that show it:"
        console.print(heading)
        for line in failure.steps:
            console.print(f"    {escape(line)}", highlight=False)
