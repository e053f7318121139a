"""One run of the whole queue in virtual time: producers, workers, brokers and the store.

``simulate_queue(QueueRunConfig)`` builds the world of one scenario and runs it under
trio's ``MockClock``:

- a ``SimulatedObjectStore`` (subclassed here to keep every applied write, the *commit
  chain*) with the scenario's background faults;
- one to three brokers, each a ``GroupCommitEngine`` with its own address, its own clock
  (``CLOCK_BASE`` plus virtual time plus a skew that fault events set) and a storage
  connection that a pause holds. A broker that loses the lease or restarts starts a new
  engine, which waits for the lease;
- or, in the ``direct`` and ``client-batch`` modes, no broker: clients commit with their
  own CAS read-modify-write of ``queue.json`` (``DirectCommitter``);
- producers that enqueue jobs and workers that claim, heartbeat, complete and fail them,
  reaching the brokers over an in-process link with latency, lost requests and lost
  responses;
- the fault schedule, applied at its virtual times.

After ``duration`` seconds the faults stop: windows close, paused brokers resume, crashed
ones restart, clocks agree again, and stalled or crashed workers come back. The drain
phase then runs until the queue is empty (or ``drain`` seconds pass), and the store
applies every write still in flight. The result (``QueueRun``) contains the client-side
queue history, the storage history and the commit chain for ``osqueue.sim.queue_checks``.

NOTE: the store orders its own events deterministically, but two client requests that
reach one engine at the same virtual microsecond join its batch in trio's scheduling
order. Latencies are continuous draws, so such ties are rare, not impossible.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import trio
from osqueue.checker import UNKNOWN
from osqueue.election import ElectionError, LeaseHeldError, NotLeaderError
from osqueue.engine import (
    CommitFailedError,
    CommitIndeterminateError,
    EngineConfig,
    EngineOverloadedError,
    EngineStoppedError,
    GroupCommitEngine,
)
from osqueue.errors import CASConflictError, IndeterminateWriteError, StorageBackendError
from osqueue.mutations import apply_batch
from osqueue.sim.clock import ClockMonitor, virtual_clock
from osqueue.sim.faults import FaultKind
from osqueue.sim.queue_scenarios import FaultEvent, FaultSchedule, QueueScenario
from osqueue.sim.recorder import HistoryRecorder
from osqueue.sim.reference_engine import ReapplyingBackend, ReregisteringEngine
from osqueue.sim.store import SimulatedObjectStore
from osqueue.spec import queue as spec
from osqueue.spec.cas import TokenPolicy, Written
from osqueue.spec.history import StoreOperation
from osqueue.state import (
    DEFAULT_KEY,
    BrokerRecord,
    QueueState,
    decode_state,
    encode_state,
    initial_state,
)
from osqueue.storage.base import ReadResult, StorageBackend, StorageVersion

logger = logging.getLogger(__name__)


class _NotApplied:
    """The result of a request that certainly did not take effect."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_APPLIED"


NOT_APPLIED = _NotApplied()

CLOCK_BASE = 1_767_225_600.0
"""Unix time (2026-01-01 UTC) that broker and client clocks show at virtual time 0."""

_NOT_APPLIED_ERRORS = (
    NotLeaderError, EngineStoppedError, CommitFailedError, EngineOverloadedError,
    StorageBackendError,
)


@dataclass(frozen=True, slots=True)
class QueueRunConfig:
    """Everything one run depends on: scenario, seed, fault schedule and flaws."""

    scenario: QueueScenario
    seed: int
    schedule: FaultSchedule = field(default_factory=FaultSchedule)
    flaws: frozenset[str] = frozenset()
    lying: bool = False


@dataclass(slots=True)
class QueueOp:
    """One request of a client: the mutation, its invocation and completion, the result.

    ``result`` is what the client saw: a ``spec.queue`` result, ``UNKNOWN`` (request or
    response lost, timed out, or indeterminate commit; ``returned_at`` is None) or
    ``NOT_APPLIED``.

    ``delivered``, ``effect`` and ``effect_at`` are what the simulator saw on the server
    side: whether the request reached a broker's engine or a direct committer, and the
    result it produced there and when (``UNKNOWN`` while none was produced, for example
    because the broker crashed or the commit was indeterminate). The effect is known even
    when the response was lost on the way back.
    """

    client: str
    mutation: spec.Mutation
    called_at: float
    returned_at: float | None = None
    result: Any = UNKNOWN
    detail: str = ""
    op_id: int = -1
    delivered: bool = False
    effect: Any = UNKNOWN
    effect_at: float | None = None

    def describe(self) -> str:
        end = "?" if self.returned_at is None else f"{self.returned_at:.4f}"
        text = f"#{self.op_id} {self.client} {self.mutation!r} [{self.called_at:.4f}, {end}] -> "
        text += repr(self.result)
        if self.detail:
            text += f" ({self.detail})"
        return text


@dataclass(frozen=True, slots=True)
class Commit:
    """One write that the store applied: its position in the chain, time and state."""

    index: int
    applied_at: float
    state: QueueState


@dataclass(slots=True)
class QueueRun:
    """The outcome of one run, for the checks and the summary."""

    config: QueueRunConfig
    ops: list[QueueOp]
    commits: list[Commit]
    store_history: list[StoreOperation]
    faults_injected: dict[str, int]
    conflicts: int
    commits_by_writer: dict[str, int]
    drained: bool
    fault_phase_end: float
    virtual_duration: float
    wall_time: float = 0.0
    unexpected_errors: list[str] = field(default_factory=list)
    worker_types: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    engine_stats: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------
# Store and storage wrappers
# ----------------------------------------------------------------------------------------


class ChainRecordingStore(SimulatedObjectStore):
    """A ``SimulatedObjectStore`` that keeps every applied write in apply order."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.applied_writes: list[tuple[float, bytes]] = []

    def _apply(self, apply_at: float, event: Any) -> None:
        super()._apply(apply_at, event)
        if event.kind != "read" and isinstance(event.result, Written):
            self.applied_writes.append((apply_at, event.data))


class PauseGate:
    """Holds a paused broker's traffic: requests wait before leaving and before returning."""

    def __init__(self) -> None:
        self._resumed = trio.Event()
        self._resumed.set()

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def pause(self) -> None:
        if not self.paused:
            self._resumed = trio.Event()

    def resume(self) -> None:
        self._resumed.set()

    async def wait(self) -> None:
        await self._resumed.wait()


class PausableBackend:
    """A ``StorageBackend`` whose calls wait while ``gate`` is paused, on both ends."""

    def __init__(self, inner: StorageBackend, gate: PauseGate) -> None:
        self.inner = inner
        self.gate = gate
        self.name = inner.name

    async def read(self, key: str) -> ReadResult | None:
        await self.gate.wait()
        result = await self.inner.read(key)
        await self.gate.wait()
        return result

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion:
        await self.gate.wait()
        result = await self.inner.write(key, data, expected)
        await self.gate.wait()
        return result

    async def create_if_not_exists(self, key: str, data: bytes) -> StorageVersion:
        await self.gate.wait()
        result = await self.inner.create_if_not_exists(key, data)
        await self.gate.wait()
        return result


# ----------------------------------------------------------------------------------------
# Brokers
# ----------------------------------------------------------------------------------------


class _Slot:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.detail = ""

    def set(self, result: Any, detail: str = "") -> None:
        if not self.done.is_set():
            self.result = result
            self.detail = detail
            self.done.set()


class Broker:
    """One broker process: runs an engine while it leads, restarts it when deposed."""

    def __init__(self, world: QueueWorld, index: int, rng: random.Random) -> None:
        self.world = world
        self.index = index
        self.address = f"broker-{index}:7000"
        self.rng = rng
        self.offset = 0.0
        self.gate = PauseGate()
        self.up = True
        self.restarted = trio.Event()
        self.down_until = 0.0
        self.paused_until = 0.0
        self.engine: GroupCommitEngine | None = None
        self.handlers: trio.Nursery | None = None
        self.scope: trio.CancelScope | None = None
        self.engines: list[GroupCommitEngine] = []
        connection = world.store.connect(self.address)
        storage: StorageBackend = world.recorder.wrap(connection, self.address)
        storage = PausableBackend(storage, self.gate)
        if "reapply" in world.config.flaws:
            storage = ReapplyingBackend(storage)
        self.storage = storage

    def clock(self) -> float:
        """Return the broker's time: Unix seconds at virtual time 0 plus virtual time plus skew.

        Starting at a Unix time keeps a clock that runs behind above 0, the ``visible_at``
        of every new job (virtual time itself starts at 0).
        """

        return CLOCK_BASE + trio.current_time() + self.offset

    @property
    def accepting(self) -> bool:
        return self.up and self.engine is not None and self.handlers is not None

    async def run(self) -> None:
        while True:
            if not self.up:
                await self.restarted.wait()
                continue
            with trio.CancelScope() as scope:
                self.scope = scope
                try:
                    await self._lead()
                except (StorageBackendError, ElectionError, LeaseHeldError,
                        IndeterminateWriteError, CASConflictError) as error:
                    logger.info("broker %s failed to lead: %s; retrying", self.address, error)
                except Exception as error:  # noqa: BLE001
                    # Any other error is a bug the run must report, not crash on.
                    self.world.unexpected(f"broker {self.address} failed: {error!r}")
            self.engine = None
            self.handlers = None
            await trio.sleep(0.1 + self.rng.uniform(0, 0.1))

    async def _lead(self) -> None:
        scenario = self.world.config.scenario
        config = EngineConfig(
            heartbeat_timeout=scenario.heartbeat_timeout,
            lease_seconds=scenario.lease_seconds,
            max_retries=scenario.engine_max_retries,
            backoff_base=0.01,
            backoff_max=1.0,
            stop_timeout=2.0,
        )
        engine_class = (ReregisteringEngine if "reregister" in self.world.config.flaws
                        else GroupCommitEngine)
        engine = engine_class(
            self.storage, address=self.address, config=config, clock=self.clock,
            rng=random.Random(self.rng.getrandbits(64)), wait_for_lease=True,
        )
        self.engines.append(engine)
        async with engine, trio.open_nursery() as handlers:
            self.engine = engine
            self.handlers = handlers
            while engine.is_leader:
                await trio.sleep(0.05)
            self.engine = None
            self.handlers = None
            handlers.cancel_scope.cancel()
        logger.info("broker %s: engine of epoch %s ended", self.address, engine.epoch)

    async def handle(self, op: QueueOp, slot: _Slot) -> None:
        """Submit the request of ``op`` to the engine and record its effect in ``op``."""

        mutation = op.mutation
        await self.gate.wait()
        engine = self.engine
        if engine is None:
            slot.set(NOT_APPLIED, "not the leader")
            return
        op.delivered = True
        try:
            result = await engine.submit(mutation)
        except CommitIndeterminateError as error:
            result, detail = UNKNOWN, f"indeterminate: {error}"
        except _NOT_APPLIED_ERRORS as error:
            result, detail = NOT_APPLIED, f"{type(error).__name__}: {error}"
        except Exception as error:  # noqa: BLE001
            # Any other error is a bug the run must report, not crash on.
            self.world.unexpected(f"broker {self.address} submit of {mutation!r} failed: "
                                  f"{error!r}")
            result, detail = UNKNOWN, repr(error)
        else:
            detail = ""
        op.effect = result
        op.effect_at = trio.current_time()
        await self.gate.wait()
        slot.set(result, detail)

    def crash(self, down_until: float) -> None:
        """Stop the broker at once; ``restart`` brings it back from ``down_until`` on.

        Crashes may overlap: the broker stays down until the latest of their ends.
        """

        logger.info("broker %s crashes until %.3f", self.address, down_until)
        if self.up:
            self.restarted = trio.Event()
        self.up = False
        self.down_until = max(self.down_until, down_until)
        if self.scope is not None:
            self.scope.cancel()

    def pause(self, until: float) -> None:
        """Hold the broker's traffic until ``until`` (overlapping pauses last to the latest)."""

        self.paused_until = max(self.paused_until, until)
        self.gate.pause()

    def resume(self, force: bool = False) -> None:
        if force or trio.current_time() >= self.paused_until:
            self.gate.resume()

    def restart(self, force: bool = False) -> None:
        if self.up or (not force and trio.current_time() < self.down_until):
            return
        logger.info("broker %s restarts", self.address)
        self.up = True
        self.restarted.set()


# ----------------------------------------------------------------------------------------
# Brokerless commits (contention modes)
# ----------------------------------------------------------------------------------------


class _Unsettled(Exception):
    """A direct commit whose outcome could not be settled."""


class DirectCommitter:
    """A client's own CAS read-modify-write of ``queue.json`` with ``apply_batch``.

    It follows the engine's exactly-once protocol without a lease: every batch has a commit
    id, an unknown outcome is settled by reading back, and a batch is applied to a new base
    only once its earlier attempts are proven absent. All mutations submitted while a
    commit is in flight form the next batch.
    """

    MAX_ATTEMPTS = 40

    def __init__(self, world: QueueWorld, name: str, rng: random.Random) -> None:
        self.world = world
        self.name = name
        self.rng = rng
        self.storage = world.recorder.wrap(world.store.connect(name), name)
        self.pending: list[tuple[spec.Mutation, _Slot]] = []
        self.wake = trio.Event()
        self.cached: tuple[QueueState, StorageVersion] | None = None
        self.commit_number = 0
        self.conflicts = 0
        self.commits = 0

    async def submit(self, mutation: spec.Mutation) -> tuple[Any, str]:
        slot = _Slot()
        self.pending.append((mutation, slot))
        self.wake.set()
        await slot.done.wait()
        return slot.result, slot.detail

    async def run(self) -> None:
        while True:
            while not self.pending:
                self.wake = trio.Event()
                await self.wake.wait()
            batch, self.pending = self.pending, []
            mutations = [mutation for mutation, _slot in batch]
            try:
                results = await self._commit(mutations)
            except _Unsettled as error:
                for _mutation, slot in batch:
                    slot.set(UNKNOWN, str(error))
                continue
            if results is None:
                for _mutation, slot in batch:
                    slot.set(NOT_APPLIED, "commit failed")
                continue
            for (_mutation, slot), result in zip(batch, results, strict=True):
                slot.set(result)

    async def _commit(self, mutations: list[spec.Mutation]) -> list[Any] | None:
        self.commit_number += 1
        commit_id = f"{self.name}-{self.commit_number}"
        attempts: dict[int, tuple[StorageVersion, bytes, list[Any]]] = {}
        uncertain: set[int] = set()
        for retry in range(self.MAX_ATTEMPTS):
            if retry:
                await trio.sleep(min(1.0, 0.01 * 2 ** min(retry, 7)) * self.rng.uniform(0.5, 1))
            if self.cached is None:
                try:
                    read = await self.storage.read(DEFAULT_KEY)
                except StorageBackendError:
                    continue
                assert read is not None, "queue.json is created before the clients start"
                self.cached = (decode_state(read.data), read.version)
            state, version = self.cached

            resend = None
            if uncertain:
                record = state.find_commit(commit_id)
                if record is not None:
                    return attempts[record.sequence - 1][2]
                for base in sorted(uncertain):
                    if state.sequence == base and version == attempts[base][0]:
                        resend = base
                        continue
                    successor = state.commit_at(base + 1) if state.sequence > base else None
                    if successor is None or successor.commit_id == commit_id:
                        raise _Unsettled(f"commit {commit_id} on sequence {base} unsettled")
                    uncertain.discard(base)

            if resend is None:
                now = CLOCK_BASE + trio.current_time()
                broker = BrokerRecord(address=None, epoch=0, heartbeat_at=now,
                                      lease_seconds=self.world.config.scenario.lease_seconds)
                outcome = apply_batch(
                    state, mutations, now=now, commit_id=commit_id,
                    heartbeat_timeout=self.world.config.scenario.heartbeat_timeout,
                    broker=broker)
                base = state.sequence
                attempts[base] = (version, encode_state(outcome.state), outcome.results)
            else:
                base = resend
            expected, data, results = attempts[base]
            try:
                new_version = await self.storage.write(DEFAULT_KEY, data, expected)
            except CASConflictError:
                self.conflicts += 1
                self.cached = None
                continue
            except IndeterminateWriteError:
                uncertain.add(base)
                self.cached = None
                continue
            except StorageBackendError:
                continue
            self.cached = (decode_state(data), new_version)
            self.commits += 1
            return results
        if uncertain:
            raise _Unsettled(f"commit {commit_id} gave up with an unknown outcome")
        return None


# ----------------------------------------------------------------------------------------
# Clients
# ----------------------------------------------------------------------------------------


class Link:
    """One client task's connection to the queue, recording every request as a ``QueueOp``.

    In brokered mode a request travels to a broker with injected latency and may be lost on
    the way there or back; the client gives up after the network timeout. In the direct
    modes it goes to the client's ``DirectCommitter``.
    """

    def __init__(self, world: QueueWorld, name: str, rng: random.Random,
                 committer: DirectCommitter | None = None) -> None:
        self.world = world
        self.name = name
        self.rng = rng
        self.committer = committer
        self.hint = 0

    async def call(self, mutation: spec.Mutation) -> Any:
        op = QueueOp(self.name, mutation, trio.current_time())
        self.world.ops.append(op)
        enqueue = isinstance(mutation, spec.Enqueue)
        self.world.in_flight_enqueues += enqueue
        try:
            if self.committer is not None:
                op.delivered = True
                op.result, op.detail = await self.committer.submit(mutation)
                op.effect = op.result
                op.effect_at = trio.current_time()
            else:
                op.result, op.detail = await self._via_broker(op)
        finally:
            self.world.in_flight_enqueues -= enqueue
            if op.result is not UNKNOWN:
                op.returned_at = trio.current_time()
        return op.result

    async def _via_broker(self, op: QueueOp) -> tuple[Any, str]:
        world = self.world
        started = op.called_at
        network = world.network
        # Every call draws the same number of values, so later draws never shift.
        outbound = network.latency.sample(self.rng)
        inbound = network.latency.sample(self.rng)
        lose_request = self.rng.random() < world.drop_request_rate
        lose_response = self.rng.random() < world.drop_response_rate
        deadline = started + network.timeout
        brokers = world.brokers
        broker = brokers[self.hint % len(brokers)]

        if lose_request:
            world.count("network_drop_request")
            await trio.sleep_until(deadline)
            return UNKNOWN, "request lost"
        await trio.sleep(outbound)
        if not broker.accepting:
            self.hint += 1
            await trio.sleep(inbound)
            return NOT_APPLIED, f"{broker.address} is not the leader or is down"

        slot = _Slot()
        assert broker.handlers is not None
        broker.handlers.start_soon(broker.handle, op, slot)
        with trio.move_on_at(deadline):
            await slot.done.wait()
        if not slot.done.is_set():
            return UNKNOWN, "timed out"
        if lose_response:
            world.count("network_drop_response")
            await trio.sleep_until(deadline)
            return UNKNOWN, "response lost"
        if slot.result is NOT_APPLIED:
            self.hint += 1
        await trio.sleep(inbound)
        return slot.result, slot.detail


class Producer:
    """Enqueues ``jobs_per_producer`` jobs, one per request, from one task per link.

    Task ``k`` of ``n`` enqueues the jobs numbered ``k``, ``k + n``, ... Each task has its
    own generator, so its draws do not depend on how trio interleaves the tasks.
    """

    def __init__(self, world: QueueWorld, index: int, links: list[Link],
                 rng: random.Random) -> None:
        self.world = world
        self.name = f"p{index}"
        self.links = links
        self.rngs = [random.Random(rng.getrandbits(64)) for _ in links]

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for task in range(len(self.links)):
                nursery.start_soon(self._enqueue, task)

    async def _enqueue(self, task: int) -> None:
        scenario = self.world.config.scenario
        link, rng = self.links[task], self.rngs[task]
        for number in range(task, scenario.jobs_per_producer, len(self.links)):
            await trio.sleep(scenario.enqueue_interval.sample(rng))
            if trio.current_time() >= self.world.fault_phase_end:
                break
            job_type = rng.choice(scenario.job_types())
            job = spec.NewJob(job_type, {"tag": f"{self.name}-{number}"},
                              max_attempts=scenario.max_attempts)
            await link.call(spec.Enqueue((job,)))


class Worker:
    """Claims jobs, sends heartbeats while working, then completes or fails each job."""

    def __init__(self, world: QueueWorld, index: int, links: tuple[Link, Link],
                 rng: random.Random, types: tuple[str, ...] | None) -> None:
        self.world = world
        self.name = f"w{index}"
        self.link, self.heartbeat_link = links
        self.rng = rng
        self.types = types
        self.stall_until = 0.0
        self.up = True
        self.restarted = trio.Event()
        self.down_until = 0.0
        self.scope: trio.CancelScope | None = None

    async def run(self) -> None:
        while True:
            if not self.up:
                await self.restarted.wait()
                continue
            with trio.CancelScope() as scope:
                self.scope = scope
                await self._loop()

    async def _loop(self) -> None:
        scenario = self.world.config.scenario
        while True:
            await self._wait_stall()
            result = await self.link.call(spec.Claim(self.name, self.types))
            if isinstance(result, spec.Claimed):
                await self._work(result)
            else:
                await trio.sleep(scenario.poll_interval * self.rng.uniform(0.5, 1.5))

    async def _work(self, claimed: spec.Claimed) -> None:
        scenario = self.world.config.scenario
        work_time = scenario.work_time.sample(self.rng)
        fail = self.rng.random() < scenario.fail_rate
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeats, claimed)
            await trio.sleep(work_time)
            await self._wait_stall()
            if fail:
                await self.link.call(spec.Fail(claimed.job_id, claimed.token, "simulated"))
            else:
                await self.link.call(spec.Complete(claimed.job_id, claimed.token))
            nursery.cancel_scope.cancel()

    async def _heartbeats(self, claimed: spec.Claimed) -> None:
        interval = self.world.config.scenario.heartbeat_interval
        while True:
            await trio.sleep(interval)
            await self._wait_stall()
            result = await self.heartbeat_link.call(spec.Heartbeat(claimed.job_id, claimed.token))
            if isinstance(result, spec.Rejected):
                return

    async def _wait_stall(self) -> None:
        while trio.current_time() < self.stall_until:
            await trio.sleep_until(self.stall_until)

    def crash(self, down_until: float) -> None:
        """Stop the worker at once; ``restart`` brings it back from ``down_until`` on."""

        logger.info("worker %s crashes until %.3f", self.name, down_until)
        if self.up:
            self.restarted = trio.Event()
        self.up = False
        self.down_until = max(self.down_until, down_until)
        if self.scope is not None:
            self.scope.cancel()

    def restart(self, force: bool = False) -> None:
        if self.up or (not force and trio.current_time() < self.down_until):
            return
        self.up = True
        self.restarted.set()


# ----------------------------------------------------------------------------------------
# The world
# ----------------------------------------------------------------------------------------


class QueueWorld:
    """All components of one run and the fault state they share."""

    def __init__(self, config: QueueRunConfig, monitor: ClockMonitor) -> None:
        self.config = config
        scenario = config.scenario
        master = random.Random(config.seed)
        self.base_faults = dataclasses.replace(scenario.store_faults, lying=config.lying)
        self.store = ChainRecordingStore(
            rng=random.Random(master.getrandbits(64)), policy=TokenPolicy.UNIQUE,
            faults=self.base_faults, clock=monitor.now, sleep_until=trio.sleep_until,
        )
        self.recorder = HistoryRecorder(clock=monitor.now)
        self.network = scenario.network
        self.drop_request_rate = scenario.network.drop_request
        self.drop_response_rate = scenario.network.drop_response
        self.fault_phase_end = scenario.duration
        self.faults_on = True
        self.ops: list[QueueOp] = []
        self.in_flight_enqueues = 0
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []
        self._windows = {"storage_drop_responses": 0, "storage_errors": 0, "network_drops": 0}

        self.brokers: list[Broker] = []
        self.committers: list[DirectCommitter] = []
        if scenario.mode == "brokered":
            self.brokers = [
                Broker(self, index, random.Random(master.getrandbits(64)))
                for index in range(scenario.brokers)
            ]
        tasks = scenario.client_concurrency if scenario.mode == "client-batch" else 1
        self.producers = [
            Producer(self, index,
                     self._links([f"p{index}"] + [f"p{index}/{k}" for k in range(1, tasks)],
                                 master),
                     random.Random(master.getrandbits(64)))
            for index in range(scenario.producers)
        ]
        self.workers: list[Worker] = []
        for index in range(scenario.workers):
            main, heartbeat = self._links([f"w{index}", f"w{index}/hb"], master)
            types = scenario.worker_types[index % len(scenario.worker_types)]
            self.workers.append(Worker(
                self, index, (main, heartbeat), random.Random(master.getrandbits(64)), types))
        self.setup_storage = self.recorder.wrap(self.store.connect("setup"), "setup")

    def _links(self, names: list[str], master: random.Random) -> list[Link]:
        """Return one link per task of a client process; in ``client-batch`` mode they
        share one committer, in ``direct`` mode each task has its own."""

        scenario = self.config.scenario
        if scenario.mode == "brokered":
            return [Link(self, link_name, random.Random(master.getrandbits(64)))
                    for link_name in names]
        links = []
        shared = None
        for link_name in names:
            if scenario.mode == "direct" or shared is None:
                shared = DirectCommitter(self, link_name, random.Random(master.getrandbits(64)))
                self.committers.append(shared)
            links.append(Link(self, link_name, random.Random(master.getrandbits(64)), shared))
        return links

    def count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def unexpected(self, message: str) -> None:
        logger.error("unexpected error in seed %d: %s", self.config.seed, message)
        self.errors.append(message)

    # -- fault schedule ---------------------------------------------------------------------

    async def run_schedule(self, nursery: trio.Nursery) -> None:
        for event in self.config.schedule.events:
            if event.at >= self.fault_phase_end:
                break
            await trio.sleep_until(event.at)
            self.count(f"event_{event.kind}")
            self._apply_event(event, nursery)

    def _apply_event(self, event: FaultEvent, nursery: trio.Nursery) -> None:
        logger.info("seed %d: fault event %s", self.config.seed, event.describe())
        kind = event.kind
        if kind in self._windows:
            self._windows[kind] += 1
            self._refresh_faults()
            nursery.start_soon(self._close_window, kind, event.at + event.duration)
            return
        if kind.startswith("broker_"):
            if not self.brokers:
                return
            broker = self._broker_for(event.target)
            if kind == "broker_crash":
                broker.crash(event.at + event.duration)
                nursery.start_soon(self._later, event.at + event.duration, broker.restart)
            elif kind == "broker_pause":
                broker.pause(event.at + event.duration)
                nursery.start_soon(self._later, event.at + event.duration, broker.resume)
            else:
                broker.offset = event.offset
            return
        worker = self.workers[event.target % len(self.workers)]
        if kind == "worker_crash":
            worker.crash(event.at + event.duration)
            nursery.start_soon(self._later, event.at + event.duration, worker.restart)
        else:
            worker.stall_until = max(worker.stall_until, event.at + event.duration)

    def _broker_for(self, target: int) -> Broker:
        """Return the broker ``target`` places after the current leader (0: the leader)."""

        leaders = [broker.index for broker in self.brokers
                   if broker.engine is not None and broker.engine.is_leader]
        first = leaders[0] if leaders else 0
        return self.brokers[(first + target) % len(self.brokers)]

    async def _later(self, at: float, action: Any) -> None:
        await trio.sleep_until(min(at, self.fault_phase_end))
        action()

    async def _close_window(self, kind: str, at: float) -> None:
        await trio.sleep_until(min(at, self.fault_phase_end))
        self._windows[kind] -= 1
        self._refresh_faults()

    def _refresh_faults(self) -> None:
        if not self.faults_on:
            return
        faults = self.base_faults
        if self._windows["storage_drop_responses"]:
            faults = dataclasses.replace(faults, drop_request=0.0, applied_late=0.0,
                                         drop_response=1.0)
        if self._windows["storage_errors"]:
            faults = dataclasses.replace(faults, error_rate=0.5)
        self.store.faults = faults
        network = self.network
        drops = self._windows["network_drops"] > 0
        self.drop_request_rate = 0.5 if drops else network.drop_request
        self.drop_response_rate = 0.5 if drops else network.drop_response

    def end_faults(self) -> None:
        """Stop every fault: the drain phase runs on a healthy system."""

        logger.info("seed %d: faults stop at %.3f", self.config.seed, trio.current_time())
        self.faults_on = False
        self.store.faults = dataclasses.replace(
            self.base_faults, drop_request=0.0, drop_response=0.0, applied_late=0.0,
            error_rate=0.0)
        self.drop_request_rate = 0.0
        self.drop_response_rate = 0.0
        for broker in self.brokers:
            broker.offset = 0.0
            broker.resume(force=True)
            broker.restart(force=True)
        for worker in self.workers:
            worker.stall_until = 0.0
            worker.restart(force=True)

    # -- run --------------------------------------------------------------------------------

    def latest_state(self) -> QueueState | None:
        if not self.store.applied_writes:
            return None
        return decode_state(self.store.applied_writes[-1][1])

    async def run(self) -> bool:
        """Run the scenario; return True when the queue drained within the drain phase."""

        scenario = self.config.scenario
        if scenario.mode != "brokered":
            await self._create_queue()
        drained = False
        async with trio.open_nursery() as nursery:
            for broker in self.brokers:
                nursery.start_soon(broker.run, name=f"broker {broker.address}")
            for committer in self.committers:
                nursery.start_soon(committer.run, name=f"committer {committer.name}")
            async with trio.open_nursery() as producers:
                for producer in self.producers:
                    producers.start_soon(producer.run, name=f"producer {producer.name}")
                for worker in self.workers:
                    nursery.start_soon(worker.run, name=f"worker {worker.name}")
                nursery.start_soon(self.run_schedule, nursery)
            await trio.sleep_until(self.fault_phase_end)
            self.end_faults()
            drained = await self._drain()
            nursery.cancel_scope.cancel()
        await self.store.settle()
        return drained

    async def _create_queue(self) -> None:
        state = initial_state(now=CLOCK_BASE, lease_seconds=self.config.scenario.lease_seconds)
        while True:
            try:
                await self.setup_storage.create_if_not_exists(DEFAULT_KEY, encode_state(state))
                return
            except (StorageBackendError, IndeterminateWriteError) as error:
                logger.info("creating queue.json failed: %s; retrying", error)
            except CASConflictError:
                return
            await trio.sleep(0.1)

    async def _drain(self) -> bool:
        deadline = self.fault_phase_end + self.config.scenario.drain
        while trio.current_time() < deadline:
            await trio.sleep(1.0)
            state = self.latest_state()
            # Claims keep polling, so only an enqueue in flight could still add a job.
            if state is not None and not state.jobs and self.in_flight_enqueues == 0:
                return True
        return False


def simulate_queue(config: QueueRunConfig) -> QueueRun:
    """Run ``config`` in virtual time and return everything the checks need."""

    started = time.perf_counter()
    clock, monitor = virtual_clock()
    logger.info("queue simulation %s seed %d starts", config.scenario.name, config.seed)
    run = trio.run(_simulate, config, monitor, clock=clock, instruments=[monitor])
    run.wall_time = time.perf_counter() - started
    return run


async def _simulate(config: QueueRunConfig, monitor: ClockMonitor) -> QueueRun:
    world = QueueWorld(config, monitor)
    drained = await world.run()

    ops = sorted(world.ops, key=lambda op: (op.called_at, op.client))
    for number, op in enumerate(ops):
        op.op_id = number
    commits = [
        Commit(index, applied_at, decode_state(data))
        for index, (applied_at, data) in enumerate(world.store.applied_writes)
    ]
    faults = {kind.value: world.store.faults_injected[kind] for kind in FaultKind}
    faults.update(sorted(world.counts.items()))

    engines = [engine for broker in world.brokers for engine in broker.engines]
    stats: dict[str, int] = {}
    for engine in engines:
        for name in ("commits", "write_attempts", "conflicts", "indeterminate", "rate_limited",
                     "reads", "mutations"):
            stats[name] = stats.get(name, 0) + getattr(engine.stats, name)
    for engine in engines:
        if isinstance(engine, ReregisteringEngine):
            stats["reregistrations"] = stats.get("reregistrations", 0) + engine.reregistrations
    conflicts = stats.get("conflicts", 0) + sum(c.conflicts for c in world.committers)
    writers: dict[str, int] = {}
    for commit in commits:
        writer = writer_of(commit.state)
        writers[writer] = writers.get(writer, 0) + 1

    return QueueRun(
        config=config,
        ops=ops,
        commits=commits,
        store_history=world.recorder.history(),
        faults_injected=faults,
        conflicts=conflicts,
        commits_by_writer=writers,
        drained=drained,
        fault_phase_end=world.fault_phase_end,
        virtual_duration=monitor.now(),
        unexpected_errors=world.errors,
        worker_types={worker.name: worker.types for worker in world.workers},
        engine_stats=stats,
    )


def writer_of(state: QueueState) -> str:
    """Return the writer instance of the commit that produced ``state``.

    A commit id is ``<instance>-<number>``; the instance is an engine (one per acquired
    lease) or a direct client.
    """

    if not state.recent_commits:
        return "?"
    commit_id = state.recent_commits[-1].commit_id
    return commit_id.rsplit("-", 1)[0]


__all__ = [
    "NOT_APPLIED",
    "Commit",
    "QueueOp",
    "QueueRun",
    "QueueRunConfig",
    "simulate_queue",
    "writer_of",
]
