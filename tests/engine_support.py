"""Helpers for the engine tests: a controllable clock and a storage wrapper with hooks."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import anyio
from osqueue.engine import EngineConfig, GroupCommitEngine
from osqueue.mutations import apply_batch
from osqueue.spec import queue as spec
from osqueue.state import QueueState, decode_state, encode_state
from osqueue.storage.base import ReadResult, StorageVersion
from osqueue.storage.memory import MemoryBackend

KEY = "queue.json"


class Clock:
    """The event loop's clock plus an offset that a test can bump to simulate a pause."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return anyio.current_time() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


WriteHook = Callable[[int], Awaitable[None]]


class HookedBackend:
    """A MemoryBackend wrapper that runs ``before_write(n)`` before the n-th write (from 1)
    and records how many writes were in flight at once."""

    name = "memory"

    def __init__(self, inner: MemoryBackend, before_write: WriteHook | None = None) -> None:
        self.inner = inner
        self.before_write = before_write
        self.writes = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def read(self, key: str) -> ReadResult | None:
        return await self.inner.read(key)

    async def create_if_not_exists(self, key: str, data: bytes) -> StorageVersion:
        return await self.inner.create_if_not_exists(key, data)

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion:
        self.writes += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.before_write is not None:
                await self.before_write(self.writes)
            return await self.inner.write(key, data, expected)
        finally:
            self.in_flight -= 1


def make_engine(storage, clock=None, address="broker-a", seed=1, **config) -> GroupCommitEngine:
    options = {"lease_seconds": 30.0, "heartbeat_timeout": 10.0}
    options.update(config)
    return GroupCommitEngine(
        storage,
        address=address,
        config=EngineConfig(**options),
        clock=clock or Clock(),
        rng=random.Random(seed),
    )


async def stored_state(backend: MemoryBackend) -> QueueState:
    read = await backend.read(KEY)
    assert read is not None
    return decode_state(read.data)


async def foreign_commit(
    backend: MemoryBackend, commit_id: str, mutations=(), now: float = 0.0,
    max_recent_commits: int = 256,
) -> QueueState:
    """Commit ``mutations`` as another writer of the same epoch would (for fault tests)."""

    read = await backend.read(KEY)
    state = decode_state(read.data)
    new_state = apply_batch(
        state, list(mutations), now=now, commit_id=commit_id, heartbeat_timeout=1e9,
        max_recent_commits=max_recent_commits,
    ).state
    await backend.write(KEY, encode_state(new_state), read.version)
    return new_state


def job_ids(state: QueueState) -> list[str]:
    return [job.id for job in state.jobs]


def enqueue(job_type: str = "a", job_id: str | None = None) -> spec.Enqueue:
    return spec.Enqueue((spec.NewJob(job_type, {"n": 1}, id=job_id),))
