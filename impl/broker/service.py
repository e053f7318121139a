"""The broker: runs the election and serves queue operations through the leader's engine.

A broker is always a candidate. While another broker's lease is live it is a *standby*. A
standby reads ``queue.json`` every heartbeat interval, and right after the lease it saw
would expire. It serves read-only views from the state it last read and rejects mutations
with ``NotLeader`` naming the leader. When it reads a missing queue or an expired lease it
starts a ``GroupCommitEngine``, whose ``acquire`` takes the lease with a CAS on the epoch.
Of several standbys one wins and the others stay standbys.

A leader serves mutations through its engine. When the engine steps down (it read a newer
epoch, or could not renew its lease within the renew deadline), every mutation fails with
``NotLeader`` from that moment on, and the broker becomes a standby again: it leads again
only by winning a new election, which needs the lease to have expired.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from osqueue.broker.config import BrokerSettings
from osqueue.broker.pacing import PacedStorage
from osqueue.broker.wire import ApiError
from osqueue.election import lease_expired, lease_expires_at
from osqueue.engine import (
    CommitFailedError,
    CommitIndeterminateError,
    EngineOverloadedError,
    EngineStoppedError,
    GroupCommitEngine,
    NotLeaderError,
    StateMissingError,
    StateTooLargeError,
)
from osqueue.errors import OsqueueError, StorageBackendError
from osqueue.spec import queue as spec
from osqueue.state import QueueState, StateDecodeError, decode_state
from osqueue.storage.base import StorageBackend
from osqueue.storage.throttled import ThrottledStorageBackend, ThrottleStats

logger = logging.getLogger(__name__)

THROUGHPUT_WINDOW = 10.0
"""Seconds of counter samples that the throughput rates average over."""


class ThroughputMeter:
    """Rates of the ``enqueued`` and ``completed`` counters over a sliding window.

    Samples are (monotonic seconds, enqueued, completed). Counters only grow, so a rate is
    the difference between the newest and the oldest sample in the window.
    """

    def __init__(self, window: float = THROUGHPUT_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int, int]] = deque()

    def record(self, now: float, state: QueueState | None) -> None:
        if state is None:
            return
        self._samples.append((now, state.counters.enqueued, state.counters.completed))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rates(self) -> tuple[float, float, float]:
        """Return (enqueued per second, completed per second, seconds covered)."""

        if len(self._samples) < 2:
            return 0.0, 0.0, 0.0
        first, last = self._samples[0], self._samples[-1]
        elapsed = last[0] - first[0]
        if elapsed <= 0:
            return 0.0, 0.0, 0.0
        return (max(last[1] - first[1], 0) / elapsed, max(last[2] - first[2], 0) / elapsed,
                elapsed)


class Broker:
    """One broker process: election loop, engine while leading, and queue operations.

    Use ``async with broker.running():`` to run the election; the operations raise
    ``ApiError`` with the wire status and tag of every failure. ``clock`` returns seconds
    on the clock that all brokers of the queue share (wall time by default).
    """

    def __init__(
        self,
        storage: StorageBackend,
        settings: BrokerSettings,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.address = settings.advertised_url
        self.raw_storage = storage
        self.storage: StorageBackend = storage
        if settings.group_commit_interval > 0:
            self.storage = PacedStorage(storage, settings.group_commit_interval)
        self.engine_config = settings.engine_config()
        self._clock = clock
        if rng is None:
            seed = secrets.randbits(64)
            logger.info("broker %s uses random seed %d", self.address, seed)
            rng = random.Random(seed)
        self._rng = rng
        self._engine: GroupCommitEngine | None = None
        self._observed: QueueState | None = None
        self._running = False
        self._stop = anyio.Event()
        self._wake = anyio.Event()
        self._done = anyio.Event()
        self._last_poll_error: str | None = None
        self._logged_leader: tuple[str | None, int] | None = None
        self.throughput = ThroughputMeter()
        self.elections_won = 0

    # Life cycle -------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Broker]:
        """Run the election loop in the background until the block exits.

        On exit the engine (if leading) finishes its batch in flight and stops; pending
        mutations get ``NotLeader``.
        """

        logger.info("broker %s starting on queue %r", self.address, self.settings.queue_key)
        # Fresh events, so that the events belong to the event loop that runs the broker.
        self._stop = anyio.Event()
        self._wake = anyio.Event()
        self._done = anyio.Event()
        self._running = True
        async with anyio.create_task_group() as group:
            group.start_soon(self._run_election)
            try:
                yield self
            finally:
                self._stop.set()
                self._wake.set()
                grace = self.engine_config.stop_timeout + 1.0
                with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
                    await self._done.wait()
                group.cancel_scope.cancel()
                self._running = False
                logger.info("broker %s stopped", self.address)

    @property
    def is_leader(self) -> bool:
        engine = self._engine
        return engine is not None and engine.is_leader

    @property
    def role(self) -> str:
        if not self._running:
            return "stopped"
        return "leader" if self.is_leader else "standby"

    @property
    def epoch(self) -> int | None:
        """The epoch this broker leads, or None on a standby."""

        engine = self._engine
        return engine.epoch if engine is not None and engine.is_leader else None

    def wake(self) -> None:
        """Make the election loop look at the engine and the state now."""

        self._wake.set()

    async def _run_election(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    await self._election_round()
                except Exception:
                    # A bug or an unexpected storage SDK error: the broker keeps running as
                    # a candidate rather than exit, and tries again after a pause.
                    logger.exception("broker %s: election round failed; retrying in %.3g s",
                                     self.address, self.settings.heartbeat_interval)
                    with anyio.move_on_after(self.settings.heartbeat_interval):
                        await self._stop.wait()
        finally:
            self._done.set()

    async def _election_round(self) -> None:
        readable, state = await self._poll()
        if self._stop.is_set():
            return
        if readable and (state is None or lease_expired(state.broker, self._clock())):
            await self._lead()
            return
        await self._sleep_until_next_poll(state)

    async def _poll(self) -> tuple[bool, QueueState | None]:
        """Read the state; return (whether the read succeeded, the state or None)."""

        try:
            read = await self.storage.read(self.settings.queue_key)
            state = None if read is None else decode_state(read.data)
        except (StorageBackendError, StateDecodeError) as error:
            # Logged once per distinct error, so a long outage does not flood the log.
            message = f"{type(error).__name__}: {error}"
            if message != self._last_poll_error:
                logger.warning("broker %s cannot read %r, retrying every %.3g s: %s",
                               self.address, self.settings.queue_key,
                               self.settings.heartbeat_interval, message)
            self._last_poll_error = message
            return False, None
        if self._last_poll_error is not None:
            logger.info("broker %s reads %r again", self.address, self.settings.queue_key)
            self._last_poll_error = None
        if state is not None:
            self._observed = state
            self.throughput.record(anyio.current_time(), state)
        self._log_standby(state)
        return True, state

    async def _sleep_until_next_poll(self, state: QueueState | None) -> None:
        delay = self.settings.heartbeat_interval
        if state is not None and state.broker.address is not None:
            # Poll again just after the observed lease would expire, so that a standby
            # takes over within a fraction of the interval after the lease lapses.
            until_expiry = lease_expires_at(state.broker) - self._clock()
            delay = min(delay, max(until_expiry, 0.0) + self.settings.heartbeat_interval / 20)
        with anyio.move_on_after(delay):
            await self._stop.wait()

    async def _lead(self) -> None:
        """Try to take the lease; serve as leader until the engine steps down or we stop."""

        engine = GroupCommitEngine(
            self.storage, address=self.address, config=self.engine_config,
            clock=self._clock, rng=random.Random(self._rng.getrandbits(64)),
        )
        epoch: int | None = None
        try:
            async with engine:
                epoch = engine.epoch
                self.elections_won += 1
                self._engine = engine
                logger.info("broker %s became leader of %r in epoch %s", self.address,
                            self.settings.queue_key, epoch)
                await self._watch(engine)
                if not engine.is_leader:
                    logger.warning("broker %s stepped down from epoch %s", self.address, epoch)
        except OsqueueError as error:
            if epoch is None:
                logger.info("broker %s did not win the election: %s", self.address, error)
                await self._pause_after_failed_election()
            else:
                logger.warning("broker %s stopped leading epoch %s: %s", self.address, epoch,
                               error)
        finally:
            if self._engine is engine:
                if engine.state is not None:
                    self._observed = engine.state
                self._engine = None
            if epoch is not None:
                logger.info("broker %s no longer leads (left epoch %s)", self.address, epoch)

    async def _watch(self, engine: GroupCommitEngine) -> None:
        # The engine has no event for stepping down, so the broker looks at it on a short
        # interval, and at once when a request saw NotLeaderError.
        interval = min(max(self.settings.heartbeat_interval / 10, 0.01), 0.5)
        while engine.is_leader and not self._stop.is_set():
            with anyio.move_on_after(interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            self.throughput.record(anyio.current_time(), engine.state)

    async def _pause_after_failed_election(self) -> None:
        with anyio.move_on_after(self.settings.heartbeat_interval / 2):
            await self._stop.wait()

    # Views ------------------------------------------------------------------------------

    def current_state(self) -> QueueState | None:
        """Return the newest state this broker has read or written: the engine's while leading."""

        engine = self._engine
        if engine is not None and engine.is_leader and engine.state is not None:
            return engine.state
        candidates = [self._observed]
        if engine is not None and engine.state is not None:
            candidates.append(engine.state)
        known = [state for state in candidates if state is not None]
        if not known:
            return None
        return max(known, key=lambda state: (state.broker.epoch, state.sequence))

    def leader_address(self) -> str | None:
        """Return the URL of the leader of the newest known state, or None if its lease
        expired. This broker's own address when it leads."""

        if self.is_leader:
            return self.address
        state = self.current_state()
        if state is None or lease_expired(state.broker, self._clock()):
            return None
        if state.broker.address == self.address:
            # A deposed or stopped engine of this broker: no live leader is known.
            return None
        return state.broker.address

    def leader_epoch(self) -> int | None:
        """Return the epoch of the leader that ``leader_address`` names, or None."""

        if self.is_leader:
            return self.epoch
        if self.leader_address() is None:
            return None
        state = self.current_state()
        return None if state is None else state.broker.epoch

    def _log_standby(self, state: QueueState | None) -> None:
        """Log at INFO when this standby first reads a state with a live leader, or a new one."""

        if self.is_leader or state is None or lease_expired(state.broker, self._clock()):
            return
        if state.broker.address == self.address:
            return
        known = (state.broker.address, state.broker.epoch)
        if known == self._logged_leader:
            return
        self._logged_leader = known
        logger.info("broker %s is a standby; %s leads epoch %s", self.address,
                    state.broker.address, state.broker.epoch)

    def engine_stats(self) -> dict[str, Any] | None:
        engine = self._engine
        return engine.stats.summary() if engine is not None and engine.is_leader else None

    def throttle_stats(self) -> ThrottleStats | None:
        storage = self.raw_storage
        if isinstance(storage, ThrottledStorageBackend):
            return storage.stats()
        return None

    def now(self) -> float:
        return self._clock()

    # Mutations --------------------------------------------------------------------------

    def not_leader(self, detail: str = "") -> ApiError:
        leader = self.leader_address()
        if leader == self.address:
            leader = None
        message = f"broker {self.address} is not the leader"
        if detail:
            message = f"{message}: {detail}"
        message += (f"; send the request to {leader}" if leader
                    else "; no live leader is known, retry shortly")
        return ApiError(503, "NotLeader", message, leader=leader)

    async def submit(self, mutation: spec.Mutation) -> spec.Result:
        """Commit ``mutation`` through the leader's engine; map every failure to ``ApiError``."""

        engine = self._engine
        if engine is None or not engine.is_leader:
            raise self.not_leader()
        try:
            return await engine.submit(mutation)
        except (NotLeaderError, EngineStoppedError) as error:
            self.wake()
            raise self.not_leader(str(error)) from None
        except OsqueueError as error:
            raise api_error_from(error) from None
        except (ValueError, TypeError) as error:
            # The engine rejects mutations that can never be committed with these.
            raise ApiError(400, "InvalidRequest", str(error)) from None


def api_error_from(error: OsqueueError) -> ApiError:
    """Return the wire error of an engine or storage failure (not NotLeader)."""

    message = str(error)
    if isinstance(error, CommitIndeterminateError):
        return ApiError(504, "CommitIndeterminate", message)
    if isinstance(error, EngineOverloadedError):
        return ApiError(503, "Overloaded", message)
    if isinstance(error, StateTooLargeError):
        return ApiError(507, "StateTooLarge", message)
    if isinstance(error, (CommitFailedError, StorageBackendError, StateMissingError,
                          StateDecodeError)):
        return ApiError(503, "StorageUnavailable", message)
    logger.error("unexpected engine error %s: %s", type(error).__name__, error)
    return ApiError(503, "StorageUnavailable", f"{type(error).__name__}: {message}")

