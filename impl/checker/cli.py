"""The ``osqueue check`` command: decide whether a recorded history is linearizable.

Exit status: 0 linearizable, 1 not linearizable, 2 invalid options or unreadable input,
3 unknown (the time, step or state budget ran out). Only 0 is a pass. Bad input never
ends in a traceback: every error is one line naming the value and the fix.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Annotated

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
from osqueue.checker.types import HISTORY_DOCS, CheckResult, Model, Verdict
from osqueue.spec.cas import TokenPolicy
from rich.console import Console
from rich.markup import escape

logger = logging.getLogger(__name__)

EXIT_CODES = {Verdict.LINEARIZABLE: 0, Verdict.NOT_LINEARIZABLE: 1, Verdict.UNKNOWN: 3}
EXIT_BAD_INPUT = 2
_STYLES = {
    Verdict.LINEARIZABLE: "bold green",
    Verdict.NOT_LINEARIZABLE: "bold red",
    Verdict.UNKNOWN: "bold yellow",
}
_POLICIES = tuple(item.value for item in TokenPolicy)


def register(app: typer.Typer) -> None:
    """Add the ``check`` command to ``app``."""

    app.command("check")(check)


# --- option parsing ---------------------------------------------------------------------
# Numbers arrive as strings so that an invalid value is repeated in the error message.


def _parse_timeout(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        timeout = float(value)
    except ValueError:
        raise typer.BadParameter(
            f"invalid timeout {value!r}; expected a positive number of seconds, for example 30",
            param_hint="--timeout",
        ) from None
    if not (math.isfinite(timeout) and timeout > 0):
        raise typer.BadParameter(
            f"invalid timeout {value!r}; expected a finite positive number of seconds",
            param_hint="--timeout",
        )
    return timeout


def _parse_limit(value: str | None, option: str) -> int | None:
    if value is None:
        return None
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise typer.BadParameter(
            f"invalid value {value!r}; expected a whole number of at least 1", param_hint=option
        )
    return limit


def _parse_html_path(value: str | None) -> Path | None:
    """Return the report path, rejecting one that cannot be written before any check runs."""

    if value is None:
        return None
    if not value.strip():
        raise typer.BadParameter(
            "the report path is empty; pass a file name such as report.html", param_hint="--html"
        )
    path = Path(value)
    if path.is_dir():
        raise typer.BadParameter(
            f"{value!r} is a directory; pass a file path such as {str(path / 'report.html')!r}",
            param_hint="--html",
        )
    parent = path.parent
    if not parent.is_dir():
        raise typer.BadParameter(
            f"the directory {str(parent)!r} of {value!r} does not exist; create it or choose "
            "another path",
            param_hint="--html",
        )
    if not os.access(parent, os.W_OK):
        raise typer.BadParameter(
            f"the directory {str(parent)!r} is not writable; choose another path",
            param_hint="--html",
        )
    return path


def _validate_names(format: str, model: str | None, policy: str | None) -> None:
    if format not in FORMATS:
        raise typer.BadParameter(
            f"unknown format {format!r}; use one of {', '.join(FORMATS)}", param_hint="--format"
        )
    if model is not None and model not in MODELS:
        raise typer.BadParameter(
            f"unknown model {model!r}; use one of {', '.join(MODELS)}", param_hint="--model"
        )
    if policy is not None and policy not in _POLICIES:
        raise typer.BadParameter(
            f"unknown token policy {policy!r}; use one of {', '.join(_POLICIES)}",
            param_hint="--policy",
        )


# --- model choice -----------------------------------------------------------------------


def _model_for(
    parsed: ParsedHistory, requested: str | None, policy: str | None, console: Console
) -> Model:
    """Build the model to check ``parsed`` against, from the options and the file."""

    name = requested or parsed.model
    if name != parsed.model and parsed.operations:
        raise typer.BadParameter(
            f"the file contains {parsed.model} operations, which the {name} model cannot check; "
            f"use --model {parsed.model}",
            param_hint="--model",
        )
    if policy is not None and name != "object-store":
        raise typer.BadParameter(
            f"a token policy applies only to object-store histories, and this is a {name} history; "
            "remove --policy",
            param_hint="--policy",
        )
    if name == "cas-register":
        return cas_register_model()
    if name == "kv":
        return kv_model()

    # The option wins over the header, because re-checking a history under the other
    # policy is a legitimate question; the warning keeps that choice visible.
    header_policy = parsed.header.get("policy")
    if policy is not None and header_policy is not None and policy != header_policy:
        console.print(
            f"[yellow]warning:[/yellow] --policy {escape(policy)} overrides the policy "
            f"{escape(str(header_policy))} in the file header"
        )
    chosen = TokenPolicy(policy) if policy else (parsed.policy or TokenPolicy.UNIQUE)
    return object_store_model(chosen)


# --- output -----------------------------------------------------------------------------


def _fail(console: Console, message: str) -> typer.Exit:
    """Print ``message`` as a one-line error and return the exit for bad input."""

    logger.info("check rejected its input: %s", message)
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(EXIT_BAD_INPUT)


def _reject_unusable(parsed: ParsedHistory, file: Path) -> str | None:
    """Return an error when the file has records but none of them is an operation."""

    if parsed.records == 0 or parsed.operations:
        return None
    return (
        f"{file}: {parsed.records} record(s) but no operation to check: object store "
        "operations with outcome 'failed' are left out because they took no effect; a history "
        "needs at least one operation that may have taken effect"
    )


def _print_result(
    console: Console, file: Path, parsed: ParsedHistory, model: Model, result: CheckResult
) -> None:
    style = _STYLES[result.verdict]
    console.print(f"[{style}]{result.verdict.value}[/{style}]  {escape(str(file))}")
    if parsed.records == 0:
        console.print(
            "empty history: the file contains no records, and an empty history is linearizable"
        )
    console.print(
        f"model {escape(model.name)}, format {parsed.format}, "
        f"{len(parsed.operations)} operations, {len(result.partitions)} part(s), "
        f"checked in {result.elapsed:.3f} s ({result.steps} search steps)",
        highlight=False,
    )
    if result.verdict is Verdict.UNKNOWN:
        undecided = sum(1 for part in result.partitions if part.verdict is Verdict.UNKNOWN)
        console.print(
            f"the budget ran out before a verdict on {undecided} part(s); unknown is not a "
            "pass (raise --timeout, --max-steps or --max-states)"
        )
    if result.verdict is Verdict.NOT_LINEARIZABLE:
        details = summarize(result, parsed.operations, model, headline=False)
        console.print(escape(details), highlight=False)


# --- the command ------------------------------------------------------------------------


def check(
    file: Annotated[Path, typer.Argument(help="History file to check.")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            metavar="MODEL",
            help="Model to check against: cas-register, kv or object-store. Default: the "
            "model the file's operations are written for.",
        ),
    ] = None,
    format: Annotated[
        str,
        typer.Option(
            "--format", metavar="FORMAT", help="History format: auto (detect), jsonl, jepsen or kv."
        ),
    ] = "auto",
    html: Annotated[
        str | None,
        typer.Option(
            "--html",
            metavar="PATH",
            help="Write a standalone HTML report with the timeline to this file path. The "
            "directory must exist.",
        ),
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            metavar="SECONDS",
            help="Give up with verdict unknown after this many seconds.",
        ),
    ] = None,
    max_steps: Annotated[
        str | None,
        typer.Option(
            "--max-steps",
            metavar="N",
            help="Give up with verdict unknown after this many search steps.",
        ),
    ] = None,
    max_states: Annotated[
        str | None,
        typer.Option(
            "--max-states",
            metavar="N",
            help="Give up with verdict unknown when the memo of one part reaches this many "
            "entries (about 90 bytes each).",
        ),
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            metavar="POLICY",
            help="Token policy of an object-store history: unique or content-hash. Default: "
            "the file header's policy, else unique. Overriding the header prints a warning.",
        ),
    ] = None,
) -> None:
    """Check a recorded history for linearizability. Exit status 0 only when it is."""

    console = Console(soft_wrap=True)
    _validate_names(format, model, policy)
    timeout_seconds = _parse_timeout(timeout)
    step_limit = _parse_limit(max_steps, "--max-steps")
    state_limit = _parse_limit(max_states, "--max-states")
    report_path = _parse_html_path(html)

    try:
        parsed = parse_history_file(file, format)
    except HistoryFormatError as error:
        raise _fail(console, str(error)) from None
    problem = _reject_unusable(parsed, file)
    if problem is not None:
        raise _fail(console, problem)
    chosen = _model_for(parsed, model, policy, console)

    logger.info(
        "checking %s (%s format, %d operations) with model %s",
        file,
        parsed.format,
        len(parsed.operations),
        chosen.name,
    )
    try:
        result = check_operations(
            parsed.operations,
            chosen,
            timeout=timeout_seconds,
            max_steps=step_limit,
            max_states=state_limit,
        )
    except (TypeError, ValueError) as error:
        # The parsers validate every record, so this is a safety net for what they missed.
        logger.warning("check of %s rejected the operations: %s", file, error)
        raise _fail(console, f"{file}: {error}; see {HISTORY_DOCS}") from None
    _print_result(console, file, parsed, chosen, result)

    if report_path is not None:
        try:
            report_path.write_text(render_html(result, parsed.operations, chosen), encoding="utf-8")
        except OSError as error:
            raise _fail(
                console, f"cannot write the report {str(report_path)!r}: {error.strerror}"
            ) from None
        console.print(f"report written to {escape(str(report_path))}")
    else:
        console.print("no HTML report written (pass --html PATH for one)")
    raise typer.Exit(EXIT_CODES[result.verdict])
