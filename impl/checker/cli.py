"""The ``osqueue check`` command: decide whether a recorded history is linearizable.

Exit status: 0 linearizable, 1 not linearizable, 2 invalid options or unreadable input,
3 unknown (the time, step or state budget ran out). Only 0 is a pass.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from osqueue.checker.models import cas_register_model, kv_model
from osqueue.checker.parsers import (
    FORMATS,
    MODELS,
    HistoryFormatError,
    ParsedHistory,
    parse_history_file,
)
from osqueue.checker.report import render_html, summarize
from osqueue.checker.search import check_operations
from osqueue.checker.store import object_store_model
from osqueue.checker.types import Model, Verdict
from osqueue.spec.cas import TokenPolicy
from rich.console import Console
from rich.markup import escape

logger = logging.getLogger(__name__)

EXIT_CODES = {Verdict.LINEARIZABLE: 0, Verdict.NOT_LINEARIZABLE: 1, Verdict.UNKNOWN: 3}
_STYLES = {
    Verdict.LINEARIZABLE: "bold green",
    Verdict.NOT_LINEARIZABLE: "bold red",
    Verdict.UNKNOWN: "bold yellow",
}


def register(app: typer.Typer) -> None:
    """Add the ``check`` command to ``app``."""

    app.command("check")(check)


def _model_for(parsed: ParsedHistory, requested: str | None, policy: str | None) -> Model:
    name = requested or parsed.model
    if name not in MODELS:
        raise typer.BadParameter(
            f"unknown model {name!r}; use one of {', '.join(MODELS)}", param_hint="--model"
        )
    if name != parsed.model and parsed.operations:
        raise typer.BadParameter(
            f"the file contains {parsed.model} operations, which the {name} model cannot check; "
            f"use --model {parsed.model}",
            param_hint="--model",
        )
    if name == "cas-register":
        return cas_register_model()
    if name == "kv":
        return kv_model()
    try:
        chosen = TokenPolicy(policy) if policy else (parsed.policy or TokenPolicy.UNIQUE)
    except ValueError:
        choices = ", ".join(item.value for item in TokenPolicy)
        raise typer.BadParameter(
            f"unknown token policy {policy!r}; use one of {choices}", param_hint="--policy"
        ) from None
    return object_store_model(chosen)


def check(
    file: Path = typer.Argument(..., help="History file to check."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Model to check against: cas-register, kv or object-store. Default: the model "
        "the file's operations are written for.",
    ),
    format: str = typer.Option(
        "auto", "--format", help="History format: auto (detect), jsonl, jepsen or kv."
    ),
    html: Path | None = typer.Option(
        None, "--html", help="Write a standalone HTML report with the timeline to this path."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", help="Give up with verdict unknown after this many seconds."
    ),
    max_steps: int | None = typer.Option(
        None, "--max-steps", help="Give up with verdict unknown after this many search steps."
    ),
    max_states: int | None = typer.Option(
        None,
        "--max-states",
        help="Give up with verdict unknown when the memo of one part reaches this many "
        "entries (about 90 bytes each).",
    ),
    policy: str | None = typer.Option(
        None,
        "--policy",
        help="Token policy of an object-store history: unique or content-hash. Default: the "
        "file header's policy, else unique.",
    ),
) -> None:
    """Check a recorded history for linearizability. Exit status 0 only when it is."""

    console = Console(soft_wrap=True)
    if format not in FORMATS:
        raise typer.BadParameter(
            f"unknown format {format!r}; use one of {', '.join(FORMATS)}", param_hint="--format"
        )
    if timeout is not None and timeout <= 0:
        raise typer.BadParameter(f"timeout must be positive, got {timeout}", param_hint="--timeout")
    if max_steps is not None and max_steps < 1:
        raise typer.BadParameter(
            f"max steps must be at least 1, got {max_steps}", param_hint="--max-steps"
        )
    if max_states is not None and max_states < 1:
        raise typer.BadParameter(
            f"max states must be at least 1, got {max_states}", param_hint="--max-states"
        )

    try:
        parsed = parse_history_file(file, format)
    except HistoryFormatError as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(2) from None
    chosen = _model_for(parsed, model, policy)

    logger.info(
        "checking %s (%s format, %d operations) with model %s",
        file,
        parsed.format,
        len(parsed.operations),
        chosen.name,
    )
    result = check_operations(
        parsed.operations, chosen, timeout=timeout, max_steps=max_steps, max_states=max_states
    )

    style = _STYLES[result.verdict]
    console.print(f"[{style}]{result.verdict.value}[/{style}]  {escape(str(file))}")
    console.print(
        f"model {escape(chosen.name)}, format {parsed.format}, "
        f"{len(parsed.operations)} operations, {len(result.partitions)} part(s), "
        f"checked in {result.elapsed:.3f} s ({result.steps} search steps)"
    )
    if result.verdict is Verdict.UNKNOWN:
        console.print(
            "the budget ran out before a verdict; unknown is not a pass "
            "(raise --timeout, --max-steps or --max-states)"
        )
    if result.verdict is Verdict.NOT_LINEARIZABLE and html is None:
        console.print(escape(summarize(result, parsed.operations, chosen)), highlight=False)

    if html is not None:
        html.write_text(render_html(result, parsed.operations, chosen), encoding="utf-8")
        console.print(f"report written to {escape(str(html))}")
    else:
        console.print("no HTML report written (pass --html PATH for one)")
    raise typer.Exit(EXIT_CODES[result.verdict])
