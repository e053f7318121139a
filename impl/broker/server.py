"""Run a broker: the election loop and the HTTP server (Hypercorn) in one process.

``serve`` works under asyncio and trio (Hypercorn has a server for each). It returns when
``shutdown`` is set; the HTTP server stops accepting connections first, then the broker
finishes its batch in flight and stops its engine.
"""

from __future__ import annotations

import errno
import logging
import random
import socket

import anyio
import sniffio
from hypercorn.config import Config
from osqueue.broker.app import create_app
from osqueue.broker.config import BrokerSettings
from osqueue.broker.service import Broker
from osqueue.errors import ConfigError
from osqueue.storage.base import StorageBackend

logger = logging.getLogger(__name__)


def hypercorn_config(settings: BrokerSettings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    # Larger than the broker's own limit, so that the broker returns BodyTooLarge for an
    # oversized message instead of Hypercorn closing the connection.
    config.websocket_max_message_size = 2 * settings.max_body_bytes
    config.accesslog = None
    # A Logger instance makes Hypercorn log through the logging configuration of the
    # process instead of adding its own stderr handler.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 5.0
    return config


def check_bindable(settings: BrokerSettings) -> None:
    """Raise ``ConfigError`` when ``host:port`` cannot be bound: naming BROKER_HOST when the
    host does not resolve to an address of this machine, else BROKER_PORT.

    Checked before the broker joins the election, so that a broker that cannot serve never
    takes the lease. NOTE: another process can still take the port between this check and
    the server's own bind.
    """

    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.host, settings.port))
        except socket.gaierror as error:
            raise ConfigError(
                "BROKER_HOST",
                f"cannot resolve {settings.host!r} to an address ({error.strerror or error}); "
                "use an IP address or host name of this machine",
                "127.0.0.1") from None
        except OSError as error:
            if error.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(
                    "BROKER_HOST",
                    f"{settings.host!r} is not an address of this machine "
                    f"({error.strerror or error}); use one of its addresses, or 0.0.0.0 for all",
                    "127.0.0.1") from None
            raise ConfigError(
                "BROKER_PORT",
                f"cannot listen on {settings.host}:{settings.port}: {error.strerror or error}; "
                "choose a free port or stop the process that uses it",
                str(settings.port + 1)) from None


async def serve(
    settings: BrokerSettings,
    storage: StorageBackend,
    *,
    shutdown: anyio.Event,
    rng: random.Random | None = None,
) -> None:
    """Serve ``settings.host:port`` with a broker on ``storage`` until ``shutdown`` is set."""

    check_bindable(settings)
    broker = Broker(storage, settings, rng=rng)
    app = create_app(broker)
    config = hypercorn_config(settings)
    library = sniffio.current_async_library()
    logger.info("broker %s listening on %s (%s)", broker.address, config.bind[0], library)
    async with broker.running():
        if library == "trio":
            from hypercorn.trio import serve as hypercorn_serve
        else:
            from hypercorn.asyncio import serve as hypercorn_serve
        await hypercorn_serve(app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
    logger.info("broker %s stopped listening on %s", broker.address, config.bind[0])
