"""In-process brokers for client and worker tests.

``BrokerCluster`` runs real ``osqueue.broker`` brokers (election, engine, Starlette app) on
one storage backend inside the test's event loop. Clients reach them through
``cluster.transport``, an httpx transport that routes each request by host and port to the
ASGI app of that broker, and raises ``httpx.ConnectError`` (like a refused connection) for
a broker that was never started or was killed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import anyio
import httpx
from osqueue.broker.app import create_app
from osqueue.broker.config import BrokerSettings
from osqueue.broker.service import Broker
from osqueue.storage.base import StorageBackend

FAST_LEASE = {"heartbeat_interval": 0.2, "heartbeat_timeout": 1.2}
"""Broker timings (seconds) for failover tests: a standby takes over about 1.2 s after the
leader's last commit."""


class RoutingTransport(httpx.AsyncBaseTransport):
    """Send each request to the ASGI app registered for its ``host:port``."""

    def __init__(self) -> None:
        self.routes: dict[str, httpx.ASGITransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = self.routes.get(f"{request.url.host}:{request.url.port}")
        if target is None:
            raise httpx.ConnectError(
                "connection refused (no broker at this address)", request=request
            )
        return await target.handle_async_request(request)


@dataclass
class _Running:
    broker: Broker
    stop: anyio.Event = field(default_factory=anyio.Event)
    stopped: anyio.Event = field(default_factory=anyio.Event)


class BrokerCluster:
    """Brokers on ``storage``, run in ``group``; see the module docstring."""

    def __init__(
        self, storage: StorageBackend, group: anyio.abc.TaskGroup, **settings: object
    ) -> None:
        self.storage = storage
        self.group = group
        self.settings = settings
        self.transport = RoutingTransport()
        self.brokers: dict[str, _Running] = {}
        self._next_port = 18001

    async def start(self, *, token: str | None = None, wait_leader: bool = False) -> str:
        """Start a broker and return its URL; with ``wait_leader`` wait until it leads."""

        url = f"http://127.0.0.1:{self._next_port}"
        self._next_port += 1
        settings = BrokerSettings(advertised_url=url, token=token, **self.settings)
        broker = Broker(self.storage, settings, rng=random.Random(self._next_port))
        running = _Running(broker)
        self.brokers[url] = running
        await self.group.start(self._serve, running)
        self.transport.routes[url.removeprefix("http://")] = httpx.ASGITransport(
            app=create_app(broker)
        )
        if wait_leader:
            await self.wait_leader(url)
        return url

    async def _serve(self, running: _Running, *, task_status: anyio.abc.TaskStatus) -> None:
        try:
            async with running.broker.running():
                task_status.started()
                await running.stop.wait()
        finally:
            running.stopped.set()

    async def wait_leader(self, url: str, timeout: float = 10.0) -> None:
        with anyio.fail_after(timeout):
            while not self.brokers[url].broker.is_leader:
                await anyio.sleep(0.01)

    async def kill(self, url: str) -> None:
        """Make ``url`` unreachable at once, then stop its broker (its lease stays in place)."""

        self.transport.routes.pop(url.removeprefix("http://"), None)
        running = self.brokers[url]
        running.stop.set()
        await running.stopped.wait()

    async def stop_all(self) -> None:
        for url in list(self.brokers):
            await self.kill(url)

    def leader(self) -> str | None:
        for url, running in self.brokers.items():
            if running.broker.is_leader:
                return url
        return None
