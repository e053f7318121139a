"""Drivers that the notebooks in this folder run in trio virtual time.

Every run builds a ``SimulatedObjectStore`` (``osqueue.sim.store``), runs writers against
it under ``trio.testing.MockClock(autojump_threshold=0)`` and returns counters. A run
depends only on its configuration and seed: randomness comes from ``random.Random(seed)``
and time from the mock clock, so a notebook prints the same figures on every machine.

Three ways to change ``queue.json`` are compared:

``direct``
    every request reads ``queue.json``, applies its one mutation and writes it back with a
    compare-and-swap (CAS), retrying after a conflict;
``client-batch``
    each writer (client) collects the mutations of its own requests while a write is in
    flight and commits them together, one CAS per batch (group commit per client);
``broker``
    every request goes to one ``GroupCommitEngine`` (a brokered group commit).

The client-side committer (``CasCommitter``) has three policies for a write whose outcome
is unknown (``IndeterminateWriteError``). ``settle`` reads the state back and looks for the
batch's commit id, as the engine does. ``reapply`` assumes the write was lost and applies
the batch again. ``assume-applied`` assumes it landed. The last two are the naive drivers
whose duplicates and lost mutations ``faults.ipynb`` counts.

Requests and their latency are measured on the client side: a mutation counts when its
result came back before the end of the run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio
from osqueue.checker import check_operations, object_store_model, operations_from_store_history
from osqueue.engine import (
    CommitFailedError,
    CommitIndeterminateError,
    EngineConfig,
    EngineStoppedError,
    GroupCommitEngine,
)
from osqueue.errors import CASConflictError, IndeterminateWriteError, StorageBackendError
from osqueue.mutations import apply_batch
from osqueue.sim.clock import virtual_clock
from osqueue.sim.faults import DEFAULT_FAULTS, FaultConfig, Latency
from osqueue.sim.runner import SimConfig, simulate
from osqueue.sim.store import SimulatedObjectStore
from osqueue.sim.workload import WorkloadConfig
from osqueue.spec import queue as spec
from osqueue.spec.cas import TokenPolicy
from osqueue.state import DEFAULT_KEY, decode_state, encode_state, initial_state
from osqueue.storage.base import ReadResult, StorageBackend, StorageVersion
from osqueue.storage.throttled import ThrottledStorageBackend

logger = logging.getLogger(__name__)

MODES = ("direct", "client-batch", "broker")
POLICIES = ("settle", "reapply", "assume-applied")
WORKLOADS = ("cycle", "enqueue")

HEARTBEAT_TIMEOUT = 1e6
"""Seconds; long enough that no claimed job expires during a run, so expiry never adds
writes of its own to the figures."""

MAX_BACKOFF = 1.0
"""Upper bound of the client-side retry delay, seconds."""


# ----------------------------------------------------------------------------------------
# Configuration and results
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Latency and faults of the simulated store.

    ``write_latency`` is the median of a lognormal write latency in seconds, reads take
    ``read_ratio`` times as long. ``rate_limit_per_second`` is the per-object write limit
    (GCS documents about one write per second to one object); None turns it off.
    """

    write_latency: float = 0.05
    read_ratio: float = 0.5
    sigma: float = 0.3
    rate_limit_per_second: float | None = None
    drop_request: float = 0.0
    drop_response: float = 0.0
    timeout: float = 1.0

    def faults(self) -> FaultConfig:
        return FaultConfig(
            read_latency=Latency.lognormal(self.write_latency * self.read_ratio, self.sigma),
            write_latency=Latency.lognormal(self.write_latency, self.sigma),
            timeout=self.timeout,
            drop_request=self.drop_request,
            drop_response=self.drop_response,
            write_rate_limit_per_second=self.rate_limit_per_second,
        )


@dataclass(frozen=True, slots=True)
class RunConfig:
    """One run: ``writers`` clients, each with ``requests_per_writer`` concurrent requests.

    Every request task loops for ``duration`` virtual seconds. With the ``cycle`` workload
    a task enqueues a job, claims one and completes it (three mutations), so the state
    stays small. With ``enqueue`` it only enqueues jobs with unique payloads, so duplicates
    and lost jobs can be counted in the final state.
    """

    mode: str = "broker"
    writers: int = 4
    store: StoreSettings = field(default_factory=StoreSettings)
    requests_per_writer: int = 8
    duration: float = 20.0
    workload: str = "cycle"
    policy: str = "settle"
    writes_per_minute: float | None = None
    """Throttle (``ThrottledStorageBackend``) in front of the store, requests per minute."""
    think_time: float = 0.0
    """Seconds each request task waits between mutations; 0 is a closed loop."""
    lease_seconds: float = 3600.0
    seed: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.workload not in WORKLOADS:
            raise ValueError(f"workload must be one of {WORKLOADS}, got {self.workload!r}")
        if self.writers < 1 or self.requests_per_writer < 1:
            raise ValueError(
                f"writers and requests_per_writer must be >= 1, got {self.writers} and "
                f"{self.requests_per_writer}"
            )
        if not self.duration > 0:
            raise ValueError(f"duration must be > 0 virtual seconds, got {self.duration}")


@dataclass
class WriteStats:
    """Counters of the storage requests that the writers of one run made."""

    commits: int = 0
    write_attempts: int = 0
    conflicts: int = 0
    rate_limited: int = 0
    indeterminate: int = 0
    reads: int = 0
    settled_by_readback: int = 0
    resent: int = 0
    reapplied: int = 0


@dataclass
class RunResult:
    """The measurements of one run. Rates are per virtual second of ``config.duration``."""

    config: RunConfig
    acknowledged: int
    unknown: int
    failed: int
    stats: WriteStats
    latencies: list[float]
    batch_sizes: list[int]
    state_bytes: int
    duplicates: int = 0
    lost: int = 0
    wall_seconds: float = 0.0
    started: int = 0
    """Requests submitted; those neither acknowledged, unknown nor failed were still waiting
    when the run ended."""

    @property
    def throughput(self) -> float:
        return self.acknowledged / self.config.duration

    @property
    def commits_per_second(self) -> float:
        return self.stats.commits / self.config.duration

    @property
    def conflict_rate(self) -> float:
        """Conflicts (412 and 429) per write attempt."""

        attempts = self.stats.write_attempts
        return (self.stats.conflicts + self.stats.rate_limited) / attempts if attempts else 0.0

    def latency_quantile(self, q: float) -> float:
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def row(self) -> dict[str, Any]:
        """Return a flat dict for tables and plots."""

        store = self.config.store
        return {
            "mode": self.config.mode,
            "policy": self.config.policy,
            "writers": self.config.writers,
            "write_latency_ms": store.write_latency * 1000,
            "rate_limit": store.rate_limit_per_second,
            "drop_response": store.drop_response,
            "drop_request": store.drop_request,
            "writes_per_minute": self.config.writes_per_minute,
            "throughput": self.throughput,
            "commits_per_s": self.commits_per_second,
            "conflict_rate": self.conflict_rate,
            "p50_ms": self.latency_quantile(0.5) * 1000,
            "p99_ms": self.latency_quantile(0.99) * 1000,
            "mean_batch": statistics.fmean(self.batch_sizes) if self.batch_sizes else 0.0,
            "reads_per_min": self.stats.reads / self.config.duration * 60,
            "writes_per_min": self.stats.write_attempts / self.config.duration * 60,
            "acknowledged": self.acknowledged,
            "latency_samples": len(self.latencies),
            "unfinished": self.started - self.acknowledged - self.unknown - self.failed,
            "commits": self.stats.commits,
            "write_attempts": self.stats.write_attempts,
            "conflicts": self.stats.conflicts,
            "rate_limited": self.stats.rate_limited,
            "unknown": self.unknown,
            "failed": self.failed,
            "indeterminate": self.stats.indeterminate,
            "settled_by_readback": self.stats.settled_by_readback,
            "duplicates": self.duplicates,
            "lost": self.lost,
            "state_bytes": self.state_bytes,
            "wall_s": self.wall_seconds,
        }


class CommitUnknown(Exception):
    """A batch may or may not have landed, and the driver cannot tell."""


class CommitGaveUp(Exception):
    """A batch was certainly not applied after the maximum number of attempts."""


# ----------------------------------------------------------------------------------------
# Storage wrappers
# ----------------------------------------------------------------------------------------


class CountingBackend:
    """A pass-through ``StorageBackend`` that counts the requests sent to ``inner``."""

    def __init__(self, inner: StorageBackend, stats: WriteStats) -> None:
        self.inner = inner
        self.name = inner.name
        self.stats = stats

    async def read(self, key: str) -> ReadResult | None:
        self.stats.reads += 1
        return await self.inner.read(key)

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion:
        self.stats.write_attempts += 1
        return await self.inner.write(key, data, expected)

    async def create_if_not_exists(self, key: str, data: bytes) -> StorageVersion:
        self.stats.write_attempts += 1
        return await self.inner.create_if_not_exists(key, data)


# ----------------------------------------------------------------------------------------
# Client-side compare-and-swap committer
# ----------------------------------------------------------------------------------------


class _Slot:
    """Where a committer puts the result of one submitted mutation."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result = result
        self.error = error
        self.done.set()


class CasCommitter:
    """Read-modify-CAS of ``queue.json`` by one client, with ``apply_batch``.

    ``commit(mutations)`` applies a batch to the current state and writes it with the
    version token read, retrying after conflicts with exponential backoff and full jitter.
    ``read_every_commit`` makes it read before every commit (a direct writer); otherwise it
    keeps the state it last wrote. ``run()`` batches what ``submit`` collects while a commit
    is in flight (group commit per client). ``policy`` decides what an unknown write
    outcome means (see the module docstring).
    """

    MAX_ATTEMPTS = 200

    def __init__(
        self,
        storage: StorageBackend,
        name: str,
        rng: random.Random,
        stats: WriteStats,
        *,
        policy: str = "settle",
        read_every_commit: bool = False,
        batch_sizes: list[int] | None = None,
    ) -> None:
        self.storage = storage
        self.name = name
        self.rng = rng
        self.stats = stats
        self.policy = policy
        self.read_every_commit = read_every_commit
        self.batch_sizes = batch_sizes if batch_sizes is not None else []
        self.cached: tuple[Any, StorageVersion] | None = None
        self.pending: list[tuple[spec.Mutation, _Slot]] = []
        self.wake = trio.Event()
        self.commit_number = 0

    async def submit(self, mutation: spec.Mutation) -> Any:
        """Queue ``mutation`` for ``run()`` and return its result once committed."""

        slot = _Slot()
        self.pending.append((mutation, slot))
        self.wake.set()
        await slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result

    async def run(self) -> None:
        """Commit everything submitted, one batch at a time, until cancelled."""

        while True:
            while not self.pending:
                self.wake = trio.Event()
                await self.wake.wait()
            batch, self.pending = self.pending, []
            try:
                results = await self.commit([mutation for mutation, _slot in batch])
            except (CommitUnknown, CommitGaveUp) as error:
                for _mutation, slot in batch:
                    slot.settle(error=error)
                continue
            for (_mutation, slot), result in zip(batch, results, strict=True):
                slot.settle(result)

    async def commit(self, mutations: list[spec.Mutation]) -> list[Any]:
        """Commit ``mutations`` as one batch and return their results."""

        self.commit_number += 1
        commit_id = f"{self.name}-{self.commit_number}"
        attempts: dict[int, tuple[StorageVersion, bytes, list[Any]]] = {}
        uncertain: set[int] = set()
        if self.read_every_commit:
            self.cached = None

        for retry in range(self.MAX_ATTEMPTS):
            if retry:
                await self._backoff(retry)
            if self.cached is None:
                try:
                    read = await self.storage.read(DEFAULT_KEY)
                except StorageBackendError:
                    continue
                assert read is not None, "queue.json is created before the writers start"
                self.cached = (decode_state(read.data), read.version)
            state, version = self.cached

            base, resend = self._settle_uncertain(state, version, commit_id, attempts, uncertain)
            if isinstance(base, list):
                return base
            if not resend:
                now = trio.current_time()
                outcome = apply_batch(
                    state, mutations, now=now, commit_id=commit_id,
                    heartbeat_timeout=HEARTBEAT_TIMEOUT,
                )
                base = state.sequence
                attempts[base] = (version, encode_state(outcome.state), outcome.results)
            expected, data, results = attempts[base]

            try:
                new_version = await self.storage.write(DEFAULT_KEY, data, expected)
            except CASConflictError:
                self.stats.conflicts += 1
                self.cached = None
                continue
            except IndeterminateWriteError:
                self.stats.indeterminate += 1
                self.cached = None
                if self.policy == "assume-applied":
                    return self._landed(results, len(mutations))
                if self.policy == "settle":
                    uncertain.add(base)
                else:
                    self.stats.reapplied += 1
                continue
            except StorageBackendError as error:
                if error.status == 429:
                    self.stats.rate_limited += 1
                continue
            self.cached = (decode_state(data), new_version)
            return self._landed(results, len(mutations))

        if uncertain:
            raise CommitUnknown(f"commit {commit_id} gave up with an unknown outcome")
        raise CommitGaveUp(f"commit {commit_id} not applied after {self.MAX_ATTEMPTS} attempts")

    def _settle_uncertain(self, state, version, commit_id, attempts, uncertain):
        """Settle earlier attempts whose outcome is unknown, from the state just read.

        Returns ``(results, False)`` when the batch is found in the state, ``(base, True)``
        when the attempt on ``base`` must be sent again with the same bytes, and
        ``(None, False)`` when every earlier attempt is proven absent. Raises
        ``CommitUnknown`` when the outcome cannot be settled.
        """

        if not uncertain:
            return None, False
        record = state.find_commit(commit_id)
        if record is not None:
            self.stats.settled_by_readback += 1
            return self._landed(attempts[record.sequence - 1][2], None), False
        resend = None
        for base in sorted(uncertain):
            if state.sequence == base and version == attempts[base][0]:
                resend = base
                continue
            successor = state.commit_at(base + 1) if state.sequence > base else None
            if successor is None:
                raise CommitUnknown(f"commit {commit_id} on sequence {base} cannot be settled")
            uncertain.discard(base)
        if resend is not None:
            self.stats.resent += 1
            return resend, True
        return None, False

    def _landed(self, results: list[Any], size: int | None) -> list[Any]:
        self.stats.commits += 1
        self.batch_sizes.append(size if size is not None else len(results))
        return results

    async def _backoff(self, retry: int) -> None:
        cap = min(MAX_BACKOFF, 0.01 * 2 ** min(retry, 10))
        await trio.sleep(self.rng.uniform(0.0, cap))


# ----------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------


class _Requests:
    """Bookkeeping shared by the request tasks of one run."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.acknowledged = 0
        self.unknown = 0
        self.failed = 0
        self.started = 0
        self.latencies: list[float] = []
        self.enqueued_payloads: list[str] = []


def run(config: RunConfig) -> RunResult:
    """Run ``config`` in virtual time and return what it measured."""

    started = time.perf_counter()
    logger.info("run starts: %s mode, %d writers, seed %d", config.mode, config.writers,
                config.seed)
    clock, monitor = virtual_clock()
    result = trio.run(_run, config, clock=clock, instruments=[monitor])
    result.wall_seconds = time.perf_counter() - started
    logger.info("run finished: %d mutations acknowledged in %.2f wall s", result.acknowledged,
                result.wall_seconds)
    return result


def sweep(configs: list[RunConfig]) -> list[dict[str, Any]]:
    """Run every configuration and return their ``row()`` dicts, in order."""

    return [run(config).row() for config in configs]


async def _run(config: RunConfig) -> RunResult:
    master = random.Random(config.seed)
    store = SimulatedObjectStore(
        rng=random.Random(master.getrandbits(64)), faults=config.store.faults()
    )
    stats = WriteStats()
    batch_sizes: list[int] = []
    requests = _Requests(config.duration)

    def storage_for(name: str) -> StorageBackend:
        backend: StorageBackend = store.connect(name)
        if config.writes_per_minute is not None:
            backend = ThrottledStorageBackend(
                backend, writes_per_minute=config.writes_per_minute,
                clock=trio.current_time, sleep=trio.sleep,
            )
        return CountingBackend(backend, stats)

    engine = None
    if config.mode == "broker":
        engine = GroupCommitEngine(
            storage_for("broker"), address="broker", clock=trio.current_time,
            rng=random.Random(master.getrandbits(64)),
            config=EngineConfig(heartbeat_timeout=HEARTBEAT_TIMEOUT,
                                lease_seconds=config.lease_seconds),
        )
        async with engine:
            await _drive(config, master, requests, engine.submit)
        stats.commits = engine.stats.commits
        stats.indeterminate = engine.stats.indeterminate
        stats.rate_limited = engine.stats.rate_limited
        stats.conflicts = engine.stats.conflicts
        batch_sizes = list(engine.stats.batch_sizes)
    else:
        setup = store.connect("setup")
        await setup.create_if_not_exists(DEFAULT_KEY, encode_state(initial_state()))
        await _drive_clients(config, master, requests, storage_for, stats, batch_sizes)

    await store.settle()
    data = store.objects()[DEFAULT_KEY].data
    duplicates, lost = _count_duplicates(data, requests.enqueued_payloads)
    if engine is not None:
        # The engine's own first write (creating queue.json) is not a commit of mutations.
        batch_sizes = [size for size in batch_sizes if size > 0]
    return RunResult(
        config=config, acknowledged=requests.acknowledged, unknown=requests.unknown,
        failed=requests.failed, stats=stats, latencies=requests.latencies,
        batch_sizes=batch_sizes, state_bytes=len(data), duplicates=duplicates, lost=lost,
        started=requests.started,
    )


async def _drive_clients(config, master, requests, storage_for, stats, batch_sizes) -> None:
    """Start the writers of the ``direct`` or ``client-batch`` mode and their requests."""

    async with trio.open_nursery() as nursery:
        with trio.move_on_at(config.duration):
            async with trio.open_nursery() as requesters:
                for writer in range(config.writers):
                    name = f"writer-{writer}"
                    if config.mode == "client-batch":
                        committer = CasCommitter(
                            storage_for(name), name, random.Random(master.getrandbits(64)),
                            stats, policy=config.policy, batch_sizes=batch_sizes,
                        )
                        nursery.start_soon(committer.run)
                        submit = committer.submit
                        for index in range(config.requests_per_writer):
                            requesters.start_soon(
                                _request_loop, config, requests, submit, f"{name}.{index}",
                                random.Random(master.getrandbits(64)),
                            )
                        continue
                    for index in range(config.requests_per_writer):
                        # A direct writer's requests each make their own CAS.
                        label = f"{name}.{index}"
                        committer = CasCommitter(
                            storage_for(label), label, random.Random(master.getrandbits(64)),
                            stats, policy=config.policy, read_every_commit=True,
                            batch_sizes=batch_sizes,
                        )
                        requesters.start_soon(
                            _request_loop, config, requests, _single(committer), label,
                            random.Random(master.getrandbits(64)),
                        )
        nursery.cancel_scope.cancel()


def _single(committer: CasCommitter):
    async def submit(mutation: spec.Mutation) -> Any:
        (result,) = await committer.commit([mutation])
        return result

    return submit


async def _drive(config, master, requests, submit) -> None:
    """Start the request tasks of the ``broker`` mode; stop them at the deadline."""

    with trio.move_on_at(config.duration):
        async with trio.open_nursery() as requesters:
            for writer in range(config.writers):
                for index in range(config.requests_per_writer):
                    requesters.start_soon(
                        _request_loop, config, requests, submit, f"writer-{writer}.{index}",
                        random.Random(master.getrandbits(64)),
                    )


async def _request_loop(config, requests, submit, label, rng) -> None:
    """Submit mutations one after another until cancelled at the deadline."""

    # Requests start spread over the first 100 ms, as independent clients would.
    await trio.sleep(rng.uniform(0.0, 0.1))
    number = 0
    token = None
    while True:
        number += 1
        if config.workload == "enqueue" or token is None:
            payload = f"{label}#{number}"
            mutation: spec.Mutation = spec.Enqueue.one("work", payload)
        elif token == "claim":
            mutation = spec.Claim(label)
        else:
            mutation = spec.Complete(*token)

        started = trio.current_time()
        requests.started += 1
        try:
            result = await submit(mutation)
        except (CommitUnknown, CommitIndeterminateError):
            requests.unknown += 1
            token = None
            continue
        except (CommitGaveUp, CommitFailedError, EngineStoppedError, StorageBackendError):
            requests.failed += 1
            token = None
            continue
        requests.acknowledged += 1
        requests.latencies.append(trio.current_time() - started)

        if isinstance(result, spec.Enqueued):
            requests.enqueued_payloads.append(payload)
            token = None if config.workload == "enqueue" else "claim"
        elif isinstance(result, spec.Claimed):
            token = (result.job_id, result.token)
        else:
            token = None
        if config.think_time > 0:
            await trio.sleep(rng.expovariate(1.0 / config.think_time))


def _count_duplicates(data: bytes, acknowledged_payloads: list[str]) -> tuple[int, int]:
    """Return (duplicate jobs, acknowledged enqueues missing) in the final ``queue.json``.

    Only meaningful for the ``enqueue`` workload, where no job leaves the state: every
    acknowledged payload must appear exactly once.
    """

    state = decode_state(data)
    counts = Counter(_payload_text(job.payload) for job in state.jobs)
    duplicates = sum(count - 1 for count in counts.values() if count > 1)
    lost = sum(1 for payload in acknowledged_payloads if counts[payload] == 0)
    return duplicates, lost


def _payload_text(raw: Any) -> str:
    value = msgspec.json.decode(raw)
    return value if isinstance(value, str) else repr(value)


# ----------------------------------------------------------------------------------------
# Checker timing
# ----------------------------------------------------------------------------------------


def checker_timing(
    *, clients: int, operations: int, keys: int, seed: int = 1, partition: bool = True,
    timeout: float = 20.0, repeat: int = 3,
) -> dict[str, Any]:
    """Simulate one store history and time the linearizability check of it.

    ``partition=False`` checks the history as one part although it touches ``keys`` keys,
    to show what splitting by key saves. ``check_s`` is the median wall time of ``repeat``
    checks in this process, so it varies with the machine and its load.
    """

    run_ = simulate(SimConfig(
        seed=seed, faults=DEFAULT_FAULTS,
        workload=WorkloadConfig(clients=clients, operations=operations, keys=keys),
    ))
    history_operations = operations_from_store_history(run_.history)
    model = object_store_model(TokenPolicy.UNIQUE)
    if not partition:
        model = dataclasses.replace(model, partition=None)
    elapsed_runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = check_operations(history_operations, model, timeout=timeout)
        elapsed_runs.append(time.perf_counter() - started)
    elapsed = statistics.median(elapsed_runs)
    return {
        "clients": clients,
        "operations": len(run_.history),
        "keys": keys,
        "partitioned": partition,
        "parts": len(result.partitions),
        "verdict": result.verdict.value,
        "check_s": elapsed,
        "steps": result.steps,
        "simulate_s": run_.wall_time,
    }


# ----------------------------------------------------------------------------------------
# Plot helpers
# ----------------------------------------------------------------------------------------


def select(rows: list[dict[str, Any]], **conditions: Any) -> list[dict[str, Any]]:
    """Return the rows whose fields equal every value in ``conditions``."""

    return [row for row in rows if all(row[key] == value for key, value in conditions.items())]


def column(rows: list[dict[str, Any]], name: str) -> list[Any]:
    return [row[name] for row in rows]


def check_axes(figure: Any) -> None:
    """Raise ``ValueError`` unless every plotted axis of ``figure`` has both axis labels,
    each with a unit in brackets, and a title."""

    for axis in figure.axes:
        if not axis.has_data():
            continue
        for label in (axis.get_xlabel(), axis.get_ylabel()):
            if not label or "(" not in label:
                raise ValueError(
                    f"axis {axis.get_title()!r} has label {label!r}; label both axes with a "
                    "unit in brackets, for example 'writers (count)'"
                )
        if not axis.get_title():
            raise ValueError("an axis has no title; give every panel a title")


def plot_by_group(axis: Any, rows: list[dict[str, Any]], x: str, y: str, group: str,
                  *, scale: float = 1.0, label: str = "{}", marker: str = "o") -> None:
    """Plot ``y`` against ``x``, one line per value of ``group`` in first-seen order."""

    groups: list[Any] = []
    for row in rows:
        if row[group] not in groups:
            groups.append(row[group])
    for value in groups:
        chosen = sorted(select(rows, **{group: value}), key=lambda row: row[x])
        axis.plot(column(chosen, x), [row[y] * scale for row in chosen], marker=marker,
                  label=label.format(value))


__all__ = [
    "MODES",
    "POLICIES",
    "CasCommitter",
    "CountingBackend",
    "RunConfig",
    "RunResult",
    "StoreSettings",
    "WriteStats",
    "check_axes",
    "checker_timing",
    "column",
    "plot_by_group",
    "run",
    "select",
    "sweep",
]
