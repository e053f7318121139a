"""A storage wrapper that spaces conditional writes at least an interval apart.

The engine takes everything submitted while a write is in flight as its next batch. Holding
each write until ``interval`` seconds after the previous one started therefore limits the
engine to one write per interval, and mutations submitted meanwhile join the next batch.
This is the group commit interval (``GROUP_COMMIT_INTERVAL_MS``). Reads pass through at
once.
"""

from __future__ import annotations

import logging

import anyio
from osqueue.storage.base import ReadResult, StorageBackend, StorageVersion

logger = logging.getLogger(__name__)


class PacedStorage:
    """A ``StorageBackend`` that starts ``write`` and ``create_if_not_exists`` calls on
    ``inner`` at least ``interval`` seconds apart (monotonic clock of the event loop).

    Version tokens pass through unchanged, so ``name`` is ``inner.name``. A call cancelled
    while it waits was never sent.
    """

    def __init__(self, inner: StorageBackend, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.inner = inner
        self.interval = interval
        self.name = inner.name
        self._next_write = -float("inf")

    async def read(self, key: str) -> ReadResult | None:
        return await self.inner.read(key)

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion:
        await self._wait_turn()
        return await self.inner.write(key, data, expected)

    async def create_if_not_exists(self, key: str, data: bytes) -> StorageVersion:
        await self._wait_turn()
        return await self.inner.create_if_not_exists(key, data)

    async def _wait_turn(self) -> None:
        # The slot is reserved before sleeping, so concurrent writers queue in order.
        now = anyio.current_time()
        start = max(now, self._next_write)
        self._next_write = start + self.interval
        if start > now:
            await anyio.sleep(start - now)
