"""The simulated clients: concurrent reads, compare-and-swap updates and creates on a few keys.

Each client runs in its own task with its own ``random.Random`` and its own backend stack
(recorder, optional ``ThrottledStorageBackend``, store connection), so nothing a client
decides depends on how trio interleaves the clients.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from osqueue.errors import CASConflictError, IndeterminateWriteError, StorageBackendError
from osqueue.sim.faults import Latency
from osqueue.storage.base import StorageBackend, StorageVersion

logger = logging.getLogger(__name__)

ACTIONS = ("read", "cas", "create", "stale_cas")
"""What a client can do in one step.

``read`` reads a key. ``cas`` reads a key and writes new bytes with the token it read (or
creates the key when absent). ``create`` creates a key if it does not exist. ``stale_cas``
writes with the token this client saw last for the key. Another client may have replaced
that version since, and then the store must reject the write.
"""

REPEATED_VALUES = (b"A", b"B")
"""Bytes that clients sometimes write again, so content-hash tokens repeat (A -> B -> A)."""


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """The clients' workload. ``operations`` counts store operations over all clients."""

    clients: int = 5
    operations: int = 1000
    keys: int = 3
    weights: tuple[float, float, float, float] = (0.3, 0.45, 0.15, 0.1)
    """Relative weights of ``ACTIONS``, in that order."""
    think_time: Latency = field(default_factory=lambda: Latency.uniform(0.0, 0.2))
    retry_backoff: Latency = field(default_factory=lambda: Latency.uniform(0.05, 0.5))
    repeat_values: float = 0.2
    """Probability that a write sends one of ``REPEATED_VALUES`` instead of fresh bytes."""
    reads_per_minute: float | None = None
    """Per-client read rate for ``ThrottledStorageBackend``; None leaves reads unthrottled."""
    writes_per_minute: float | None = None

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise ValueError(f"clients must be >= 1, got {self.clients}")
        if self.operations < 1:
            raise ValueError(f"operations must be >= 1, got {self.operations}")
        if self.keys < 1:
            raise ValueError(f"keys must be >= 1, got {self.keys}")
        if len(self.weights) != len(ACTIONS) or min(self.weights) < 0 or sum(self.weights) <= 0:
            raise ValueError(
                f"weights must be {len(ACTIONS)} non-negative numbers for {ACTIONS} with a "
                f"positive sum, got {self.weights}"
            )
        if not 0.0 <= self.repeat_values <= 1.0:
            raise ValueError(f"repeat_values must be a probability, got {self.repeat_values}")

    @property
    def throttled(self) -> bool:
        return self.reads_per_minute is not None or self.writes_per_minute is not None

    def key_names(self) -> list[str]:
        return [f"key-{index}" for index in range(self.keys)]

    def budget(self, client_index: int) -> int:
        """Return how many operations client ``client_index`` makes (the total split evenly)."""

        share, extra = divmod(self.operations, self.clients)
        return share + (1 if client_index < extra else 0)

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["weights"] = list(self.weights)
        return record


class SimClient:
    """One client: ``budget`` store operations through ``backend``, chosen with ``rng``.

    ``sleep`` is the virtual-time sleep used for think time and retry back-off. ``errors``
    counts the errors the client caught, by kind.
    """

    def __init__(
        self,
        name: str,
        backend: StorageBackend,
        rng: random.Random,
        config: WorkloadConfig,
        budget: int,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.name = name
        self.backend = backend
        self.rng = rng
        self.config = config
        self.budget = budget
        self.sleep = sleep
        self.calls = 0
        self.errors: dict[str, int] = {}
        self._seen: dict[str, StorageVersion] = {}
        self._writes = 0

    async def run(self) -> None:
        logger.debug("client %s starts with a budget of %d operations", self.name, self.budget)
        keys = self.config.key_names()
        while self.calls < self.budget:
            key = self.rng.choice(keys)
            action = self.rng.choices(ACTIONS, weights=self.config.weights)[0]
            think = self.config.think_time.sample(self.rng)
            backoff = self.config.retry_backoff.sample(self.rng)
            data = self._next_data()

            retry = await self._step(action, key, data)
            await self.sleep(backoff if retry else think)
        logger.debug("client %s finished after %d operations", self.name, self.calls)

    async def _step(self, action: str, key: str, data: bytes) -> bool:
        """Run one action and return True when it ended with a retryable error."""

        try:
            if action == "read":
                await self._read(key)
            elif action == "create":
                await self._create(key, data)
            elif action == "cas":
                current = await self._read(key)
                if self.calls >= self.budget:
                    return False
                if current is None:
                    await self._create(key, data)
                else:
                    await self._write(key, data, current)
            else:
                seen = self._seen.get(key)
                if seen is None:
                    await self._read(key)
                else:
                    await self._write(key, data, seen)
        except CASConflictError:
            self._note("conflict")
        except IndeterminateWriteError:
            # The next read of the key settles what happened; the history marks it unknown.
            self._note("indeterminate")
        except StorageBackendError as error:
            self._note(f"failed_{error.status}" if error.status else "failed")
            return error.retryable
        return False

    async def _read(self, key: str) -> StorageVersion | None:
        self.calls += 1
        result = await self.backend.read(key)
        if result is None:
            return None
        self._seen[key] = result.version
        return result.version

    async def _write(self, key: str, data: bytes, expected: StorageVersion) -> None:
        self.calls += 1
        self._seen[key] = await self.backend.write(key, data, expected)

    async def _create(self, key: str, data: bytes) -> None:
        self.calls += 1
        self._seen[key] = await self.backend.create_if_not_exists(key, data)

    def _next_data(self) -> bytes:
        self._writes += 1
        if self.rng.random() < self.config.repeat_values:
            return self.rng.choice(REPEATED_VALUES)
        return f"{self.name}:{self._writes}".encode("ascii")

    def _note(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
