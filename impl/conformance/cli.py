"""The ``osqueue conformance`` command.

Exit status: 0 when every guarantee holds, 1 when one is violated or could not be checked,
2 for invalid options. The suite itself is imported when the command runs, so that other
commands start without loading Hypothesis.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

logger = logging.getLogger(__name__)

SERVER_EXAMPLES = 25
MEMORY_EXAMPLES = 100


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
        4, "--burst-writers", min=1, help="Writers racing in each create or same-token burst."
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
        raise typer.BadParameter(str(error)) from error

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
        raise typer.BadParameter(str(error)) from error
    except BackendFactoryError as error:
        # For example a missing SDK or a factory returning the wrong type.
        typer.echo(f"error: could not build the {backend!r} backend: {error}", err=True)
        raise typer.Exit(2) from error
    except OsqueueError as error:
        # For example the server is unreachable before the checks could start.
        typer.echo(f"error: the conformance run could not start: {error}", err=True)
        raise typer.Exit(1) from error

    print_report(report, Console())
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    if history_dir is not None:
        write_histories(report, history_dir)
    raise typer.Exit(0 if report.passed else 1)
