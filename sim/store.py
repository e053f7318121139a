"""A simulated object store with fault injection, ordered deterministically in virtual time.

The store keeps its objects in the executable model (``ObjectStoreSpec`` and ``StoreState``
from ``osqueue.spec.cas``). Around the model it adds the behaviour of a real service:
latency, timeouts, lost requests and responses, late writes, transient errors and a
per-object write rate limit. A lying mode that ignores preconditions is the negative
control.

Determinism
-----------

Each client talks to the store through its own ``StoreConnection``. A connection draws
every random choice (fault, latency) from its own ``random.Random``, seeded from the
store's generator when the connection is made, so its draws do not depend on how trio
interleaves tasks. An operation does not change the store when its task happens to run.
At invocation it pushes an *event* onto a heap, keyed by ``(apply_at, connection index,
connection sequence number)`` with ``apply_at`` strictly after the invocation time. When
any task wakes at virtual time ``now``, it applies every queued event with
``apply_at <= now`` in key order. Because an event always enters the heap before its
``apply_at``, the store applies the same sequence of events in whatever order trio runs
the tasks woken at one instant. The only requirement is that one connection is used by one
task at a time.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from osqueue.errors import (
    CASConflictError,
    ConflictReason,
    IndeterminateWriteError,
    StorageBackendError,
)
from osqueue.sim.faults import MIN_LATENCY, FaultConfig, FaultKind, Latency, transient_kind
from osqueue.spec.cas import (
    ABSENT,
    Conflict,
    ConflictKind,
    ObjectStoreSpec,
    StoredObject,
    StoreState,
    TokenPolicy,
    Written,
)
from osqueue.storage.base import (
    ReadResult,
    StorageVersion,
    validate_data,
    validate_key,
    validate_version,
)

logger = logging.getLogger(__name__)

BACKEND_NAME = "sim"


@dataclass(frozen=True, slots=True)
class RateLimited:
    """An event rejected because its object exceeded the write rate limit."""


@dataclass(slots=True)
class _Event:
    """One operation as the store applies it; ``result`` is set when it is applied."""

    kind: str
    key: str
    data: bytes | None = None
    expected: str | None = None
    result: object = None
    applied: bool = False


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_at: float


@dataclass(slots=True)
class _Draw:
    """All random choices for one operation, drawn in a fixed order."""

    error_status: int | None
    write_fault: FaultKind | None
    latency: float
    apply_fraction: float
    late_delay: float


_CONFLICT_REASONS = {
    ConflictKind.STALE: ConflictReason.STALE_VERSION,
    ConflictKind.MISSING: ConflictReason.MISSING,
    ConflictKind.EXISTS: ConflictReason.EXISTS,
}


class SimulatedObjectStore:
    """A ``StorageBackend`` (name ``"sim"``) over the CAS model, with injected faults.

    Clients should call ``connect(name)`` once each and use the returned connection; the
    store's own ``read``, ``write`` and ``create_if_not_exists`` go through a connection
    named ``"default"``. ``clock`` and ``sleep_until`` default to anyio's, which follow
    trio's ``MockClock`` in a simulation. ``faults_injected`` counts injected faults by
    kind.
    """

    name = BACKEND_NAME

    def __init__(
        self,
        *,
        rng: random.Random,
        policy: TokenPolicy = TokenPolicy.UNIQUE,
        faults: FaultConfig | None = None,
        clock: Callable[[], float] = anyio.current_time,
        sleep_until: Callable[[float], Awaitable[None]] = anyio.sleep_until,
    ) -> None:
        if not isinstance(rng, random.Random):
            raise TypeError(
                f"rng must be a seeded random.Random, got {type(rng).__name__}; "
                "pass rng=random.Random(seed)"
            )
        self.spec = ObjectStoreSpec(policy)
        self.faults = faults if faults is not None else FaultConfig()
        self.state: StoreState = self.spec.initial()
        self.faults_injected: dict[FaultKind, int] = {kind: 0 for kind in FaultKind}
        self.events_applied = 0
        self._rng = rng
        self._clock = clock
        self._sleep_until = sleep_until
        self._heap: list[tuple[float, int, int, _Event]] = []
        self._buckets: dict[str, _Bucket] = {}
        self._connections: dict[str, StoreConnection] = {}
        self._last_applied_at = float("-inf")

    @property
    def policy(self) -> TokenPolicy:
        return self.spec.policy

    def connect(self, client: str) -> StoreConnection:
        """Return the connection of ``client``, making it on first use.

        Connections made in the same order get the same random streams.
        """

        connection = self._connections.get(client)
        if connection is None:
            seed = self._rng.getrandbits(64)
            connection = StoreConnection(self, client, len(self._connections), seed)
            self._connections[client] = connection
            logger.debug("client %s connected to the simulated store (seed %d)", client, seed)
        return connection

    async def read(self, key: str) -> ReadResult | None:
        return await self.connect("default").read(key)

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion:
        return await self.connect("default").write(key, data, expected)

    async def create_if_not_exists(self, key: str, data: bytes) -> StorageVersion:
        return await self.connect("default").create_if_not_exists(key, data)

    def objects(self) -> dict[str, StoredObject]:
        """Return the objects applied so far, by key in sorted order."""

        return {key: self.state.objects[key] for key in sorted(self.state.objects)}

    @property
    def pending(self) -> int:
        """The number of events queued but not yet applied (late writes, in-flight requests)."""

        return len(self._heap)

    async def settle(self) -> None:
        """Sleep until every queued event has been applied (used at the end of a run)."""

        while self._heap:
            await self._sleep_until(self._heap[0][0])
            self._apply_due()

    # -- used by connections ------------------------------------------------------------

    def _count(self, kind: FaultKind) -> None:
        self.faults_injected[kind] += 1

    def _enqueue(self, apply_at: float, connection: StoreConnection, seq: int, event: _Event):
        now = self._clock()
        # An event must enter the heap before its time comes, or tasks woken at one instant
        # could apply events in an order that depends on trio's scheduler.
        assert apply_at > now, f"event at {apply_at} enqueued at {now}"
        heapq.heappush(self._heap, (apply_at, connection.index, seq, event))

    def _apply_due(self) -> None:
        """Apply every queued event whose time has come, in key order."""

        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            apply_at, _index, _seq, event = heapq.heappop(self._heap)
            assert apply_at >= self._last_applied_at, "events applied out of order"
            self._last_applied_at = apply_at
            self._apply(apply_at, event)

    def _apply(self, apply_at: float, event: _Event) -> None:
        self.events_applied += 1
        event.applied = True
        if event.kind == "read":
            event.result = self.spec.read(self.state, event.key)
            return

        if not self._take_rate_token(event.key, apply_at):
            self._count(FaultKind.RATE_LIMITED)
            event.result = RateLimited()
            return

        assert event.data is not None
        if event.kind == "write":
            assert event.expected is not None
            state, result = self.spec.write(self.state, event.key, event.data, event.expected)
        else:
            state, result = self.spec.create_if_not_exists(self.state, event.key, event.data)
        if isinstance(result, Conflict) and self.faults.lying:
            state, result = self._apply_ignoring_precondition(event)
        self.state = state
        event.result = result

    def _apply_ignoring_precondition(self, event: _Event) -> tuple[StoreState, Written]:
        """Store the event's bytes whatever the key contains (the lying store)."""

        self._count(FaultKind.PRECONDITION_IGNORED)
        assert event.data is not None
        current = self.state.get(event.key)
        if current is None:
            state, result = self.spec.create_if_not_exists(self.state, event.key, event.data)
        else:
            state, result = self.spec.write(self.state, event.key, event.data, current.token)
        assert isinstance(result, Written)
        return state, result

    def _take_rate_token(self, key: str, now: float) -> bool:
        rate = self.faults.write_rate_limit_per_second
        if rate is None:
            return True
        burst = float(self.faults.rate_limit_burst)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated_at) * rate)
        bucket.updated_at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True


def _apply_time(start: float, draw: _Draw) -> float:
    """Return when an operation invoked at ``start`` takes effect: part way through its latency."""

    return start + max(MIN_LATENCY, round(draw.latency * draw.apply_fraction, 6))


class StoreConnection:
    """One client's view of a ``SimulatedObjectStore``; itself a ``StorageBackend``.

    Use one connection from one task at a time: the sequence numbers that order events at
    one instant are taken in the order of the calls.
    """

    name = BACKEND_NAME

    def __init__(self, store: SimulatedObjectStore, client: str, index: int, seed: int) -> None:
        self.store = store
        self.client = client
        self.index = index
        self._rng = random.Random(seed)
        self._seq = 0

    async def read(self, key: str) -> ReadResult | None:
        validate_key(key)
        store = self.store
        faults = store.faults
        start = store._clock()
        seq = self._next_seq()
        draw = self._draw(faults.read_latency, writes=False)

        if draw.error_status is not None:
            await store._sleep_until(start + draw.latency)
            raise self._transient_error(key, draw.error_status, seq)
        if draw.latency > faults.timeout:
            # A read has no effect, so a timed-out read is certainly not applied.
            store._count(FaultKind.TIMEOUT)
            await store._sleep_until(start + faults.timeout)
            raise StorageBackendError(
                f"read of {key!r} timed out after {faults.timeout} s (simulated)",
                key=key,
                retryable=True,
            )

        event = _Event("read", key)
        await self._run_event(event, start, draw, seq)
        await store._sleep_until(start + draw.latency)
        if event.result is ABSENT:
            return None
        assert isinstance(event.result, StoredObject)
        return ReadResult(event.result.data, StorageVersion(BACKEND_NAME, event.result.token))

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion:
        validate_key(key)
        validate_data(data)
        validate_version(expected, BACKEND_NAME)
        event = _Event("write", key, bytes(data), str(expected.value))
        return await self._mutate(event)

    async def create_if_not_exists(self, key: str, data: bytes) -> StorageVersion:
        validate_key(key)
        validate_data(data)
        event = _Event("create", key, bytes(data))
        return await self._mutate(event)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _draw(self, latency: Latency, *, writes: bool) -> _Draw:
        """Draw every choice for one operation; the number of draws never varies."""

        faults = self.store.faults
        rng = self._rng
        error_roll = rng.random()
        status = rng.choice(faults.error_statuses)
        fault_roll = rng.random()
        fraction = rng.uniform(0.05, 0.95)
        if faults.apply_fraction is not None:
            fraction = faults.apply_fraction
        draw = _Draw(
            error_status=status if error_roll < faults.error_rate else None,
            write_fault=None,
            latency=latency.sample(rng),
            apply_fraction=fraction,
            late_delay=faults.late_delay.sample(rng),
        )
        if writes and draw.error_status is None:
            if fault_roll < faults.drop_request:
                draw.write_fault = FaultKind.DROP_REQUEST
            elif fault_roll < faults.drop_request + faults.drop_response:
                draw.write_fault = FaultKind.DROP_RESPONSE
            elif fault_roll < faults.drop_request + faults.drop_response + faults.applied_late:
                draw.write_fault = FaultKind.APPLIED_LATE
        return draw

    async def _run_event(self, event: _Event, start: float, draw: _Draw, seq: int) -> None:
        """Queue ``event`` to take effect part way through the latency, then wait for it."""

        apply_at = _apply_time(start, draw)
        self.store._enqueue(apply_at, self, seq, event)
        await self.store._sleep_until(apply_at)
        self.store._apply_due()
        assert event.applied, "an event was not applied at its time"

    async def _mutate(self, event: _Event) -> StorageVersion:
        """Run a write or create through the fault model and return its new version."""

        store = self.store
        faults = store.faults
        start = store._clock()
        deadline = start + faults.timeout
        seq = self._next_seq()
        draw = self._draw(faults.write_latency, writes=True)
        label = f"{event.kind} {self.client}#{seq} of {event.key!r}"

        if draw.error_status is not None:
            await store._sleep_until(start + draw.latency)
            raise self._transient_error(event.key, draw.error_status, seq)

        if draw.write_fault is FaultKind.DROP_REQUEST:
            store._count(FaultKind.DROP_REQUEST)
            logger.debug("dropping the request of %s (injected)", label)
            await store._sleep_until(deadline)
            raise IndeterminateWriteError(event.key, "timed out: request dropped (simulated)")

        if draw.write_fault is FaultKind.APPLIED_LATE:
            store._count(FaultKind.APPLIED_LATE)
            apply_at = deadline + draw.late_delay
            logger.debug("delaying %s until %.6f, after the time-out (injected)", label, apply_at)
            store._enqueue(apply_at, self, seq, event)
            await store._sleep_until(deadline)
            store._apply_due()
            raise IndeterminateWriteError(event.key, "timed out: request delayed (simulated)")

        timed_out = draw.latency > faults.timeout
        if draw.write_fault is FaultKind.DROP_RESPONSE or timed_out:
            store._count(FaultKind.DROP_RESPONSE if not timed_out else FaultKind.TIMEOUT)
            logger.debug("%s will time out (response lost or slow)", label)
            apply_at = _apply_time(start, draw)
            store._enqueue(apply_at, self, seq, event)
            await store._sleep_until(min(apply_at, deadline))
            store._apply_due()
            await store._sleep_until(deadline)
            store._apply_due()
            raise IndeterminateWriteError(event.key, "timed out: no response (simulated)")

        await self._run_event(event, start, draw, seq)
        await store._sleep_until(start + draw.latency)
        return self._result(event)

    def _result(self, event: _Event) -> StorageVersion:
        result = event.result
        if isinstance(result, Written):
            return StorageVersion(BACKEND_NAME, result.token)
        if isinstance(result, RateLimited):
            raise StorageBackendError(
                f"write rate limit of {self.store.faults.write_rate_limit_per_second}/s "
                f"exceeded for {event.key!r} (simulated 429)",
                key=event.key,
                retryable=True,
                status=429,
            )
        assert isinstance(result, Conflict), f"unexpected event result {result!r}"
        detail = f"expected {event.expected}" if event.expected is not None else ""
        raise CASConflictError(event.key, _CONFLICT_REASONS[result.kind], detail)

    def _transient_error(self, key: str, status: int, seq: int) -> StorageBackendError:
        self.store._count(transient_kind(status))
        logger.debug("injected %d for %s#%d on %r", status, self.client, seq, key)
        return StorageBackendError(
            f"simulated HTTP {status} on {key!r}", key=key, retryable=True, status=status
        )


__all__ = ["BACKEND_NAME", "RateLimited", "SimulatedObjectStore", "StoreConnection"]
