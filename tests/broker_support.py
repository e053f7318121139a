"""Helpers for the broker tests: brokers on MemoryBackend and clients through ASGI."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from osqueue.broker import Broker, BrokerSettings, create_app
from osqueue.errors import StorageBackendError
from osqueue.storage.base import ReadResult, StorageBackend, StorageVersion
from osqueue.storage.memory import MemoryBackend

TOKEN = "test-token-0123456789abcdef"

FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.3}
"""Timings that make a standby take over within about half a second."""


def settings(address: str = "http://127.0.0.1:18080", **fields: Any) -> BrokerSettings:
    values: dict[str, Any] = {"advertised_url": address, "heartbeat_interval": 0.2,
                              "heartbeat_timeout": 3.0}
    values.update(fields)
    return BrokerSettings(**values)


async def wait_for(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail the test naming ``what`` after ``timeout``."""

    try:
        with anyio.fail_after(timeout):
            while not predicate():
                await anyio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"{what} not reached within {timeout} s") from None


@asynccontextmanager
async def running_broker(
    storage: StorageBackend | None = None, *, address: str = "http://127.0.0.1:18080",
    wait_leader: bool = True, seed: int = 1, **fields: Any,
) -> AsyncIterator[tuple[Broker, httpx.AsyncClient]]:
    """Run a broker and yield it with an HTTP client that calls its app in-process."""

    storage = storage if storage is not None else MemoryBackend()
    broker = Broker(storage, settings(address, **fields), rng=random.Random(seed))
    transport = httpx.ASGITransport(app=create_app(broker))
    async with broker.running(), httpx.AsyncClient(
            transport=transport, base_url=address) as client:
        if wait_leader:
            await wait_for(lambda: broker.is_leader, what="leadership")
        yield broker, client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PartitionedStorage:
    """A ``StorageBackend`` view whose requests hang while ``partitioned`` is True.

    Models a broker cut off from storage: requests wait (like a long network timeout) and
    go through once the partition heals, with the version tokens they carried.
    """

    def __init__(self, inner: StorageBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.partitioned = False
        self._healed = anyio.Event()

    def partition(self) -> None:
        self.partitioned = True
        self._healed = anyio.Event()

    def heal(self) -> None:
        self.partitioned = False
        self._healed.set()

    async def _pass(self) -> None:
        if self.partitioned:
            await self._healed.wait()

    async def read(self, key: str) -> ReadResult | None:
        await self._pass()
        return await self.inner.read(key)

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion:
        await self._pass()
        return await self.inner.write(key, data, expected)

    async def create_if_not_exists(self, key: str, data: bytes) -> StorageVersion:
        await self._pass()
        return await self.inner.create_if_not_exists(key, data)


class FailingStorage(PartitionedStorage):
    """A view that raises a retryable 503 on every request while ``partitioned``."""

    async def _pass(self) -> None:
        if self.partitioned:
            raise StorageBackendError("injected outage", retryable=True, status=503)
