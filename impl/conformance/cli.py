"""The ``osqueue conformance`` command.

Exit status: 0 when every guarantee holds, 1 when one is violated or could not be checked,
2 for invalid options (checked before the run starts), 130 when interrupted. The suite
itself is imported when the command runs, so that other commands start without loading
Hypothesis.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from osqueue.errors import ConfigError

logger = logging.getLogger(__name__)

SERVER_EXAMPLES = 25
MEMORY_EXAMPLES = 100
INTERRUPTED_EXIT = 130
"""128 + SIGINT, the shell convention for a command stopped by Ctrl-C."""

# The CLI option that sets each parameter a ConfigError may name.
_OPTION_OF_PARAMETER = {
    "token_policy": "--token-policy",
    "guarantees": "--guarantee",
    "prefix": "--prefix",
    "examples": "--examples",
    "steps": "--steps",
    "shrink_seconds": "--shrink-seconds",
    "ConcurrencyConfig.writers": "--writers",
    "ConcurrencyConfig.increments": "--increments",
    "ConcurrencyConfig.burst_writers": "--burst-writers",
    "ConcurrencyConfig.rounds": "--rounds",
}


def register(app: typer.Typer) -> None:
    """Add the ``conformance`` command to ``app``."""

    app.command("conformance")(conformance)


def conformance(
    backend: str = typer.Option(
        "memory", "--backend",
        help="Backend to check: memory, s3, gcs, or module:factory (a function that takes "
        "the run's prefix and returns a StorageBackend).",
    ),
    endpoint_url: str | None = typer.Option(
        None, "--endpoint-url", help="Server URL for s3 or gcs, e.g. http://127.0.0.1:8333."
    ),
    bucket: str | None = typer.Option(None, "--bucket", help="Bucket for s3 or gcs (required)."),
    region: str | None = typer.Option(None, "--region", help="Region for s3."),
    project: str | None = typer.Option(None, "--project", help="Project for gcs."),
    prefix: str = typer.Option(
        "osqueue-conformance", "--prefix",
        help="Key prefix; the run works under <prefix>/run-<random hex>/ and deletes what "
        "it wrote there.",
    ),
    examples: int | None = typer.Option(
        None, "--examples", min=1,
        help=f"Hypothesis examples per guarantee (default {MEMORY_EXAMPLES} for memory, "
        f"{SERVER_EXAMPLES} otherwise).",
    ),
    steps: int = typer.Option(20, "--steps", min=1, help="Maximum operations per example."),
    token_policy: str | None = typer.Option(
        None, "--token-policy",
        help="Version-token policy of the backend: unique or content-hash (default: detect "
        "it; for memory it also selects the memory backend's policy).",
    ),
    lying: bool = typer.Option(
        False, "--lying",
        help="Memory only: a backend that ignores preconditions, to see the suite fail.",
    ),
    writers: int = typer.Option(3, "--writers", min=1, help="Concurrent counter writers."),
    increments: int = typer.Option(
        3, "--increments", min=1, help="Successful increments per counter writer."
    ),
    burst_writers: int = typer.Option(
        3, "--burst-writers", min=1,
        help="Writers racing in each create or same-token burst (at least 2). Some S3 "
        "servers, SeaweedFS among them, take about 1 s per round with 4 or more.",
    ),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Rounds of each burst scenario."),
    concurrency: bool = typer.Option(
        True, "--concurrency/--no-concurrency", help="Run the concurrent scenarios."
    ),
    large_values: bool = typer.Option(
        True, "--large-values/--no-large-values", help="Sometimes write values over 1 MiB."
    ),
    guarantee: list[str] | None = typer.Option(  # noqa: B008 - typer reads options from defaults
        None, "--guarantee",
        help="Check only this guarantee (repeatable): read-your-writes, atomic-cas, "
        "conflict-detection, no-lost-update.",
    ),
    shrink_seconds: float = typer.Option(
        30.0, "--shrink-seconds", min=0,
        help="Seconds Hypothesis may spend shrinking a failure of one guarantee.",
    ),
    derandomize: bool = typer.Option(
        False, "--derandomize",
        help="Generate the same examples on every run (Hypothesis derandomize).",
    ),
    keep: bool = typer.Option(False, "--keep", help="Do not delete the objects the run wrote."),
    json_out: Path | None = typer.Option(  # noqa: B008 - typer reads options from defaults
        None, "--json", help="Also write the report as JSON to this file."
    ),
    history_dir: Path | None = typer.Option(  # noqa: B008 - typer reads options from defaults
        None, "--history-dir",
        help="Also write each concurrent scenario's history to DIR/<scenario>.jsonl "
        "(input for osqueue check).",
    ),
) -> None:
    """Check a storage backend against the CAS model and the four history guarantees."""

    from osqueue.conformance.backends import BackendOptions, resolve_factory
    from osqueue.conformance.concurrent import ConcurrencyConfig
    from osqueue.conformance.report import print_report, write_histories
    from osqueue.conformance.runner import (
        BackendFactoryError,
        parse_token_policy,
        run_conformance,
    )
    from osqueue.errors import ConfigError, OsqueueError
    from osqueue.spec.history import GUARANTEES
    from rich.console import Console

    _validate_outputs(json_out, history_dir)
    try:
        policy = parse_token_policy(token_policy)
        factory = resolve_factory(BackendOptions(
            backend=backend, endpoint_url=endpoint_url, bucket=bucket, region=region,
            project=project, token_policy=policy, lying=lying,
        ))
        config = ConcurrencyConfig(
            writers=writers, increments=increments, burst_writers=burst_writers, rounds=rounds
        ) if concurrency else None
    except ConfigError as error:
        raise _bad_parameter(error) from error

    if examples is None:
        examples = MEMORY_EXAMPLES if backend == "memory" else SERVER_EXAMPLES
    try:
        report = run_conformance(
            factory,
            token_policy=policy,
            examples=examples,
            steps=steps,
            concurrency=config,
            guarantees=guarantee or GUARANTEES,
            prefix=prefix,
            large_values=large_values,
            derandomize=derandomize,
            shrink_seconds=shrink_seconds,
            cleanup=not keep,
        )
    except ConfigError as error:
        if error.name in _OPTION_OF_PARAMETER:
            raise _bad_parameter(error) from error
        # Raised by the run itself, such as a failed token-policy probe.
        _echo_error(f"error: the conformance run stopped: {error}", error)
        raise typer.Exit(1) from error
    except BackendFactoryError as error:
        # For example a missing SDK or a factory returning the wrong type.
        _echo_error(f"error: could not build the {backend!r} backend: {error}", error)
        raise typer.Exit(2) from error
    except OsqueueError as error:
        # For example the server is unreachable before the checks could start.
        _echo_error(f"error: the conformance run could not start: {error}", error)
        raise typer.Exit(1) from error
    except KeyboardInterrupt as error:
        _echo_error("interrupted", error)
        raise typer.Exit(INTERRUPTED_EXIT) from error

    print_report(report, Console())
    try:
        if json_out is not None:
            json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        if history_dir is not None:
            write_histories(report, history_dir)
    except OSError as error:
        typer.echo(f"error: could not write the report files: {error}", err=True)
        raise typer.Exit(1) from error
    raise typer.Exit(0 if report.passed else 1)


def _bad_parameter(error: ConfigError) -> typer.BadParameter:
    """Restate a ``ConfigError`` under the CLI option that sets the value it names."""

    option = _OPTION_OF_PARAMETER.get(error.name, error.name)
    example = error.example if error.example.startswith("--") else f"{option} {error.example}"
    return typer.BadParameter(f"{error.problem}; for example {example}", param_hint=option)


def _echo_error(message: str, error: BaseException) -> None:
    """Print ``message`` and the notes the run attached, such as its clean-up account."""

    typer.echo(message, err=True)
    for note in getattr(error, "__notes__", []):
        typer.echo(note, err=True)


def _validate_outputs(json_out: Path | None, history_dir: Path | None) -> None:
    """Reject report paths that cannot be written, before the run spends any time."""

    if json_out is not None:
        parent = json_out.parent
        if json_out.is_dir():
            raise typer.BadParameter(
                f"{str(json_out)!r} is a directory; name a file, for example "
                f"--json {json_out / 'report.json'}",
                param_hint="--json",
            )
        if not parent.is_dir():
            raise typer.BadParameter(
                f"the directory {str(parent)!r} of {str(json_out)!r} does not exist; create "
                "it first or name a file in an existing directory, for example --json "
                "report.json",
                param_hint="--json",
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise typer.BadParameter(
                f"the directory {str(parent)!r} is not writable; for example --json report.json",
                param_hint="--json",
            )
    if history_dir is not None:
        try:
            # Creating the directory now is the only reliable test: /proc, for example,
            # passes os.access but rejects new entries.
            history_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise typer.BadParameter(
                f"cannot create the directory {str(history_dir)!r}: {error.strerror}; for "
                "example --history-dir histories",
                param_hint="--history-dir",
            ) from error
        if not os.access(history_dir, os.W_OK | os.X_OK):
            raise typer.BadParameter(
                f"the directory {str(history_dir)!r} is not writable; for example "
                "--history-dir histories",
                param_hint="--history-dir",
            )
