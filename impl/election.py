"""Broker election: who may write ``queue.json``, fenced by an epoch stored in the state.

The state's ``broker`` record contains the leader's address, its ``epoch`` and the time of its
last commit (``heartbeat_at``). Rules:

- A lease is live while ``now - heartbeat_at <= lease_seconds`` (the lease recorded by the
  leader). A candidate may take over only a missing or expired lease, and only with a CAS
  that writes ``epoch + 1``; of two candidates reading the same state, one CAS wins.
- Every commit of the leader is fenced by its epoch: the engine writes only on top of a
  state whose broker record still names its own address and epoch. A leader that reads a
  newer epoch, or another address, steps down at once and acknowledges nothing more.
- A leader renews its lease with every commit (an empty commit when idle). One that has not
  renewed within its renew deadline (shorter than the lease) steps down by itself rather
  than write on a lease that others may already consider expired.
- A leader that stops cleanly releases its lease with a last commit whose broker record
  has no address and the same epoch, so another broker (or a restart) takes over at once.
- A deposed broker never takes the lease back by itself. It must be restarted and go
  through ``acquire`` again, which requires the lease to have expired.

Time comes from the injected clock; all brokers of one queue must use clocks that agree to
within a small fraction of the lease (wall clocks synchronised by NTP, for example).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import msgspec
from osqueue.errors import (
    CASConflictError,
    IndeterminateWriteError,
    OsqueueError,
    StorageBackendError,
)
from osqueue.mutations import apply_batch
from osqueue.state import (
    BrokerRecord,
    CommitRecord,
    QueueState,
    StateDecodeError,
    decode_state,
    encode_state,
    initial_state,
)
from osqueue.storage.base import StorageBackend, StorageVersion

logger = logging.getLogger(__name__)

MAX_ACQUIRE_ROUNDS = 20

_T = TypeVar("_T")


class LeaseHeldError(OsqueueError):
    """Another broker has a live lease, which lapses at ``expires_at`` unless renewed."""

    tag = "LeaseHeldError"

    def __init__(self, address: str | None, epoch: int, expires_at: float) -> None:
        self.address = address
        self.epoch = epoch
        self.expires_at = expires_at
        super().__init__(
            f"broker {address!r} holds the lease of epoch {epoch} until {expires_at:.3f} "
            "unless it renews; retry after that time or pass wait=True"
        )


class NotLeaderError(OsqueueError):
    """This broker is not, or no longer, the leader. The mutation was not applied."""

    tag = "NotLeaderError"


class ElectionError(OsqueueError):
    """Taking over the lease failed for a reason other than a live leader."""

    tag = "ElectionError"


@dataclass(frozen=True, slots=True)
class Leadership:
    """A won election: the epoch, and the state and version token it was written as."""

    address: str
    epoch: int
    state: QueueState
    version: StorageVersion


def lease_expires_at(broker: BrokerRecord) -> float:
    return broker.heartbeat_at + broker.lease_seconds


def lease_expired(broker: BrokerRecord, now: float) -> bool:
    """True when no broker has the lease at ``now`` (no address, or no renewal in time)."""

    return broker.address is None or now - broker.heartbeat_at > broker.lease_seconds


def holds_lease(state: QueueState, address: str, epoch: int) -> bool:
    """True when ``state`` names ``address`` as the leader of ``epoch`` (the fence check)."""

    return state.broker.epoch == epoch and state.broker.address == address


def take_over(
    state: QueueState, *, address: str, now: float, lease_seconds: float, commit_id: str,
    max_recent_commits: int,
) -> QueueState:
    """Return ``state`` with ``address`` as leader of the next epoch (jobs unchanged)."""

    broker = BrokerRecord(
        address=address, epoch=state.broker.epoch + 1, heartbeat_at=now,
        lease_seconds=lease_seconds,
    )
    return apply_batch(
        state, [], now=now, commit_id=commit_id, heartbeat_timeout=math.inf, broker=broker,
        max_recent_commits=max_recent_commits,
    ).state


async def acquire(
    storage: StorageBackend,
    *,
    key: str,
    address: str,
    clock: Callable[[], float],
    lease_seconds: float,
    commit_id: str,
    max_recent_commits: int,
    wait: bool = False,
    max_retries: int = 0,
    retry_delay: Callable[[int], float] | None = None,
) -> Leadership:
    """Become the leader of the queue at ``key``, creating the queue if it does not exist.

    Raises ``LeaseHeldError`` while another broker's lease is live (or waits for it to
    lapse when ``wait`` is True), ``StateDecodeError`` for a ``queue.json`` that does not
    decode (it is never overwritten), and ``ElectionError`` after repeated failures.
    A retryable ``StorageBackendError`` (429, 503) of a read, create or write is retried up
    to ``max_retries`` times, after ``retry_delay(n)`` seconds before the n-th retry
    (default 0 retries); the last such error, or any other, is raised.
    """

    def retrying(operation: str, call: Callable[[], Awaitable[_T]]) -> Awaitable[_T]:
        return _retry_storage(operation, call, address=address, key=key,
                              max_retries=max_retries, retry_delay=retry_delay)

    lost_races = 0
    while lost_races < MAX_ACQUIRE_ROUNDS:
        read = await retrying("read", lambda: storage.read(key))
        now = clock()
        if read is None:
            won = await _create(storage, key, address, now, lease_seconds, commit_id, retrying)
        else:
            state = decode_state(read.data)
            if not lease_expired(state.broker, now):
                lease_error = LeaseHeldError(
                    state.broker.address, state.broker.epoch, lease_expires_at(state.broker))
                if not wait:
                    raise lease_error
                logger.info("broker %r waits for the lease to lapse: %s", address, lease_error)
                await anyio.sleep(max(lease_error.expires_at - now, 0.0) + lease_seconds / 20)
                continue
            new_state = take_over(
                state, address=address, now=now, lease_seconds=lease_seconds,
                commit_id=commit_id, max_recent_commits=max_recent_commits,
            )
            won = await _write(storage, key, new_state, read.version, commit_id, address,
                               retrying)
        if won is not None:
            logger.info(
                "broker %r leads epoch %d of %r", address, won[0].broker.epoch, key)
            return Leadership(address, won[0].broker.epoch, won[0], won[1])
        lost_races += 1
        logger.info("broker %r lost election race %d; reading again", address, lost_races)
        await anyio.sleep(lease_seconds / 100)
    raise ElectionError(
        f"broker {address!r} lost {MAX_ACQUIRE_ROUNDS} races to take over {key!r}; "
        "check the storage backend and retry"
    )


async def _retry_storage(
    operation: str,
    call: Callable[[], Awaitable[_T]],
    *,
    address: str,
    key: str,
    max_retries: int,
    retry_delay: Callable[[int], float] | None,
) -> _T:
    """Await ``call()``, retrying a retryable ``StorageBackendError`` (never applied)."""

    retry = 0
    while True:
        try:
            return await call()
        except StorageBackendError as error:
            if not error.retryable or retry >= max_retries or retry_delay is None:
                raise
            retry += 1
            delay = retry_delay(retry)
            logger.warning("broker %r: %s of %r failed (%s); retry %d of %d in %.3f s",
                           address, operation, key, error, retry, max_retries, delay)
            await anyio.sleep(delay)


async def _create(
    storage: StorageBackend, key: str, address: str, now: float, lease_seconds: float,
    commit_id: str, retrying: Callable[..., Awaitable],
) -> tuple[QueueState, StorageVersion] | None:
    state = initial_state(address=address, epoch=1, now=now, lease_seconds=lease_seconds)
    state = _with_commit(state, commit_id)
    data = encode_state(state)
    try:
        version = await retrying("create", lambda: storage.create_if_not_exists(key, data))
    except CASConflictError:
        return None
    except IndeterminateWriteError:
        return await _settle(storage, key, commit_id, address, retrying)
    return state, version


async def _write(
    storage: StorageBackend, key: str, state: QueueState, expected: StorageVersion,
    commit_id: str, address: str, retrying: Callable[..., Awaitable],
) -> tuple[QueueState, StorageVersion] | None:
    data = encode_state(state)
    try:
        version = await retrying("takeover write", lambda: storage.write(key, data, expected))
    except CASConflictError:
        return None
    except IndeterminateWriteError:
        return await _settle(storage, key, commit_id, address, retrying)
    return state, version


async def _settle(
    storage: StorageBackend, key: str, commit_id: str, address: str,
    retrying: Callable[..., Awaitable],
) -> tuple[QueueState, StorageVersion] | None:
    """Read back after an unknown outcome: won only if our commit id is in the state.

    Another broker could have taken over after our write landed, so the state read back
    must also still name ``address`` as the leader.
    """

    read = await retrying("read back", lambda: storage.read(key))
    if read is None:
        return None
    state = decode_state(read.data)
    record = state.find_commit(commit_id)
    if record is None or state.broker.address != address:
        return None
    return state, read.version


def _with_commit(state: QueueState, commit_id: str) -> QueueState:
    return msgspec.structs.replace(
        state, recent_commits=[CommitRecord(state.sequence, commit_id)])


__all__ = [
    "ElectionError",
    "Leadership",
    "LeaseHeldError",
    "NotLeaderError",
    "StateDecodeError",
    "acquire",
    "holds_lease",
    "lease_expired",
    "lease_expires_at",
    "take_over",
]
