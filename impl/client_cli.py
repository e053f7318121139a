"""Client commands of the ``osqueue`` CLI: ``submit``, ``worker``, ``stats``, ``jobs`` and
``dead purge``.

Every command finds the broker like ``osqueue.client.settings_from_env``: ``--url`` or
``BROKER_URL`` first, else the leader named in ``queue.json`` on the storage that
``STORAGE_BACKEND`` and its variables describe, else ``--host``/``--port`` (``BROKER_HOST``,
``BROKER_PORT``). With the memory backend and none of these set, a command exits with code 2
and asks for ``BROKER_URL`` rather than guess an address. The bearer token comes from
``OSQUEUE_TOKEN`` only, so that it never shows in the process list.

Exit codes: 0 on success, 1 when the broker rejects the request or cannot be reached (one
``error:`` line), 2 for invalid arguments.
"""

from __future__ import annotations

import datetime
import importlib
import json
import logging
import math
import os
import sys
import time
from typing import Any

import typer
from osqueue.client import Client, ClientSettings, settings_from_env
from osqueue.errors import ConfigError, OsqueueError
from osqueue.spec.queue import NewJob
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
    dead_app = typer.Typer(help="Manage dead letters (list them with: osqueue jobs --status dead).")
    dead_app.command("purge")(purge_dead)
    app.add_typer(dead_app, name="dead")


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
        raise _config_error_for_flags(error, url=url, host=host, port=port) from error
    return ClientSettings(
        urls=settings.urls,
        storage=settings.storage,
        queue_key=settings.queue_key,
        token=settings.token,
        timeout=settings.timeout,
        retry_timeout=retry_timeout,
    )


def _config_error_for_flags(
    error: ConfigError, *, url: str | None, host: str | None, port: int | None
) -> typer.BadParameter:
    """Return a usage error that names the flag when the user set the value by flag."""

    flag_values = {"BROKER_URL": url, "BROKER_HOST": host, "BROKER_PORT": port}
    flags = [
        f"--{name.removeprefix('BROKER_').lower()}"
        for name in error.name.split("/")
        if flag_values.get(name) is not None
    ]
    if not flags:
        return typer.BadParameter(str(error))
    return typer.BadParameter(
        f"{error.problem}; for example {flags[0]} {error.example}", param_hint="/".join(flags)
    )


def _check_retry_timeout(value: float) -> float:
    """Reject a ``--retry-timeout`` that is negative, infinite or NaN (exit code 2)."""

    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(
            f"{value!r} is not a finite number of seconds >= 0; for example --retry-timeout 30"
        )
    return value


def _osqueue_error(error: BaseException) -> OsqueueError | None:
    """Return the one osqueue error inside ``error``, unwrapping exception groups.

    A task group raises an ``ExceptionGroup`` even when only one task failed; the CLI prints
    that single error as one line. Returns None when ``error`` contains anything else.
    """

    if isinstance(error, OsqueueError):
        return error
    if isinstance(error, BaseExceptionGroup):
        leaves = [_osqueue_error(inner) for inner in error.exceptions]
        if len(leaves) == 1 or (leaves and all(leaf is leaves[0] for leaf in leaves)):
            return leaves[0]
    return None


def _fail(error: BaseException) -> typer.Exit:
    """Print ``error`` as one ``error:`` line and return the exit (code 1) to raise.

    An exception group that contains anything but one osqueue error is raised again as it is,
    because its traceback is then the useful report.
    """

    found = _osqueue_error(error)
    if found is None:
        raise error
    Console(stderr=True).print(f"[red]error:[/red] {found}", highlight=False)
    return typer.Exit(1)


def _reject_non_finite(text: str) -> float:
    """``json.loads`` hook: reject numbers that no JSON peer can read back (1e400, NaN)."""

    number = float(text)
    if not math.isfinite(number):
        raise typer.BadParameter(
            f"the number {text} is outside the range of a 64-bit float; use a smaller number "
            "or send it as a string, for example \"1e400\"",
            param_hint="PAYLOAD",
        )
    return number


def _reject_constant(name: str) -> Any:
    raise typer.BadParameter(
        f"{name} is not valid JSON; use null or a string such as \"{name}\"",
        param_hint="PAYLOAD",
    )


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
    retry_timeout: float = typer.Option(
        30.0, "--retry-timeout", callback=_check_retry_timeout, help=_RETRY_HELP
    ),
) -> None:
    """Enqueue one job and print its id."""

    text = sys.stdin.read() if payload == "-" else payload
    try:
        value = json.loads(text, parse_float=_reject_non_finite, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise typer.BadParameter(
            f"{text[:60]!r} is not JSON ({error}); quote strings, for example '\"hello\"' or "
            '\'{"to": "a@example.com"}\'',
            param_hint="PAYLOAD",
        ) from error

    _check_new_job(job_type, job_id)
    settings = _settings(url, host, port, retry_timeout)
    try:
        with Client.from_settings(settings) as client:
            new_id = client.enqueue(job_type, value, max_attempts=max_attempts, job_id=job_id)
    except (OsqueueError, BaseExceptionGroup) as error:
        raise _fail(error) from error
    logger.info("submitted %s (type %s) to %s", new_id, job_type, client.leader_url)
    typer.echo(new_id)


def _check_new_job(job_type: str, job_id: str | None) -> None:
    """Check TYPE and ``--id`` with the queue's own rules before connecting (exit code 2)."""

    try:
        NewJob(job_type)
    except (ValueError, TypeError) as error:
        raise typer.BadParameter(str(error), param_hint="TYPE") from None
    if job_id is None:
        return
    try:
        NewJob(job_type, id=job_id)
    except (ValueError, TypeError) as error:
        raise typer.BadParameter(str(error), param_hint="--id") from None
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in job_id):
        raise typer.BadParameter(
            f"job id {job_id!r} contains control characters; use printable characters, "
            "for example order-42",
            param_hint="--id",
        )


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
    retry_timeout: float = typer.Option(
        30.0, "--retry-timeout", callback=_check_retry_timeout, help=_RETRY_HELP
    ),
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
    except (OsqueueError, BaseExceptionGroup) as error:
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
    except SyntaxError as error:
        where = f"{os.path.basename(error.filename or '?')}:{error.lineno}"
        raise typer.BadParameter(
            f"cannot import module {module_name!r} (SyntaxError at {where}: {error.msg}); "
            "fix the syntax error",
            param_hint="--handler",
        ) from None
    except Exception as error:  # noqa: BLE001 - any failure of the module's own code
        raise typer.BadParameter(
            f"cannot import module {module_name!r} ({type(error).__name__} while importing it: "
            f"{error}); fix the module or run it with python to see the traceback",
            param_hint="--handler",
        ) from None
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
    retry_timeout: float = typer.Option(
        10.0, "--retry-timeout", callback=_check_retry_timeout, help=_RETRY_HELP
    ),
) -> None:
    """Print the leader's statistics as JSON."""

    settings = _settings(url, host, port, retry_timeout)
    try:
        with Client.from_settings(settings) as client:
            result = client.stats()
    except (OsqueueError, BaseExceptionGroup) as error:
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
    retry_timeout: float = typer.Option(
        10.0, "--retry-timeout", callback=_check_retry_timeout, help=_RETRY_HELP
    ),
) -> None:
    """List live jobs in queue order (or dead ones with --status dead)."""

    if status is not None and status not in _STATUSES:
        raise typer.BadParameter(
            f"unknown status {status!r}; use one of {', '.join(_STATUSES)}", param_hint="--status"
        )
    settings = _settings(url, host, port, retry_timeout)
    try:
        with Client.from_settings(settings) as client:
            if status == "dead":
                # Dead letters carry the reason and time of death; /v1/jobs has neither.
                listed = [
                    {**letter["job"], "reason": letter["reason"], "diedAt": letter["diedAt"]}
                    for letter in client.dead(limit=limit)
                ]
            else:
                listed = client.jobs(status=status, limit=limit)
    except (OsqueueError, BaseExceptionGroup) as error:
        raise _fail(error) from error

    if as_json:
        Console().print_json(data=listed)
        return
    Console().print(_jobs_table(listed, dead=status == "dead", now=time.time()))
    typer.echo(f"{len(listed)} job{'' if len(listed) == 1 else 's'}")


def _jobs_table(listed: list[dict[str, Any]], *, dead: bool, now: float) -> Table:
    """Build the table of ``osqueue jobs``; long ids and reasons wrap instead of being cut."""

    table = Table()
    table.add_column("id", overflow="fold")
    table.add_column("type", overflow="fold")
    table.add_column("status")
    table.add_column("attempts")
    if dead:
        table.add_column("died at (UTC)")
        table.add_column("reason", overflow="fold")
    else:
        table.add_column("visible at (UTC)")
        table.add_column("claimed by", overflow="fold")
    table.add_column("payload", overflow="fold")
    for job in listed:
        if dead:
            columns = [_time_cell(job.get("diedAt"), now), str(job.get("reason") or "")]
        else:
            columns = [_time_cell(job.get("visibleAt"), now), str(job.get("claimedBy") or "")]
        table.add_row(
            str(job.get("id")),
            str(job.get("type")),
            str(job.get("status")),
            f"{job.get('attempts')}/{job.get('maxAttempts')}",
            *columns,
            json.dumps(job.get("payload"))[:60],
        )
    return table


def _time_cell(seconds: Any, now: float) -> str:
    """Show Unix ``seconds`` as ISO 8601 UTC with the distance from ``now``."""

    if not isinstance(seconds, int | float):
        return ""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    distance = seconds - now
    if abs(distance) < 1:
        relative = "now"
    elif distance > 0:
        relative = f"in {distance:.0f} s"
    else:
        relative = f"{-distance:.0f} s ago"
    return f"{moment:%Y-%m-%d %H:%M:%S} ({relative})"


def purge_dead(
    job_ids: list[str] | None = typer.Option(  # noqa: B008 - typer reads options from defaults
        None, "--id", help="Job id of a dead letter to remove; repeat for several."
    ),
    purge_all: bool = typer.Option(False, "--all", help="Remove every dead letter."),
    url: str | None = typer.Option(None, "--url", help=_URL_HELP),
    host: str | None = typer.Option(None, "--host", help=_HOST_HELP),
    port: int | None = typer.Option(None, "--port", help=_PORT_HELP),
    retry_timeout: float = typer.Option(
        10.0, "--retry-timeout", callback=_check_retry_timeout, help=_RETRY_HELP
    ),
) -> None:
    """Remove dead letters for good and print how many were removed."""

    # Removing every dead letter cannot be undone, so it needs its own flag.
    if not job_ids and not purge_all:
        raise typer.BadParameter(
            "name the dead letters with --id JOB_ID (repeatable), or pass --all to remove "
            "every one",
            param_hint="--id/--all",
        )
    if job_ids and purge_all:
        raise typer.BadParameter("use either --id or --all, not both", param_hint="--id/--all")
    settings = _settings(url, host, port, retry_timeout)
    try:
        with Client.from_settings(settings) as client:
            purged = client.purge_dead(job_ids or None)
    except (OsqueueError, BaseExceptionGroup) as error:
        raise _fail(error) from error
    typer.echo(f"purged {purged} dead letter{'' if purged == 1 else 's'}")
