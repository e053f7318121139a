"""An in-process object store, the default backend and the test double for the others."""

from __future__ import annotations

import enum
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from osqueue.errors import (
    CASConflictError,
    ConflictReason,
    IndeterminateWriteError,
    StorageBackendError,
)
from osqueue.spec.cas import TokenPolicy, content_token
from osqueue.storage.base import (
    ReadResult,
    StorageVersion,
    validate_data,
    validate_key,
    validate_version,
)

logger = logging.getLogger(__name__)


class Fault(enum.Enum):
    """A failure the memory backend can inject into one operation."""

    DROP_REQUEST = "drop_request"
    """A write is lost before it reaches the store: not applied, outcome indeterminate."""
    DROP_RESPONSE = "drop_response"
    """A write is applied but its response is lost: outcome indeterminate."""
    UNAVAILABLE = "unavailable"
    """The store returns 503 before doing anything: not applied, retryable."""
    CONCURRENT_REQUEST = "concurrent_request"
    """A write is rejected like S3's 409 ConditionalRequestConflict: not applied."""


_WRITE_ONLY_FAULTS = (Fault.DROP_REQUEST, Fault.DROP_RESPONSE, Fault.CONCURRENT_REQUEST)


@dataclass
class _Entry:
    data: bytes
    version: StorageVersion


class MemoryBackend:
    """A ``StorageBackend`` that keeps objects in a dict.

    ``token_policy`` chooses between a per-backend write counter (unique tokens, like GCS
    generations) and the MD5 of the bytes (like single-part S3 ETags, exposing ABA).

    ``latency`` is a delay in seconds before each operation takes effect, or a callable
    returning one; it sleeps with ``anyio.sleep``, so it follows a mock clock in tests.

    Fault injection, for tests: ``inject(fault, times, operations)`` queues one-shot faults
    that hit the next matching operations in order; ``fault_rates`` injects faults at random
    using ``rng``, which must be seeded for reproducible runs. ``ignore_preconditions``
    turns the backend into a store that accepts stale tokens and overwrites existing keys:
    a negative control that the conformance suite must reject.

    Operations on one backend are atomic with respect to each other: the check and the
    store happen with no await between them.
    """

    name = "memory"

    def __init__(
        self,
        *,
        token_policy: TokenPolicy = TokenPolicy.UNIQUE,
        latency: float | Callable[[], float] = 0.0,
        fault_rates: dict[Fault, float] | None = None,
        rng: random.Random | None = None,
        ignore_preconditions: bool = False,
    ) -> None:
        self.token_policy = token_policy
        self._latency = latency
        self._rng = rng
        self._fault_rates = self._validated_rates(fault_rates)
        self.ignore_preconditions = ignore_preconditions
        self._objects: dict[str, _Entry] = {}
        self._counter = 0
        self._queued_faults: deque[tuple[Fault, frozenset[str]]] = deque()
        self.faults_injected: dict[Fault, int] = {fault: 0 for fault in Fault}

    def set_fault_rates(self, rates: dict[Fault, float] | None) -> None:
        """Replace the random fault rates (None or {} turns them off).

        Validated like the constructor's ``fault_rates``: keys are ``Fault`` members
        (``TypeError``), rates are numbers from 0 to 1 (``TypeError``, ``ValueError``), and
        any rates need the backend's seeded ``rng`` (``ValueError``).
        Faults queued with ``inject`` are kept.
        """

        self._fault_rates = self._validated_rates(rates)
        logger.info("memory backend fault rates set to %s",
                    {fault.value: rate for fault, rate in self._fault_rates.items()})

    def _validated_rates(self, rates: dict[Fault, float] | None) -> dict[Fault, float]:
        validated = dict(rates or {})
        for fault, rate in validated.items():
            if not isinstance(fault, Fault):
                raise TypeError(
                    f"fault rate key {fault!r} is not a Fault; use for example Fault.UNAVAILABLE")
            if isinstance(rate, bool) or not isinstance(rate, (int, float)):
                raise TypeError(
                    f"fault rate of {fault.value} must be a number from 0 to 1, got {rate!r}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(
                    f"fault rate of {fault.value} must be a number from 0 to 1, got {rate!r}")
        if validated and self._rng is None:
            raise ValueError(
                "fault_rates needs an explicitly seeded rng, for example rng=random.Random(1), "
                "so that runs can be replayed"
            )
        return validated

    def inject(
        self,
        fault: Fault,
        times: int = 1,
        operations: tuple[str, ...] = ("read", "write", "create"),
    ) -> None:
        """Queue ``fault`` for the next ``times`` operations whose name is in ``operations``."""

        allowed = frozenset(operations)
        if fault in _WRITE_ONLY_FAULTS:
            allowed = allowed - {"read"}
        if not allowed:
            raise ValueError(f"fault {fault.value} cannot hit any of {operations}")
        for _ in range(times):
            self._queued_faults.append((fault, allowed))

    async def read(self, key: str) -> ReadResult | None:
        validate_key(key)
        await self._delay()
        self._raise_fault(self._take_fault("read"), key, applied=False)
        entry = self._objects.get(key)
        if entry is None:
            return None
        return ReadResult(entry.data, entry.version)

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion:
        validate_key(key)
        validate_data(data)
        validate_version(expected, self.name)
        await self._delay()

        fault = self._take_fault("write")
        self._raise_fault(fault, key, applied=False)
        entry = self._objects.get(key)
        if not self.ignore_preconditions:
            if entry is None:
                raise CASConflictError(key, ConflictReason.MISSING)
            if entry.version != expected:
                raise CASConflictError(
                    key, ConflictReason.STALE_VERSION, f"expected {expected.value}"
                )
        version = self._store(key, data)
        self._raise_fault(fault, key, applied=True)
        return version

    async def create_if_not_exists(self, key: str, data: bytes) -> StorageVersion:
        validate_key(key)
        validate_data(data)
        await self._delay()

        fault = self._take_fault("create")
        self._raise_fault(fault, key, applied=False)
        if key in self._objects and not self.ignore_preconditions:
            raise CASConflictError(key, ConflictReason.EXISTS)
        version = self._store(key, data)
        self._raise_fault(fault, key, applied=True)
        return version

    async def delete(self, key: str) -> None:
        validate_key(key)
        self._objects.pop(key, None)

    def keys(self) -> list[str]:
        """Return the stored keys in sorted order (for tests and clean-up checks)."""

        return sorted(self._objects)

    def _store(self, key: str, data: bytes) -> StorageVersion:
        self._counter += 1
        if self.token_policy is TokenPolicy.CONTENT_HASH:
            token: str | int = content_token(data)
        else:
            token = self._counter
        version = StorageVersion(self.name, token)
        self._objects[key] = _Entry(bytes(data), version)
        return version

    async def _delay(self) -> None:
        delay = self._latency() if callable(self._latency) else self._latency
        if delay > 0:
            await anyio.sleep(delay)
        else:
            await anyio.lowlevel.checkpoint()

    def _take_fault(self, operation: str) -> Fault | None:
        for index, (fault, allowed) in enumerate(self._queued_faults):
            if operation in allowed:
                del self._queued_faults[index]
                return self._count(fault)

        if self._rng is None:
            return None
        for fault, rate in sorted(self._fault_rates.items(), key=lambda item: item[0].value):
            if operation == "read" and fault in _WRITE_ONLY_FAULTS:
                continue
            if self._rng.random() < rate:
                return self._count(fault)
        return None

    def _count(self, fault: Fault) -> Fault:
        self.faults_injected[fault] += 1
        return fault

    def _raise_fault(self, fault: Fault | None, key: str, *, applied: bool) -> None:
        """Raise the error ``fault`` causes at this point, if any.

        Called once before the store is changed (``applied=False``) and once after.
        """

        if fault is None:
            return
        if not applied and fault is Fault.UNAVAILABLE:
            raise StorageBackendError(
                f"injected 503 on {key!r}", key=key, retryable=True, status=503
            )
        if not applied and fault is Fault.CONCURRENT_REQUEST:
            raise CASConflictError(key, ConflictReason.CONCURRENT_REQUEST, "injected 409")
        if not applied and fault is Fault.DROP_REQUEST:
            logger.debug("dropping the request to %r (injected)", key)
            raise IndeterminateWriteError(key, "injected: request dropped before it was applied")
        if applied and fault is Fault.DROP_RESPONSE:
            logger.debug("dropping the response from %r (injected)", key)
            raise IndeterminateWriteError(key, "injected: response dropped after the write")
