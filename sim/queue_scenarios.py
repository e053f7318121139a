"""Named scenarios of the queue simulation and the schedules of fault events they run.

A scenario (``QueueScenario``) fixes everything but the seed and the fault schedule: how
many producers, workers and brokers run, the engine timings, the background faults of the
object store and of the client-to-broker network, and which kinds of scheduled fault
events a seed may draw.

A schedule (``FaultSchedule``) is a list of discrete fault events at virtual times: a
broker crashes, pauses or has its clock skewed, a worker crashes or stalls, or a window of
storage or network faults opens. A run without an explicit schedule draws one from its
seed (``schedule_for_seed``), so ``--seed N`` alone replays a run. Hypothesis builds
schedules with ``schedule_strategy`` and shrinks a failing one; ``FaultSchedule.dump``
writes it to a file that ``--schedule FILE`` replays.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osqueue.sim.faults import FaultConfig, Latency

EVENT_KINDS = (
    "broker_crash",
    "broker_pause",
    "broker_skew",
    "worker_crash",
    "worker_stall",
    "storage_drop_responses",
    "storage_errors",
    "network_drops",
)
"""Kinds of scheduled fault events.

Broker events count ``target`` from the broker leading at the time of the event (0: the
leader, 1: the next broker, and so on, modulo the number of brokers); worker events take
``target`` modulo the number of workers.

``broker_crash``: broker ``target`` stops at once and restarts ``duration`` seconds later.
``broker_pause``: broker ``target`` sends and receives nothing for ``duration`` seconds
(its timers go on), like a stop-the-world pause. ``broker_skew``: the clock of broker
``target`` runs ``offset`` seconds ahead (negative: behind) until the faults stop.
``worker_crash``: worker ``target`` stops and restarts ``duration`` seconds later.
``worker_stall``: worker ``target`` sends nothing for ``duration`` seconds, then resumes.
``storage_drop_responses``: for ``duration`` seconds every write is applied and its
response lost. ``storage_errors``: for ``duration`` seconds half of all storage requests
fail with 500, 503 or 429. ``network_drops``: for ``duration`` seconds half of all
client-to-broker requests or responses are lost.
"""

BROKER_EVENTS = frozenset({"broker_crash", "broker_pause", "broker_skew"})
WORKER_EVENTS = frozenset({"worker_crash", "worker_stall"})

MODES = ("brokered", "direct", "client-batch")
"""How clients reach ``queue.json``.

``brokered``: through one to three brokers, each a ``GroupCommitEngine``; one leads.
``direct``: every client reads, applies its one mutation with ``apply_batch`` and writes
with a CAS, with no broker. ``client-batch``: like ``direct``, but each client process
batches the mutations of its tasks into one CAS (group commit per client).
"""

FLAWS = ("reapply", "reregister")
"""Known flaws of the TypeScript engine that ``osqueue.sim.reference_engine`` reproduces.

``reapply``: after a write with an unknown outcome the batch is applied again on the state
read back, even when the first write landed. ``reregister``: a broker that finds another
broker's record after a CAS conflict writes itself back as leader instead of stepping down.
"""


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One scheduled fault: ``kind`` (see ``EVENT_KINDS``) at virtual time ``at``.

    ``target`` picks the broker or worker (see ``EVENT_KINDS``); ``duration`` and ``offset``
    are seconds.
    """

    at: float
    kind: str
    target: int = 0
    duration: float = 0.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(
                f"unknown fault event kind {self.kind!r}; use one of {', '.join(EVENT_KINDS)}")
        if self.at < 0 or self.duration < 0:
            raise ValueError(
                f"fault event {self.kind} needs at >= 0 and duration >= 0 seconds, got "
                f"at={self.at} duration={self.duration}")
        if self.target < 0:
            raise ValueError(f"fault event target must be >= 0, got {self.target}")

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        text = f"t={self.at:g} {self.kind} #{self.target}"
        if self.duration:
            text += f" for {self.duration:g} s"
        if self.offset:
            text += f" offset {self.offset:+g} s"
        return text


@dataclass(frozen=True, slots=True)
class FaultSchedule:
    """Fault events in time order (ties keep their given order)."""

    events: tuple[FaultEvent, ...] = ()

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.events, key=lambda event: event.at))
        object.__setattr__(self, "events", ordered)

    def to_record(self) -> dict[str, Any]:
        return {"events": [event.to_record() for event in self.events]}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> FaultSchedule:
        events = record.get("events") if isinstance(record, dict) else None
        if not isinstance(events, list) or not all(isinstance(item, dict) for item in events):
            raise ValueError(
                "a fault schedule is a JSON object with an 'events' list, for example "
                '{"events": [{"at": 2.0, "kind": "broker_crash", "target": 0, '
                '"duration": 3.0, "offset": 0.0}]}')
        try:
            return cls(tuple(FaultEvent(**event) for event in events))
        except TypeError as error:
            raise ValueError(
                f"invalid fault event in schedule: {error}; each event has the fields at, "
                "kind, target, duration and offset") from error

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_record(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> FaultSchedule:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read fault schedule {path}: {error}") from error
        return cls.from_record(record)

    def describe(self) -> str:
        return "; ".join(event.describe() for event in self.events) or "no scheduled faults"


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """The client-to-broker link: one-way latency, losses and the client's timeout."""

    latency: Latency = field(default_factory=lambda: Latency.lognormal(0.002, 0.5))
    drop_request: float = 0.0
    drop_response: float = 0.0
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class QueueScenario:
    """Everything a run depends on besides its seed and fault schedule. Times are seconds.

    The run has a fault phase of ``duration`` seconds, in which producers enqueue and all
    faults are on, followed by a drain phase of at most ``drain`` seconds with no faults,
    in which workers go on until every job is completed or dead-lettered.
    """

    name: str
    description: str
    mode: str = "brokered"
    brokers: int = 1
    producers: int = 2
    workers: int = 3
    jobs_per_producer: int = 15
    enqueue_interval: Latency = field(default_factory=lambda: Latency.uniform(0.1, 1.0))
    max_attempts: int = 3
    worker_types: tuple[tuple[str, ...] | None, ...] = (None, ("email",), None)
    """The job types each worker claims (None: any), cycled over the workers."""
    work_time: Latency = field(default_factory=lambda: Latency.uniform(0.1, 1.5))
    fail_rate: float = 0.15
    heartbeat_interval: float = 1.0
    poll_interval: float = 0.5
    client_concurrency: int = 1
    """Tasks per client process in ``client-batch`` mode."""
    duration: float = 30.0
    drain: float = 90.0
    lease_seconds: float = 6.0
    heartbeat_timeout: float = 4.0
    store_faults: FaultConfig = field(default_factory=FaultConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    event_kinds: tuple[str, ...] = ()
    """Kinds of fault events a seed draws its schedule from, uniformly (a kind listed twice
    is drawn twice as often). None: no scheduled faults."""
    events_per_run: int = 0
    max_event_duration: float = 8.0
    max_skew: float = 0.0
    engine_max_retries: int = 12

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if not 1 <= self.brokers <= 3:
            raise ValueError(f"brokers must be 1 to 3, got {self.brokers}")
        for kind in self.event_kinds:
            if kind not in EVENT_KINDS:
                raise ValueError(f"unknown fault event kind {kind!r} in scenario {self.name}")

    def job_types(self) -> tuple[str, ...]:
        return ("email", "resize")

    def to_record(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["store_faults"] = self.store_faults.to_record()
        return record


_QUIET_STORE = FaultConfig()

_FLAKY_STORE = FaultConfig(
    drop_request=0.02, drop_response=0.03, applied_late=0.02, error_rate=0.05,
    late_delay=Latency.uniform(0.01, 1.0),
)

_FLAKY_NETWORK = NetworkConfig(drop_request=0.01, drop_response=0.01, timeout=5.0)

_ALL_EVENTS = EVENT_KINDS


def _default() -> list[QueueScenario]:
    return [QueueScenario(
        name="default",
        description="one broker, two producers, three workers; flaky storage and network, "
                    "worker crashes and stalls, one broker crash",
        store_faults=FaultConfig(drop_request=0.01, drop_response=0.02, applied_late=0.01,
                                 error_rate=0.03, late_delay=Latency.uniform(0.01, 1.0)),
        network=_FLAKY_NETWORK,
        event_kinds=("worker_crash", "worker_stall", "broker_crash", "storage_drop_responses"),
        events_per_run=3,
    )]


def _contention() -> list[QueueScenario]:
    common: dict[str, Any] = {
        "producers": 6, "workers": 6, "jobs_per_producer": 10,
        "enqueue_interval": Latency.uniform(0.0, 0.3),
        "worker_types": (None,), "work_time": Latency.uniform(0.05, 0.3), "fail_rate": 0.1,
        "duration": 20.0, "drain": 90.0, "heartbeat_timeout": 6.0,
        "store_faults": FaultConfig(error_rate=0.02),
    }
    return [
        QueueScenario(
            name="contention/direct",
            description="no broker: every client does its own CAS read-modify-write",
            mode="direct", **common),
        QueueScenario(
            name="contention/client-batch",
            description="no broker: each client process batches its tasks' mutations",
            mode="client-batch", client_concurrency=4, **common),
        QueueScenario(
            name="contention/brokered",
            description="one broker group-commits everyone's mutations",
            mode="brokered", **common),
    ]


def _failover() -> list[QueueScenario]:
    return [QueueScenario(
        name="failover",
        description="three brokers; crashes, pauses past the lease, clock skew and restarts",
        brokers=3, duration=40.0, lease_seconds=3.0, heartbeat_timeout=4.0,
        store_faults=FaultConfig(drop_response=0.01, error_rate=0.02),
        network=NetworkConfig(drop_request=0.005, drop_response=0.005, timeout=5.0),
        # Pauses are listed twice so that seeds draw them twice as often: a leader pausing
        # past its lease is the failover that most needs fencing.
        event_kinds=("broker_pause", "broker_pause", "broker_crash", "broker_skew",
                     "worker_stall"),
        events_per_run=5, max_event_duration=8.0, max_skew=4.0,
    )]


def _flaky_storage() -> list[QueueScenario]:
    return [QueueScenario(
        name="flaky-storage",
        description="one broker on a store with frequent lost requests and responses, late "
                    "writes and 5xx/429/503 errors",
        store_faults=_FLAKY_STORE, network=_FLAKY_NETWORK,
        event_kinds=("storage_drop_responses", "storage_errors", "network_drops"),
        events_per_run=2, max_event_duration=3.0,
    )]


def _turbopuffer() -> list[QueueScenario]:
    return [QueueScenario(
        name="turbopuffer",
        description="about 200 ms per write and one write per second per object",
        brokers=2, producers=3, workers=4, jobs_per_producer=15,
        duration=40.0, drain=120.0, lease_seconds=15.0, heartbeat_timeout=15.0,
        heartbeat_interval=3.0, work_time=Latency.uniform(0.5, 3.0),
        store_faults=FaultConfig(
            read_latency=Latency.lognormal(0.05, 0.3),
            write_latency=Latency.lognormal(0.2, 0.2),
            write_rate_limit_per_second=1.0, drop_response=0.01, error_rate=0.01,
            timeout=2.0,
        ),
        network=NetworkConfig(timeout=10.0),
        event_kinds=("broker_crash", "worker_stall"), events_per_run=2,
        max_event_duration=20.0,
    )]


SCENARIOS = {
    "default": _default,
    "contention": _contention,
    "failover": _failover,
    "flaky-storage": _flaky_storage,
    "turbopuffer": _turbopuffer,
}
"""Scenario name to its variants. ``contention`` has three (one per mode)."""


def scenario_variants(name: str) -> list[QueueScenario]:
    """Return the variants of scenario ``name`` (``contention/direct`` picks one variant).

    Raises ``ValueError`` naming the valid scenarios for an unknown name.
    """

    base, _, variant = name.partition("/")
    factory = SCENARIOS.get(base)
    if factory is None:
        raise ValueError(
            f"unknown scenario {name!r}; use one of {', '.join(SCENARIOS)} (or a variant "
            "such as contention/direct)")
    variants = factory()
    if not variant:
        return variants
    chosen = [scenario for scenario in variants if scenario.name == name]
    if not chosen:
        names = ", ".join(scenario.name for scenario in variants)
        raise ValueError(f"unknown variant {name!r}; scenario {base} has {names}")
    return chosen


def schedule_for_seed(scenario: QueueScenario, seed: int) -> FaultSchedule:
    """Draw the fault schedule of ``seed`` from the scenario's event kinds."""

    if not scenario.event_kinds or scenario.events_per_run == 0:
        return FaultSchedule()
    rng = random.Random(f"schedule-{scenario.name}-{seed}")
    events = [
        _draw_event(scenario, rng) for _ in range(scenario.events_per_run)
    ]
    return FaultSchedule(tuple(events))


def _draw_event(scenario: QueueScenario, rng: random.Random) -> FaultEvent:
    kind = rng.choice(scenario.event_kinds)
    at = round(rng.uniform(1.0, scenario.duration * 0.8), 3)
    duration = round(rng.uniform(0.5, scenario.max_event_duration), 3)
    target = rng.randrange(3)
    offset = 0.0
    if kind == "broker_skew":
        offset = round(rng.uniform(-scenario.max_skew, scenario.max_skew), 3)
    return FaultEvent(at, kind, target, duration, offset)


def schedule_strategy(scenario: QueueScenario, kinds: Sequence[str] | None = None,
                      max_events: int = 6) -> Any:
    """Return a Hypothesis strategy of fault schedules for ``scenario``.

    Events shrink towards fewer events, earlier times, target 0 and short durations.
    """

    from hypothesis import strategies as st

    kinds = tuple(kinds or scenario.event_kinds or EVENT_KINDS)
    event = st.builds(
        FaultEvent,
        at=st.floats(0.0, scenario.duration * 0.8).map(lambda value: round(value, 2)),
        kind=st.sampled_from(kinds),
        target=st.integers(0, 2),
        duration=st.floats(0.0, scenario.max_event_duration).map(lambda value: round(value, 2)),
        offset=st.floats(-max(scenario.max_skew, 0.0), max(scenario.max_skew, 0.0)).map(
            lambda value: round(value, 2)),
    )
    return st.lists(event, max_size=max_events).map(lambda events: FaultSchedule(tuple(events)))


__all__ = [
    "EVENT_KINDS",
    "FLAWS",
    "MODES",
    "SCENARIOS",
    "FaultEvent",
    "FaultSchedule",
    "NetworkConfig",
    "QueueScenario",
    "scenario_variants",
    "schedule_for_seed",
    "schedule_strategy",
]
