"""The group-commit engine: the one writer of ``queue.json`` while its broker leads.

Callers ``submit`` mutations, or ``submit_many`` lists of mutations that must land in the
same commit. A single writer task takes everything pending as one batch, applies it to the
last known state, and writes the result with a compare-and-swap. Mutations submitted while
a write is in flight wait and join the next batch, so there is never more than one write in
flight. Each caller waits on a waiter of its own event loop's cheapest kind (an
``asyncio.Future``, or a direct reschedule of the trio task), which the writer settles
after the commit.

Exactly-once commit protocol
----------------------------
Every batch gets a commit id, written into ``recent_commits`` of the state it produces,
and keeps it across all its write attempts. An attempt is the encoded state built on one
base state (sequence ``s``) and sent with that base's version token. Outcomes:

- success: the batch landed once; every caller gets its result.
- ``CASConflictError`` (412, 404, or 409 ``CONCURRENT_REQUEST``): not applied. After a
  stale-version conflict the engine reads again; after a 409 it keeps its state. It backs
  off with exponential delay and jitter and applies the batch to the current state.
- retryable ``StorageBackendError`` (429, 503): not applied; back off from the larger
  ``rate_limit_backoff_base`` and retry, then space the next writes apart for a while.
  New mutations keep collecting for the next batch meanwhile.
- ``IndeterminateWriteError``: the attempt may have landed. The engine reads back:

  * the commit id is in ``recent_commits``: the batch landed exactly once, and the callers
    get the results of the attempt whose sequence the record carries;
  * the state is still at sequence ``s``: the attempt has not landed; the engine sends the
    *same bytes* with the same version token again, so at most one of the two can land;
  * the state moved past ``s`` and the record of sequence ``s + 1`` names another commit:
    only one write can replace version ``s``, so ours never landed and never will; the
    engine applies the batch to the new state;
  * otherwise (the record of ``s + 1`` was pruned, or the read fails) the outcome cannot be
    settled and the callers get ``CommitIndeterminateError``, never a success.

A changed version or an existing object is never taken as proof that a batch landed. A
mutation is applied to a state only after every earlier attempt of its batch has been
proven absent, so it is never applied twice, and a caller gets a result only after the
write that contains it returned success or was found by its commit id.

Every batch settles: each caller gets its result, a rejection (``spec.queue.Rejected``,
for example a stale claim token) or an error. Errors during one batch reach only that
batch's callers.

Fencing
-------
The engine writes only on top of states whose broker record names its own address and
epoch. On reading anything else it steps down: the batch and every pending mutation get
``NotLeaderError`` and the engine accepts nothing more. A clean stop releases the lease
with one last commit whose broker record has no address. See ``osqueue.election``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import anyio
import anyio.abc
from osqueue.election import (
    LeaseHeldError,
    NotLeaderError,
    acquire,
    holds_lease,
)
from osqueue.errors import (
    CASConflictError,
    ConfigError,
    IndeterminateWriteError,
    OsqueueError,
    StorageBackendError,
)
from osqueue.mutations import DEFAULT_RECENT_COMMITS, EncodedEnqueue, apply_batch
from osqueue.spec import queue as spec
from osqueue.state import (
    DEFAULT_KEY,
    BrokerRecord,
    QueueState,
    decode_state,
    encode_state,
)
from osqueue.storage.base import StorageBackend, StorageVersion

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------


class EngineStoppedError(OsqueueError):
    """The engine stopped before the mutation was written. It was not applied."""

    tag = "EngineStoppedError"


class CommitIndeterminateError(OsqueueError):
    """The batch holding the mutation may or may not have been committed.

    Read the queue (or retry with an idempotent mutation, such as an enqueue with an
    explicit job id) to find out.
    """

    tag = "CommitIndeterminateError"


class CommitFailedError(OsqueueError):
    """The batch was certainly not applied. ``__cause__`` is the last storage error."""

    tag = "CommitFailedError"


class StateTooLargeError(OsqueueError):
    """The encoded state is larger than a limit allows.

    The engine no longer raises it: at ``max_state_bytes`` it rejects enqueues with
    ``Rejected(STATE_TOO_LARGE)`` and commits everything else. The class stays for callers
    that catch it.
    """

    tag = "StateTooLargeError"


class StateMissingError(OsqueueError):
    """``queue.json`` disappeared while the engine was running."""

    tag = "StateMissingError"


class EngineOverloadedError(OsqueueError):
    """More than ``max_pending`` mutations are waiting; the mutation was not accepted."""

    tag = "EngineOverloadedError"


# ----------------------------------------------------------------------------------------
# Configuration and statistics
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Limits and timings of one engine. Times are seconds.

    ``heartbeat_timeout``: a claimed job whose worker has not sent a heartbeat for longer is
    returned (or dead-lettered). ``lease_seconds``: how long other brokers wait after our
    last commit before they may take over. ``renew_interval``: idle time after which the
    engine commits an empty batch to renew the lease (default a third of the lease).
    ``renew_deadline``: the engine steps down when its last successful commit is older
    (default two thirds of the lease). ``max_batch_size`` counts jobs of an enqueue
    individually. ``max_retries`` bounds the write attempts of one batch.

    Retries back off exponentially with jitter: the n-th retry waits between half and all of
    ``min(backoff_max, base * 2 ** (n - 1))``. ``base`` is ``backoff_base`` after a CAS
    conflict and ``rate_limit_backoff_base`` after a retryable storage error (429 or 503),
    because a store that limits the write rate of one object (about one write per second
    on GCS) rejects most of a fast writer's retries. Start-up storage calls (the read, the
    create and the takeover write) retry retryable storage errors the same way.
    """

    key: str = DEFAULT_KEY
    heartbeat_timeout: float = 60.0
    lease_seconds: float = 15.0
    renew_interval: float | None = None
    renew_deadline: float | None = None
    max_batch_size: int = 1000
    max_pending: int = 100_000
    max_state_bytes: int = 64 * 1024 * 1024
    max_retries: int = 12
    backoff_base: float = 0.005
    rate_limit_backoff_base: float = 1.0
    backoff_max: float = 2.0
    max_recent_commits: int = DEFAULT_RECENT_COMMITS
    stop_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("heartbeat_timeout", "lease_seconds", "backoff_base",
                     "rate_limit_backoff_base", "backoff_max", "stop_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ConfigError(name, f"must be a positive number of seconds, got {value!r}",
                                  "10")
        for name in ("max_batch_size", "max_pending", "max_state_bytes", "max_retries",
                     "max_recent_commits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"must be an int >= 1, got {value!r}", "100")
        if self.renew_deadline_seconds >= self.lease_seconds:
            raise ConfigError(
                "renew_deadline",
                f"{self.renew_deadline_seconds} must be shorter than lease_seconds "
                f"{self.lease_seconds}, or another broker may take over while this one writes",
                str(self.lease_seconds * 2 / 3),
            )
        if self.renew_interval_seconds >= self.renew_deadline_seconds:
            raise ConfigError(
                "renew_interval",
                f"{self.renew_interval_seconds} must be shorter than the renew deadline "
                f"{self.renew_deadline_seconds}",
                str(self.lease_seconds / 3),
            )

    @property
    def renew_interval_seconds(self) -> float:
        return self.renew_interval if self.renew_interval is not None else self.lease_seconds / 3

    @property
    def renew_deadline_seconds(self) -> float:
        if self.renew_deadline is not None:
            return self.renew_deadline
        return self.lease_seconds * 2 / 3


@dataclass
class EngineStats:
    """Counters of one engine. Latencies are seconds on the event loop's clock."""

    commits: int = 0
    write_attempts: int = 0
    conflicts: int = 0
    concurrent_requests: int = 0
    indeterminate: int = 0
    rate_limited: int = 0
    reads: int = 0
    mutations: int = 0
    failed_batches: int = 0
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))
    commit_latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))

    def summary(self) -> dict[str, Any]:
        """Return the counters with mean and max of the recent batch sizes and latencies."""

        sizes = list(self.batch_sizes)
        latencies = sorted(self.commit_latencies)
        return {
            "commits": self.commits,
            "write_attempts": self.write_attempts,
            "conflicts": self.conflicts,
            "concurrent_requests": self.concurrent_requests,
            "indeterminate": self.indeterminate,
            "rate_limited": self.rate_limited,
            "reads": self.reads,
            "mutations": self.mutations,
            "failed_batches": self.failed_batches,
            "batch_size_mean": sum(sizes) / len(sizes) if sizes else 0.0,
            "batch_size_max": max(sizes, default=0),
            "commit_latency_p50": latencies[len(latencies) // 2] if latencies else 0.0,
            "commit_latency_max": latencies[-1] if latencies else 0.0,
        }


# How long, in units of rate_limit_backoff_base, the writer keeps spacing its writes after
# the last rate-limit response.
_RATE_LIMIT_MEMORY = 10

# Mutations of these exact types weigh 1 and go to the writer as they are.
_UNWEIGHTED_MUTATIONS = frozenset({spec.Claim, spec.Heartbeat, spec.Complete, spec.Fail})


# ----------------------------------------------------------------------------------------
# Waiting callers and write attempts
# ----------------------------------------------------------------------------------------
#
# Every ``submit`` or ``submit_many`` call queues two things: an entry, which is what the
# writer applies, and a waiter, which the caller awaits and the writer settles. An entry is
# one mutation (an ``EncodedEnqueue`` in place of an ``Enqueue``), or for ``submit_many`` a
# list of them, whose result is then the list of their results.
#
# A waiter has the interface of ``asyncio.Future`` that the writer needs: ``done()``,
# ``set_result`` and ``set_exception``. Under asyncio it is a future of the running loop;
# the other event loops get the classes below. A waiter is made and settled once per call,
# so it is the loop's cheapest primitive rather than an ``anyio.Event`` plus a separate
# record of the call. ``done()`` is also true for a waiter whose caller was cancelled while
# waiting, and the writer then leaves it alone.


class _TrioWaiter:
    """A waiter that reschedules the waiting trio task directly (``trio.lowlevel``)."""

    __slots__ = ("_abandoned", "_outcome", "_task")

    # trio and outcome are imported by _waiter_factory when the engine starts under trio,
    # so that asyncio users need neither.
    trio: Any = None
    outcome: Any = None

    def __init__(self) -> None:
        self._task: Any = None
        self._outcome: Any = None
        self._abandoned = False

    def done(self) -> bool:
        return self._outcome is not None or self._abandoned

    def set_result(self, result: Any) -> None:
        self._settle(self.outcome.Value(result))

    def set_exception(self, error: BaseException) -> None:
        self._settle(self.outcome.Error(error))

    def _settle(self, value: Any) -> None:
        if self.done():
            return
        self._outcome = value
        if self._task is not None:
            self.trio.lowlevel.reschedule(self._task, value)

    def _abort(self, raise_cancel: Any) -> Any:
        self._abandoned = True
        return self.trio.lowlevel.Abort.SUCCEEDED

    async def _wait(self) -> Any:
        if self._outcome is not None:
            await self.trio.lowlevel.checkpoint()
            return self._outcome.unwrap()
        self._task = self.trio.lowlevel.current_task()
        return await self.trio.lowlevel.wait_task_rescheduled(self._abort)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._wait().__await__()


class _EventWaiter:
    """A waiter built on ``anyio.Event``, for an event loop without a faster primitive."""

    __slots__ = ("_error", "_event", "_result", "_settled")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._settled = False
        self._result: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._settled

    def set_result(self, result: Any) -> None:
        if not self._settled:
            self._settled = True
            self._result = result
            self._event.set()

    def set_exception(self, error: BaseException) -> None:
        if not self._settled:
            self._settled = True
            self._error = error
            self._event.set()

    async def _wait(self) -> Any:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._result

    def __await__(self) -> Generator[Any, None, Any]:
        return self._wait().__await__()


def _waiter_factory(library: str | None) -> Callable[[], Any]:
    """Return the constructor of waiters for ``library``, the running event loop."""

    if library == "asyncio":
        loop = asyncio.get_running_loop()
        if type(loop).create_future is asyncio.BaseEventLoop.create_future:
            # The same future that method returns, without the Python method call.
            return functools.partial(asyncio.Future, loop=loop)
        return loop.create_future
    if library == "trio":
        import outcome
        import trio
        import trio.lowlevel

        _TrioWaiter.trio = trio
        _TrioWaiter.outcome = outcome
        return _TrioWaiter
    return _EventWaiter


def _current_async_library() -> str | None:
    try:
        import sniffio
    except ModuleNotFoundError:
        sniffio = None
    if sniffio is not None:
        try:
            return sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            return None
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return "asyncio"


def _stop_cause(error: BaseException) -> str:
    """Describe why the writer ended, for the message of a batch whose outcome is unknown."""

    if isinstance(error, EngineStoppedError):
        return "was stopped and cancelled its batch after stop_timeout"
    if isinstance(error, NotLeaderError):
        return "stepped down as leader"
    return f"stopped on {type(error).__name__}"


def _weight(entry: Any) -> int:
    """Return the weight of an entry: jobs of enqueues count individually."""

    if type(entry) is list:
        return sum(_weight(item) for item in entry)
    if type(entry) is EncodedEnqueue:
        return len(entry.enqueue.jobs)
    return 1


@dataclass(slots=True)
class _Calls:
    """The calls of one batch: ``entries[i]`` is applied for the caller of ``waiters[i]``."""

    entries: list[Any]
    waiters: list[Any]

    def mutations(self) -> list[Any]:
        """Return the mutations in order, those of ``submit_many`` calls inline."""

        mutations: list[Any] = []
        append = mutations.append
        for entry in self.entries:
            if type(entry) is list:
                mutations.extend(entry)
            else:
                append(entry)
        return mutations

    def succeed(self, results: list[spec.Result]) -> None:
        """Give every caller its results (``results`` is in the order of ``mutations``)."""

        position = 0
        for entry, waiter in zip(self.entries, self.waiters, strict=True):
            if type(entry) is list:
                end = position + len(entry)
                result: Any = results[position:end]
                position = end
            else:
                result = results[position]
                position += 1
            if not waiter.done():
                waiter.set_result(result)
        if position != len(results):
            raise AssertionError(f"{len(results)} results for {position} mutations")

    def fail(self, error: BaseException) -> None:
        """Give every caller that has no result yet ``error``."""

        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(error)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """The bytes written on top of base ``sequence`` with token ``expected``."""

    sequence: int
    expected: StorageVersion
    state: QueueState
    data: bytes
    results: list[spec.Result]


class _BatchAbort(Exception):
    """Ends the commit of one batch; ``error`` goes to every caller of that batch."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Fatal(Exception):
    """Stops the engine; ``error`` goes to every caller that has no result yet."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


# ----------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------


class GroupCommitEngine:
    """The group-commit writer of one queue. Use it as an async context manager.

    Entering acquires the broker lease (``osqueue.election.acquire``; ``wait_for_lease``
    chooses between waiting and ``LeaseHeldError``) and starts the writer task; leaving
    stops it. ``clock`` returns seconds (wall time by default; every broker of a queue must
    use comparable clocks). ``rng`` drives commit ids and backoff jitter; pass a seeded
    ``random.Random`` for reproducible runs.
    """

    def __init__(
        self,
        storage: StorageBackend,
        *,
        address: str,
        config: EngineConfig | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        wait_for_lease: bool = False,
    ) -> None:
        if not isinstance(address, str) or not address:
            raise ConfigError("address", f"must be a non-empty string, got {address!r}",
                              "broker-1.internal:8080")
        if rng is None:
            seed = secrets.randbits(64)
            logger.info("engine %r uses random seed %d", address, seed)
            rng = random.Random(seed)
        self.storage = storage
        self.address = address
        self.config = config or EngineConfig()
        self.stats = EngineStats()
        self._clock = clock
        self._rng = rng
        self._wait_for_lease = wait_for_lease
        self._instance = f"{rng.getrandbits(64):016x}"
        self._commit_number = 0

        self._epoch: int | None = None
        self._current: tuple[QueueState, StorageVersion] | None = None
        self._renewed_at = -math.inf
        self._last_commit_loop_time = 0.0

        self._pending: deque[Any] = deque()
        """Entries of the calls waiting for the next batch, oldest first."""
        self._waiters: deque[Any] = deque()
        """Waiters of the same calls, in the same order."""
        self._pending_count = 0
        """Mutations in ``_pending`` (a ``submit_many`` call adds all of its own)."""
        self._pending_weight = 0
        """Total weight of ``_pending``."""
        self._new_waiter: Callable[[], Any] = _EventWaiter
        self._wake = anyio.Event()
        self._writer_idle = False
        """True while the writer waits on ``_wake`` for work."""
        self._stopping = False
        self._closed: BaseException | None = None
        self._writer_done = anyio.Event()
        self._writer_scope: anyio.CancelScope | None = None
        self._in_doubt = False
        """True while a write of the current batch may have landed unseen."""
        self._rate_limited_at = -math.inf
        """Event loop time of the last retryable storage error (429, 503) of a write."""
        self._last_write_at = -math.inf
        """Event loop time of the last successful write."""
        self._task_group: anyio.abc.TaskGroup | None = None

    # Life cycle -------------------------------------------------------------------------

    @property
    def epoch(self) -> int | None:
        """The epoch this engine leads, or None before it acquired the lease."""

        return self._epoch

    @property
    def is_leader(self) -> bool:
        """The engine's own belief that it leads: it acquired the lease and has not stopped.

        The belief is only as fresh as the engine's last read or write. Another broker may
        have taken over since, and the engine learns of it only on its next read (after a
        CAS conflict, for example), when it steps down. Commits are safe regardless,
        because each one is fenced by the version token and the epoch.
        """

        return self._epoch is not None and self._closed is None

    @property
    def state(self) -> QueueState | None:
        """The last state this engine wrote or read (None while unknown)."""

        return None if self._current is None else self._current[0]

    async def __aenter__(self) -> Self:
        leadership = await acquire(
            self.storage,
            key=self.config.key,
            address=self.address,
            clock=self._clock,
            lease_seconds=self.config.lease_seconds,
            commit_id=self._next_commit_id(),
            max_recent_commits=self.config.max_recent_commits,
            wait=self._wait_for_lease,
            max_retries=self.config.max_retries,
            retry_delay=functools.partial(self._backoff_delay, rate_limited=True),
        )
        self._epoch = leadership.epoch
        self._current = (leadership.state, leadership.version)
        self._renewed_at = leadership.state.broker.heartbeat_at
        self._last_commit_loop_time = anyio.current_time()

        self._new_waiter = _waiter_factory(_current_async_library())
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._run_writer)
        logger.info("engine %r started in epoch %d", self.address, self._epoch)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task_group is not None
        try:
            await self.stop()
        finally:
            # The task group must be exited even when stop() was cancelled, or the cancel
            # scopes of the caller would be left out of order.
            if not self._writer_done.is_set():
                self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)

    async def stop(self) -> None:
        """Stop accepting mutations, finish the batch in flight, and reject the rest.

        Pending mutations get ``EngineStoppedError``. A batch still in flight after
        ``stop_timeout`` is cancelled; its callers get ``CommitIndeterminateError`` if one
        of its writes may have landed, otherwise ``EngineStoppedError``.
        """

        if not self._stopping:
            logger.info("engine %r stopping", self.address)
        self._stopping = True
        self._wake.set()
        with anyio.move_on_after(self.config.stop_timeout):
            await self._writer_done.wait()
        if not self._writer_done.is_set() and self._writer_scope is not None:
            logger.warning("engine %r: batch still in flight at stop; cancelling", self.address)
            self._writer_scope.cancel()
            await self._writer_done.wait()

    # Submitting -------------------------------------------------------------------------

    async def submit(self, mutation: spec.Mutation) -> spec.Result:
        """Commit ``mutation`` and return its result once the commit has landed.

        Returns a ``spec.queue`` result; a mutation that the queue rejects (unknown job,
        stale claim token, duplicate id, state too large) returns ``Rejected``. Raises
        ``TypeError`` or ``ValueError`` for a mutation that cannot be committed at all,
        ``NotLeaderError``, ``EngineStoppedError``, ``EngineOverloadedError``,
        ``CommitFailedError`` (not applied) or ``CommitIndeterminateError`` (outcome
        unknown).

        NOTE: cancelling the caller does not withdraw the mutation; it may still be
        committed.
        """

        if (
            type(mutation) in _UNWEIGHTED_MUTATIONS
            and self._closed is None
            and not self._stopping
            and self._epoch is not None
            and self._pending_count < self.config.max_pending
        ):
            # The common case, inline because it runs once per mutation: a running engine
            # with room, and a mutation that needs no encoding (see _enqueue_call).
            waiter = self._new_waiter()
            self._pending.append(mutation)
            self._waiters.append(waiter)
            self._pending_count += 1
            self._pending_weight += 1
            if self._writer_idle:
                self._writer_idle = False
                self._wake.set()
            return await waiter

        self._check_accepting(1)
        entry, weight = self._prepare(mutation)
        waiter = self._new_waiter()
        self._enqueue_call(entry, waiter, 1, weight)
        return await waiter

    async def submit_many(self, mutations: Sequence[spec.Mutation]) -> list[spec.Result]:
        """Commit ``mutations`` in one batch and return their results, in order.

        The mutations are applied in the given order, next to each other, in the same
        commit: they land together or not at all, and the caller waits once for all of
        them. Each gets its own result, as from ``submit`` (a rejected one does not stop
        the others). Their total weight (every job of an enqueue counts 1, every other
        mutation 1) must be at most ``max_batch_size``. Raises the errors of ``submit``
        for the whole list; ``CommitIndeterminateError`` means that all of them or none
        were committed. An empty list returns an empty list without a commit.

        NOTE: cancelling the caller does not withdraw the mutations; they may still be
        committed.
        """

        if not isinstance(mutations, (list, tuple)):
            mutations = list(mutations)
        self._check_accepting(len(mutations))
        if not mutations:
            return []
        prepared = []
        total = 0
        for mutation in mutations:
            if type(mutation) in _UNWEIGHTED_MUTATIONS:
                prepared.append(mutation)
                total += 1
            else:
                item, weight = self._prepare(mutation)
                prepared.append(item)
                total += weight
        if total > self.config.max_batch_size:
            raise ValueError(
                f"submit_many of {len(mutations)} mutations has weight {total} (jobs of "
                f"enqueues count individually), more than max_batch_size "
                f"{self.config.max_batch_size}; split it into smaller calls"
            )
        waiter = self._new_waiter()
        self._enqueue_call(prepared, waiter, len(prepared), total)
        return await waiter

    async def enqueue(self, job_type: str, payload: Any = None, **options: Any) -> spec.Result:
        """Enqueue one job; ``options`` are ``max_attempts`` and ``id`` of ``NewJob``."""

        return await self.submit(spec.Enqueue.one(job_type, payload, **options))

    def _check_accepting(self, count: int) -> None:
        """Raise unless the engine runs and has room for ``count`` more mutations."""

        if self._closed is not None:
            raise self._closed
        if self._stopping or self._epoch is None:
            raise EngineStoppedError(
                f"engine {self.address!r} is not running; start it with 'async with engine'")
        if self._pending_count + count > self.config.max_pending:
            raise EngineOverloadedError(
                f"{self._pending_count} mutations are waiting, the maximum is "
                f"{self.config.max_pending}; retry later or raise max_pending"
            )

    def _prepare(self, mutation: spec.Mutation) -> tuple[spec.Mutation | EncodedEnqueue, int]:
        """Validate ``mutation``; return what the writer applies and its weight."""

        if not isinstance(mutation, spec.MUTATION_TYPES):
            raise TypeError(
                f"not a queue mutation: {mutation!r}; use Enqueue, Claim, Heartbeat, Complete "
                "or Fail from osqueue.spec.queue"
            )
        if not isinstance(mutation, spec.Enqueue):
            return mutation, 1
        weight = len(mutation.jobs)
        if weight > self.config.max_batch_size:
            raise ValueError(
                f"an enqueue of {weight} jobs exceeds max_batch_size "
                f"{self.config.max_batch_size}; split it into smaller enqueues"
            )
        # Encode payloads once here, so a bad payload fails its caller alone.
        return EncodedEnqueue.encode(mutation), weight

    def _enqueue_call(self, entry: Any, waiter: Any, count: int, weight: int) -> None:
        # The caller checked that the engine accepts mutations, with no await since, so the
        # writer is still running and will settle this call.
        self._pending.append(entry)
        self._waiters.append(waiter)
        self._pending_count += count
        self._pending_weight += weight
        if self._writer_idle:
            # Only the first mutation after the writer went idle needs to wake it.
            self._writer_idle = False
            self._wake.set()

    # Writer -----------------------------------------------------------------------------

    async def _run_writer(self) -> None:
        batch: _Calls | None = None
        terminal: BaseException = EngineStoppedError(
            f"engine {self.address!r} stopped before the mutation was written; it was not "
            "applied")
        try:
            with anyio.CancelScope() as scope:
                self._writer_scope = scope
                while not self._stopping:
                    await self._wait_for_work()
                    await self._pace_after_rate_limit()
                    if self._stopping:
                        break
                    batch = self._take_batch()
                    self._in_doubt = False
                    await self._commit(batch)
                    batch = None
                await self._release_lease()
        except _Fatal as fatal:
            terminal = fatal.error
            logger.error("engine %r stopped: %s", self.address, fatal.error)
        except Exception as error:
            # A bug, not a storage outcome: stop, and hand the error to every caller.
            terminal = error
            logger.exception("engine %r writer failed", self.address)
        finally:
            self._closed = self._closed or terminal
            in_flight_error: BaseException = terminal
            if self._in_doubt:
                in_flight_error = CommitIndeterminateError(
                    f"engine {self.address!r} {_stop_cause(terminal)} while a write of this "
                    "batch may have landed, so the outcome of the batch is unknown; read the "
                    "queue to find out")
                in_flight_error.__cause__ = terminal
            if batch is not None:
                batch.fail(in_flight_error)
            _Calls(list(self._pending), list(self._waiters)).fail(terminal)
            self._pending.clear()
            self._waiters.clear()
            self._pending_count = 0
            self._pending_weight = 0
            self._writer_done.set()
            logger.info("engine %r writer exited", self.address)

    async def _wait_for_work(self) -> None:
        while not self._pending and not self._stopping:
            due = self._last_commit_loop_time + self.config.renew_interval_seconds
            delay = due - anyio.current_time()
            if delay <= 0:
                return
            self._writer_idle = True
            try:
                with anyio.move_on_after(delay):
                    await self._wake.wait()
            finally:
                self._writer_idle = False
            self._wake = anyio.Event()

    async def _release_lease(self) -> None:
        """Commit a state without a leader address, so that any broker can take over at once.

        Runs at a clean stop. The epoch stays, so this engine's fence no longer matches and
        the next broker's takeover writes ``epoch + 1`` as usual. Nothing is released when
        the state read shows another leader, or when the renew deadline has passed (the
        lease may already belong to someone else). A failed release is logged and the lease
        then lapses after ``lease_seconds``.
        """

        if self._epoch is None:
            return
        commit_id = self._next_commit_id()
        try:
            state, version = await self._known_state(commit_id, set())
            if not holds_lease(state, self.address, self._epoch):
                logger.info("engine %r: lease already taken by %r in epoch %d; nothing to "
                            "release", self.address, state.broker.address, state.broker.epoch)
                return
            self._check_deadline()
        except (_BatchAbort, _Fatal) as error:
            logger.info("engine %r: lease not released: %s", self.address,
                        getattr(error, "error", error))
            return

        now = self._clock()
        broker = BrokerRecord(address=None, epoch=self._epoch, heartbeat_at=now,
                              lease_seconds=self.config.lease_seconds)
        outcome = apply_batch(
            state, [], now=now, commit_id=commit_id,
            heartbeat_timeout=self.config.heartbeat_timeout, broker=broker,
            max_recent_commits=self.config.max_recent_commits,
        )
        try:
            self.stats.write_attempts += 1
            new_version = await self.storage.write(
                self.config.key, encode_state(outcome.state), version)
        except (CASConflictError, IndeterminateWriteError, StorageBackendError) as error:
            logger.warning("engine %r: releasing the lease of epoch %d failed (%s); it lapses "
                           "after %s s", self.address, self._epoch, error,
                           self.config.lease_seconds)
            return
        self._current = (outcome.state, new_version)
        logger.info("engine %r released the lease of epoch %d", self.address, self._epoch)

    async def _pace_after_rate_limit(self) -> None:
        """Space writes apart while the store limits our write rate.

        After a 429 or 503, writing again right after each success would be rejected most
        of the time. So for ``_RATE_LIMIT_MEMORY`` spacings after the last such response, the
        writer waits (collecting mutations into the coming batch) until one spacing,
        ``min(rate_limit_backoff_base, backoff_max)``, has passed since its last successful
        write.
        """

        spacing = min(self.config.rate_limit_backoff_base, self.config.backoff_max)
        now = anyio.current_time()
        if now - self._rate_limited_at > _RATE_LIMIT_MEMORY * spacing:
            return
        delay = self._last_write_at + spacing - now
        if delay > 0:
            await anyio.sleep(delay)

    def _take_batch(self) -> _Calls:
        if self._pending_weight <= self.config.max_batch_size:
            batch = _Calls(list(self._pending), list(self._waiters))
            self._pending.clear()
            self._waiters.clear()
            self._pending_count = 0
            self._pending_weight = 0
            return batch

        batch = _Calls([], [])
        weight = 0
        count = 0
        limit = self.config.max_batch_size
        while self._pending:
            following = _weight(self._pending[0])
            if batch.entries and weight + following > limit:
                break
            entry = self._pending.popleft()
            batch.entries.append(entry)
            batch.waiters.append(self._waiters.popleft())
            weight += following
            count += len(entry) if type(entry) is list else 1
        self._pending_count -= count
        self._pending_weight -= weight
        return batch

    def _next_commit_id(self) -> str:
        self._commit_number += 1
        return f"{self._instance}-{self._commit_number}"

    # One batch --------------------------------------------------------------------------

    async def _commit(self, batch: _Calls) -> None:
        """Commit ``batch`` and settle every caller in it (see the module docstring)."""

        commit_id = self._next_commit_id()
        started = anyio.current_time()
        try:
            attempt = await self._commit_attempts(batch.mutations(), commit_id)
        except _BatchAbort as abort:
            self.stats.failed_batches += 1
            logger.warning("engine %r: batch %s failed: %s", self.address, commit_id, abort.error)
            batch.fail(abort.error)
            if not batch.entries:
                # A failed lease renewal is retried after a pause, not in a tight loop; the
                # renew deadline ends the retries.
                pause = min(self.config.backoff_max, self.config.renew_interval_seconds / 4)
                self._last_commit_loop_time = (
                    anyio.current_time() - self.config.renew_interval_seconds + pause)
            return

        self.stats.commits += 1
        self.stats.mutations += len(attempt.results)
        self.stats.batch_sizes.append(len(attempt.results))
        self.stats.commit_latencies.append(anyio.current_time() - started)
        self._renewed_at = attempt.state.broker.heartbeat_at
        self._last_commit_loop_time = anyio.current_time()
        batch.succeed(attempt.results)

    async def _commit_attempts(self, mutations: list[Any], commit_id: str) -> _Attempt:
        attempts: dict[int, _Attempt] = {}
        uncertain: set[int] = set()
        last_error: BaseException | None = None

        for retry in range(self.config.max_retries + 1):
            if retry:
                await self._backoff(retry, commit_id, last_error)
            self._check_deadline()
            state, version = await self._known_state(commit_id, uncertain)

            landed = state.find_commit(commit_id) if uncertain else None
            if landed is not None:
                logger.info("engine %r: batch %s found committed at sequence %d",
                            self.address, commit_id, landed.sequence)
                return attempts[landed.sequence - 1]

            resend = self._check_uncertain(state, version, commit_id, uncertain, attempts)
            self._in_doubt = bool(uncertain)
            self._check_fence(state, uncertain)
            attempt = resend or self._build_attempt(state, version, mutations, commit_id)
            attempts[attempt.sequence] = attempt

            try:
                self.stats.write_attempts += 1
                self._in_doubt = True
                new_version = await self.storage.write(
                    self.config.key, attempt.data, attempt.expected)
            except CASConflictError as error:
                self._in_doubt = bool(uncertain)
                last_error = error
                self.stats.conflicts += 1
                if error.retry_same_request:
                    self.stats.concurrent_requests += 1
                else:
                    self._current = None
                continue
            except IndeterminateWriteError as error:
                last_error = error
                self.stats.indeterminate += 1
                uncertain.add(attempt.sequence)
                self._current = None
                continue
            except StorageBackendError as error:
                self._in_doubt = bool(uncertain)
                last_error = error
                if not error.retryable:
                    raise _BatchAbort(self._not_applied(error, uncertain)) from error
                self.stats.rate_limited += 1
                self._rate_limited_at = anyio.current_time()
                continue

            self._last_write_at = anyio.current_time()
            self._current = (attempt.state, new_version)
            return attempt

        raise _BatchAbort(self._not_applied(
            CommitFailedError(
                f"batch {commit_id} was not committed after {self.config.max_retries + 1} "
                f"write attempts; last error: {last_error}"),
            uncertain,
        ))

    async def _known_state(
        self, commit_id: str, uncertain: set[int]
    ) -> tuple[QueueState, StorageVersion]:
        if self._current is not None:
            return self._current
        try:
            self.stats.reads += 1
            read = await self.storage.read(self.config.key)
        except StorageBackendError as error:
            raise _BatchAbort(self._not_applied(error, uncertain)) from error
        if read is None:
            raise _Fatal(StateMissingError(
                f"{self.config.key!r} no longer exists; the engine will not recreate it"))
        try:
            state = decode_state(read.data)
        except OsqueueError as error:
            raise _Fatal(error) from error
        self._current = (state, read.version)
        return self._current

    def _check_uncertain(
        self,
        state: QueueState,
        version: StorageVersion,
        commit_id: str,
        uncertain: set[int],
        attempts: dict[int, _Attempt],
    ) -> _Attempt | None:
        """Prove uncertain attempts absent from ``state``; return the one to resend, if any.

        An attempt on base ``s`` is absent for good when another commit took sequence
        ``s + 1``, so it leaves ``uncertain``. An attempt on the current base and version
        may still land and is sent again. Raises ``_BatchAbort`` with
        ``CommitIndeterminateError`` when an attempt is neither found nor proven absent.
        """

        resend = None
        for base in sorted(uncertain):
            if state.sequence == base and version == attempts[base].expected:
                resend = attempts[base]
                continue
            successor = state.commit_at(base + 1) if state.sequence > base else None
            if successor is None or successor.commit_id == commit_id:
                raise _BatchAbort(CommitIndeterminateError(
                    f"batch {commit_id}: a write on sequence {base} had an unknown outcome "
                    f"and the state (sequence {state.sequence}) no longer records which "
                    "commit followed it"))
            uncertain.discard(base)
        return resend

    def _check_fence(self, state: QueueState, uncertain: set[int]) -> None:
        if not holds_lease(state, self.address, self._epoch):
            error = NotLeaderError(
                f"broker {self.address!r} of epoch {self._epoch} was replaced by "
                f"{state.broker.address!r} in epoch {state.broker.epoch}; the mutation was "
                "not applied, submit it to the current leader")
            raise _Fatal(error)
        self._check_deadline()

    def _check_deadline(self) -> None:
        elapsed = self._clock() - self._renewed_at
        if elapsed > self.config.renew_deadline_seconds:
            raise _Fatal(NotLeaderError(
                f"broker {self.address!r} of epoch {self._epoch} last renewed its lease "
                f"{elapsed:.3f} s ago, past its renew deadline of "
                f"{self.config.renew_deadline_seconds} s; it stepped down and did not apply "
                "the mutation"))

    def _build_attempt(
        self,
        state: QueueState,
        version: StorageVersion,
        mutations: list[spec.Mutation],
        commit_id: str,
    ) -> _Attempt:
        now = self._clock()
        broker = BrokerRecord(
            address=self.address, epoch=self._epoch, heartbeat_at=now,
            lease_seconds=self.config.lease_seconds,
        )

        def build(rejected: dict[int, spec.Rejected] | None) -> _Attempt:
            outcome = apply_batch(
                state, mutations, now=now, commit_id=commit_id,
                heartbeat_timeout=self.config.heartbeat_timeout, broker=broker,
                max_recent_commits=self.config.max_recent_commits, rejected=rejected,
            )
            if len(outcome.results) != len(mutations):
                raise AssertionError(
                    f"{len(outcome.results)} results for {len(mutations)} mutations")
            data = encode_state(outcome.state)
            return _Attempt(state.sequence, version, outcome.state, data, outcome.results)

        attempt = build(None)
        if len(attempt.data) <= self.config.max_state_bytes:
            return attempt

        # Enqueues are what grows the state: reject them and commit the rest.
        size = len(attempt.data)
        limit = self.config.max_state_bytes
        rejection = spec.Rejected(
            spec.RejectReason.STATE_TOO_LARGE,
            f"the state would be {size} bytes with this batch, more than max_state_bytes "
            f"{limit}; complete or remove jobs, or raise the limit",
        )
        rejected = {
            index: rejection for index, mutation in enumerate(mutations)
            if isinstance(mutation, (spec.Enqueue, EncodedEnqueue))
        }
        attempt = build(rejected)
        if len(attempt.data) > limit:
            # Claims, completions, failures, purges, expiry and lease renewal must commit
            # even at the limit, or a full queue could never drain and its leader would
            # step down for good. Their growth per mutation is bounded (a failure's error
            # text is cut to spec.MAX_ERROR_CHARS).
            # NOTE: a Claim's worker name is not length-limited, so claims with very long
            # worker names can still push the state well past the limit.
            logger.warning(
                "engine %r: batch %s commits a state of %d bytes, more than max_state_bytes "
                "%d, with its %d enqueues rejected; purge dead letters or raise the limit",
                self.address, commit_id, len(attempt.data), limit, len(rejected))
        return attempt

    def _not_applied(self, error: BaseException, uncertain: set[int]) -> BaseException:
        """Return ``error`` for callers, or an indeterminate error if a write may have landed."""

        if not uncertain:
            return error
        indeterminate = CommitIndeterminateError(
            f"the batch had a write with an unknown outcome and then failed: {error}")
        indeterminate.__cause__ = error
        return indeterminate

    def _backoff_delay(self, retry: int, *, rate_limited: bool) -> float:
        """Return the jittered delay before retry number ``retry`` (1 for the first)."""

        base = self.config.rate_limit_backoff_base if rate_limited else self.config.backoff_base
        cap = min(self.config.backoff_max, base * 2 ** (retry - 1))
        return cap / 2 + self._rng.uniform(0, cap / 2)

    async def _backoff(self, retry: int, commit_id: str, error: BaseException | None) -> None:
        rate_limited = isinstance(error, StorageBackendError) and error.retryable
        delay = self._backoff_delay(retry, rate_limited=rate_limited)
        logger.info("engine %r: retry %d of batch %s in %.4f s after %s",
                    self.address, retry, commit_id, delay, error)
        await anyio.sleep(delay)


__all__ = [
    "CommitFailedError",
    "CommitIndeterminateError",
    "EngineConfig",
    "EngineOverloadedError",
    "EngineStats",
    "EngineStoppedError",
    "GroupCommitEngine",
    "LeaseHeldError",
    "NotLeaderError",
    "StateMissingError",
    "StateTooLargeError",
]
