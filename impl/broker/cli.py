"""The ``osqueue broker`` command: run one broker until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import signal
from typing import Any

import anyio
import typer
from osqueue.broker.config import SETTING_VARIABLES, BrokerSettings, load_settings
from osqueue.broker.server import check_bindable, serve
from osqueue.errors import ConfigError
from osqueue.storage.config import from_env

logger = logging.getLogger(__name__)


def broker(
    host: str | None = typer.Option(
        None, "--host", help="Address to bind to (env BROKER_HOST; default 127.0.0.1)."),
    port: int | None = typer.Option(
        None, "--port", help="TCP port (env BROKER_PORT; default 8080)."),
    advertised_url: str | None = typer.Option(
        None, "--advertised-url",
        help="URL that clients and other brokers use to reach this broker, stored in "
        "queue.json while it leads (env BROKER_ADVERTISED_URL; default http://HOST:PORT)."),
    queue_key: str | None = typer.Option(
        None, "--queue-key", help="Object key of the queue state (env QUEUE_KEY; default "
        "queue.json)."),
    group_commit_interval_ms: int | None = typer.Option(
        None, "--group-commit-interval-ms",
        help="Minimum milliseconds between two commits; 0 commits as soon as the previous "
        "write returned (env GROUP_COMMIT_INTERVAL_MS; default 0)."),
    heartbeat_interval_ms: int | None = typer.Option(
        None, "--heartbeat-interval-ms",
        help="Milliseconds between lease renewals of an idle leader and between state reads "
        "of a standby (env BROKER_HEARTBEAT_INTERVAL_MS; default 5000)."),
    heartbeat_timeout_ms: int | None = typer.Option(
        None, "--heartbeat-timeout-ms",
        help="Lease length in milliseconds: a standby takes over a leader that has not "
        "committed for longer (env BROKER_HEARTBEAT_TIMEOUT_MS; default 15000)."),
    job_timeout_ms: int | None = typer.Option(
        None, "--job-timeout-ms",
        help="Milliseconds without a worker heartbeat after which a claimed job returns to "
        "the queue (env JOB_HEARTBEAT_TIMEOUT_MS; default 60000)."),
    max_body_bytes: int | None = typer.Option(
        None, "--max-body-bytes",
        help="Largest request body or WebSocket message in bytes (env MAX_BODY_BYTES; "
        "default 1048576)."),
    max_batch_size: int | None = typer.Option(
        None, "--max-batch-size",
        help="Maximum mutations in one commit. Each job of a batch enqueue counts, so a "
        "larger batch enqueue is rejected (env MAX_BATCH_SIZE; default 1000)."),
    max_state_bytes: int | None = typer.Option(
        None, "--max-state-bytes",
        help="Largest encoded queue.json in bytes; an enqueue that would exceed it is "
        "rejected with 507 StateTooLarge (env MAX_STATE_BYTES; default 67108864, 64 MiB)."),
) -> None:
    """Run a broker: serve the HTTP API and take part in the leader election.

    Storage comes from STORAGE_BACKEND and the variables of osqueue.storage.from_env. Set
    OSQUEUE_TOKEN to require a bearer token on every route but /healthz.
    """

    overrides: dict[str, Any] = {
        "host": host, "port": port, "advertised_url": advertised_url, "queue_key": queue_key,
        "group_commit_interval_ms": group_commit_interval_ms,
        "heartbeat_interval_ms": heartbeat_interval_ms,
        "heartbeat_timeout_ms": heartbeat_timeout_ms, "job_timeout_ms": job_timeout_ms,
        "max_body_bytes": max_body_bytes, "max_batch_size": max_batch_size,
        "max_state_bytes": max_state_bytes,
    }
    try:
        settings = load_settings(None, **overrides)
        storage = from_env()
        check_bindable(settings)
    except ConfigError as error:
        typer.echo(f"error: {_name_flag(error, overrides)}", err=True)
        raise typer.Exit(2) from None

    typer.echo(f"osqueue broker {settings.advertised_url} listening on "
               f"{settings.host}:{settings.port}", err=True)
    anyio.run(_run, settings, storage)


def _name_flag(error: ConfigError, overrides: dict[str, Any]) -> str:
    """Return the message of ``error`` naming the flag instead of the variable when the
    user set the value by flag."""

    for option, variable in SETTING_VARIABLES.items():
        if variable == error.name and overrides.get(option) is not None:
            flag = "--" + option.replace("_", "-")
            return f"{flag}: {error.problem}; for example {flag} {error.example}"
    return str(error)


async def _run(settings: BrokerSettings, storage: Any) -> None:
    shutdown = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(_wait_for_signal, shutdown)
        await serve(settings, storage, shutdown=shutdown)
        group.cancel_scope.cancel()


async def _wait_for_signal(shutdown: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for received in signals:
            logger.info("received %s; stopping the broker", signal.Signals(received).name)
            shutdown.set()
            return


def register(app: typer.Typer) -> None:
    app.command("broker")(broker)
