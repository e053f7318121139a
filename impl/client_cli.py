"""Client commands of the ``osqueue`` CLI: ``submit``, ``worker``, ``stats`` and ``jobs``.

Every command finds the broker like ``osqueue.client.settings_from_env``: ``--url`` or
``BROKER_URL`` first, else the leader named in ``queue.json`` on the storage that
``STORAGE_BACKEND`` and its variables describe, else ``--host``/``--port`` (``BROKER_HOST``,
``BROKER_PORT``, default ``127.0.0.1:8080``). The bearer token comes from ``OSQUEUE_TOKEN``
only, so that it never shows in the process list.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from typing import Any

import typer
from osqueue.client import Client, ClientSettings, settings_from_env
from osqueue.errors import ConfigError, OsqueueError
from rich.console import Console
from rich.table import Table

logger = logging.getLogger(__name__)

_URL_HELP = "Broker URL, or several separated by commas (env: BROKER_URL)."
_HOST_HELP = "Broker host when no URL and no cloud storage is set (env: BROKER_HOST)."
_PORT_HELP = "Broker port when no URL and no cloud storage is set (env: BROKER_PORT)."
_RETRY_HELP = "Seconds to keep retrying while no leader accepts the request."


def register(app: typer.Typer) -> None:
    """Add the client commands to ``app``."""

    app.command("submit")(submit)
    app.command("worker")(worker)
    app.command("stats")(stats)
    app.command("jobs")(jobs)


def _settings(
    url: str | None, host: str | None, port: int | None, retry_timeout: float
) -> ClientSettings:
    """Return client settings from the environment with the flags applied over it."""

    # httpx logs every request at INFO; keep those lines for --log-level DEBUG only.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)

    env = dict(os.environ)
    if url:
        env["BROKER_URL"] = url
    if host:
        env["BROKER_HOST"] = host
    if port is not None:
        env["BROKER_PORT"] = str(port)
    try:
        settings = settings_from_env(env)
    except ConfigError as error:
        raise typer.BadParameter(str(error)) from error
    return ClientSettings(
        urls=settings.urls,
        storage=settings.storage,
        queue_key=settings.queue_key,
        token=settings.token,
        timeout=settings.timeout,
        retry_timeout=retry_timeout,
    )


def _fail(error: BaseException) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {error}", highlight=False)
    return typer.Exit(1)


def submit(
    job_type: str = typer.Argument(..., metavar="TYPE", help="Job type, for example email."),
    payload: str = typer.Argument(
        ...,
        metavar="PAYLOAD",
        help='Job payload as JSON, for example \'{"to": "a@example.com"}\'; '
        "- reads it from standard input.",
    ),
    max_attempts: int | None = typer.Option(
        None,
        "--max-attempts",
        min=1,
        help="Claims before the job is dead-lettered (broker default: 3).",
    ),
    job_id: str | None = typer.Option(
        None, "--id", help="Job id of your choice; makes a retry after an unknown outcome safe."
    ),
    url: str | None = typer.Option(None, "--url", help=_URL_HELP),
    host: str | None = typer.Option(None, "--host", help=_HOST_HELP),
    port: int | None = typer.Option(None, "--port", help=_PORT_HELP),
    retry_timeout: float = typer.Option(30.0, "--retry-timeout", help=_RETRY_HELP),
) -> None:
    """Enqueue one job and print its id."""

    text = sys.stdin.read() if payload == "-" else payload
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise typer.BadParameter(
            f"{text[:60]!r} is not JSON ({error}); quote strings, for example '\"hello\"' or "
            '\'{"to": "a@example.com"}\'',
            param_hint="PAYLOAD",
        ) from error

    settings = _settings(url, host, port, retry_timeout)
    try:
        with Client.from_settings(settings) as client:
            new_id = client.enqueue(job_type, value, max_attempts=max_attempts, job_id=job_id)
    except (OsqueueError, ValueError, TypeError) as error:
        raise _fail(error) from error
    logger.info("submitted %s (type %s) to %s", new_id, job_type, client.leader_url)
    typer.echo(new_id)


def worker(
    handler: str = typer.Option(
        ..., "--handler", help="Handler as module:function, for example myapp.jobs:send_email."
    ),
    types: list[str] | None = typer.Option(  # noqa: B008 - typer reads options from defaults
        None, "--type", help="Job type the handler runs; repeat for several (default: every type)."
    ),
    concurrency: int = typer.Option(1, "--concurrency", min=1, help="Jobs run at the same time."),
    poll_interval: float = typer.Option(
        1.0, "--poll-interval", min=0.01, help="Seconds between claims when the queue is empty."
    ),
    heartbeat_interval: float = typer.Option(
        10.0,
        "--heartbeat-interval",
        min=0.01,
        help="Seconds between heartbeats of a running job; keep it well below the broker's "
        "JOB_HEARTBEAT_TIMEOUT_MS.",
    ),
    retry_delay: float | None = typer.Option(
        None,
        "--retry-delay",
        min=0.0,
        help="Seconds before a failed job is retried "
        "(default: 1 s, doubling per attempt, at most 60 s).",
    ),
    shutdown_grace: float = typer.Option(
        30.0,
        "--shutdown-grace",
        min=0.0,
        help="Seconds running jobs may take to finish after SIGINT/SIGTERM before they "
        "are given back.",
    ),
    worker_id: str | None = typer.Option(
        None, "--worker-id", help="Worker id (default: host-pid-random)."
    ),
    url: str | None = typer.Option(None, "--url", help=_URL_HELP),
    host: str | None = typer.Option(None, "--host", help=_HOST_HELP),
    port: int | None = typer.Option(None, "--port", help=_PORT_HELP),
    retry_timeout: float = typer.Option(30.0, "--retry-timeout", help=_RETRY_HELP),
) -> None:
    """Run a worker until SIGINT or SIGTERM (a second signal gives back running jobs at once)."""

    import anyio
    from osqueue.client import AsyncClient
    from osqueue.worker import Worker, default_retry_delay, run_worker

    func = load_handler(handler)
    settings = _settings(url, host, port, retry_timeout)

    async def main() -> None:
        async with AsyncClient.from_settings(settings) as client:
            handlers: dict[str | None, Any] = {job_type: func for job_type in types or ()}
            if not handlers:
                handlers[None] = func
            instance = Worker(
                client,
                handlers,
                worker_id=worker_id,
                concurrency=concurrency,
                poll_interval=poll_interval,
                heartbeat_interval=heartbeat_interval,
                retry_delay=default_retry_delay if retry_delay is None else retry_delay,
                shutdown_grace=shutdown_grace,
            )
            # Start and stop lines go to stderr even at the default log level (WARNING).
            typer.echo(
                f"osqueue worker {instance.worker_id} started: handler {handler}, types "
                f"{', '.join(instance.claim_types or ('all',))}, concurrency {concurrency}",
                err=True,
            )
            try:
                await run_worker(instance)
            finally:
                typer.echo(
                    f"osqueue worker {instance.worker_id} stopped after {instance.processed} jobs",
                    err=True,
                )

    try:
        anyio.run(main)
    except OsqueueError as error:
        raise _fail(error) from error


def load_handler(reference: str) -> Any:
    """Import ``module:attribute`` and return it; raise ``typer.BadParameter`` naming the fix."""

    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise typer.BadParameter(
            f"{reference!r} is not module:function, for example myapp.jobs:send_email",
            param_hint="--handler",
        )
    # Like other runners, import handlers from the current directory too.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise typer.BadParameter(
            f"cannot import module {module_name!r} ({error}); check the name and that it is on "
            "PYTHONPATH or in the current directory",
            param_hint="--handler",
        ) from error
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise typer.BadParameter(
                f"module {module_name!r} has no attribute {attribute!r}", param_hint="--handler"
            ) from None
    from osqueue.worker import HandlerSpec

    if not callable(target) and not isinstance(target, HandlerSpec):
        raise typer.BadParameter(f"{reference!r} is not callable", param_hint="--handler")
    return target


def stats(
    url: str | None = typer.Option(None, "--url", help=_URL_HELP),
    host: str | None = typer.Option(None, "--host", help=_HOST_HELP),
    port: int | None = typer.Option(None, "--port", help=_PORT_HELP),
    retry_timeout: float = typer.Option(10.0, "--retry-timeout", help=_RETRY_HELP),
) -> None:
    """Print the leader's statistics as JSON."""

    settings = _settings(url, host, port, retry_timeout)
    try:
        with Client.from_settings(settings) as client:
            result = client.stats()
    except OsqueueError as error:
        raise _fail(error) from error
    Console().print_json(data=result)


_STATUSES = ("unclaimed", "in_progress", "dead")


def jobs(
    status: str | None = typer.Option(
        None, "--status", help="Only jobs with this status: unclaimed, in_progress or dead."
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="At most this many jobs (broker default: 100)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    url: str | None = typer.Option(None, "--url", help=_URL_HELP),
    host: str | None = typer.Option(None, "--host", help=_HOST_HELP),
    port: int | None = typer.Option(None, "--port", help=_PORT_HELP),
    retry_timeout: float = typer.Option(10.0, "--retry-timeout", help=_RETRY_HELP),
) -> None:
    """List live jobs in queue order (or dead ones with --status dead)."""

    if status is not None and status not in _STATUSES:
        raise typer.BadParameter(
            f"unknown status {status!r}; use one of {', '.join(_STATUSES)}", param_hint="--status"
        )
    settings = _settings(url, host, port, retry_timeout)
    try:
        with Client.from_settings(settings) as client:
            listed = client.jobs(status=status, limit=limit)
    except OsqueueError as error:
        raise _fail(error) from error

    if as_json:
        Console().print_json(data=listed)
        return
    table = Table("id", "type", "status", "attempts", "visible at", "claimed by", "payload")
    for job in listed:
        table.add_row(
            str(job.get("id")),
            str(job.get("type")),
            str(job.get("status")),
            f"{job.get('attempts')}/{job.get('maxAttempts')}",
            f"{job.get('visibleAt', 0):.3f}",
            str(job.get("claimedBy") or ""),
            json.dumps(job.get("payload"))[:60],
        )
    Console().print(table)
    typer.echo(f"{len(listed)} jobs")
