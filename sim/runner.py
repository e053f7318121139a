"""One simulation run: build the store and clients, run them in virtual time, check the history.

``simulate(config)`` is a pure function of ``config``: the same configuration gives the same
history, byte for byte, in any process and under any ``PYTHONHASHSEED``. ``check_run`` checks
the history with the spec predicates (``osqueue.spec.history.check_history``) and with the
linearizability checker against the object-store model (``osqueue.checker``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from osqueue.sim.clock import ClockMonitor, virtual_clock
from osqueue.sim.faults import DEFAULT_FAULTS, FaultConfig, FaultKind
from osqueue.sim.recorder import HistoryRecorder
from osqueue.sim.store import SimulatedObjectStore
from osqueue.sim.workload import SimClient, WorkloadConfig
from osqueue.spec.cas import TokenPolicy
from osqueue.spec.history import StoreOperation, Violation, check_history
from osqueue.storage.base import StorageBackend
from osqueue.storage.throttled import ThrottledStorageBackend

logger = logging.getLogger(__name__)

HISTORY_FORMAT = "osqueue-history"
HISTORY_VERSION = 1
HISTORY_FILE = "history.jsonl"
REPORT_FILE = "report.html"

DEFAULT_CHECK_TIMEOUT = 60.0
"""Wall seconds the linearizability search gets by default before its verdict is unknown."""

VIRTUAL_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
"""The wall-clock date at virtual time 0, for the throttle's daily write budget."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything a run depends on. Two runs with equal configs produce equal histories."""

    seed: int = 1
    policy: TokenPolicy = TokenPolicy.UNIQUE
    faults: FaultConfig = DEFAULT_FAULTS
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)

    def __post_init__(self) -> None:
        # random.Random(-n) draws the same numbers as random.Random(n), so a negative seed
        # would repeat another seed's history under a different name.
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

        # ThrottledStorageBackend rejects these only when the run builds the clients, which
        # in a sweep would fail every seed instead of the configuration.
        for name in ("reads_per_minute", "writes_per_minute"):
            rate = getattr(self.workload, name)
            if rate is not None and not (math.isfinite(rate) and rate > 0):
                raise ValueError(
                    f"workload.{name} must be a finite number > 0 or None (no limit), "
                    f"got {rate}"
                )

    def to_record(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "token_policy": self.policy.value,
            "faults": self.faults.to_record(),
            "workload": self.workload.to_record(),
        }


@dataclass(slots=True)
class SimRun:
    """The result of one run: the history and what the store and clients went through."""

    config: SimConfig
    history: list[StoreOperation]
    faults_injected: dict[str, int]
    """Injected faults by ``FaultKind`` value, in the order of ``FaultKind``."""
    client_errors: dict[str, int]
    """Errors the clients caught, by kind, in sorted order."""
    virtual_duration: float
    wall_time: float
    clock_readings: int
    """How many times ``ClockMonitor`` checked that the virtual clock did not go back."""
    final_tokens: dict[str, str]
    """The token of every key after all late writes took effect, by key in sorted order."""


def simulate(config: SimConfig, *, instruments: Sequence[trio.abc.Instrument] = ()) -> SimRun:
    """Run the clients of ``config`` against a simulated store in virtual time.

    ``instruments`` are extra trio instruments, for tests that watch the scheduler.
    """

    started = time.perf_counter()
    clock, monitor = virtual_clock()
    logger.info("simulation of seed %d starts", config.seed)
    run = trio.run(
        _simulate, config, monitor, clock=clock, instruments=[monitor, *instruments]
    )
    run.wall_time = time.perf_counter() - started
    logger.info(
        "simulation of seed %d finished: %d operations, %.1f virtual s, %.2f wall s",
        config.seed, len(run.history), run.virtual_duration, run.wall_time,
    )
    return run


async def _simulate(config: SimConfig, monitor: ClockMonitor) -> SimRun:
    # Every random stream comes from this one generator, drawn in a fixed order.
    master = random.Random(config.seed)
    store = SimulatedObjectStore(
        rng=random.Random(master.getrandbits(64)),
        policy=config.policy,
        faults=config.faults,
        clock=monitor.now,
        sleep_until=trio.sleep_until,
    )
    recorder = HistoryRecorder(clock=monitor.now)
    workload = config.workload

    clients: list[SimClient] = []
    for index in range(workload.clients):
        name = f"c{index}"
        backend = _client_backend(store, name, workload, monitor)
        clients.append(SimClient(
            name,
            recorder.wrap(backend, name),
            random.Random(master.getrandbits(64)),
            workload,
            workload.budget(index),
            trio.sleep,
        ))

    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(client.run, name=f"client {client.name}")
    await store.settle()

    client_errors: dict[str, int] = {}
    for client in clients:
        for kind, count in client.errors.items():
            client_errors[kind] = client_errors.get(kind, 0) + count
    return SimRun(
        config=config,
        history=recorder.history(),
        faults_injected={kind.value: store.faults_injected[kind] for kind in FaultKind},
        client_errors=dict(sorted(client_errors.items())),
        virtual_duration=monitor.now(),
        wall_time=0.0,
        clock_readings=monitor.readings,
        final_tokens={key: stored.token for key, stored in store.objects().items()},
    )


def _client_backend(
    store: SimulatedObjectStore, name: str, workload: WorkloadConfig, monitor: ClockMonitor
) -> StorageBackend:
    backend: StorageBackend = store.connect(name)
    if not workload.throttled:
        return backend

    def virtual_wall_clock() -> dt.datetime:
        return VIRTUAL_EPOCH + dt.timedelta(seconds=monitor.now())

    # One throttle per client, as each client process would have its own.
    return ThrottledStorageBackend(
        backend,
        reads_per_minute=workload.reads_per_minute,
        writes_per_minute=workload.writes_per_minute,
        clock=monitor.now,
        wall_clock=virtual_wall_clock,
        sleep=trio.sleep,
    )


# -- checking ---------------------------------------------------------------------------


@dataclass(slots=True)
class CheckOutcome:
    """The verdicts on one history. It passes only if both checks pass.

    ``linearizability`` is the checker's ``CheckResult``, or None when the checker could not
    run (``linearizability_error`` gives the reason); a missing or ``UNKNOWN`` verdict is a failure.
    """

    violations: list[Violation]
    linearizability: Any | None
    linearizability_error: str | None = None

    @property
    def predicates_passed(self) -> bool:
        return not self.violations

    @property
    def verdict(self) -> str:
        """The linearizability verdict as text: ``linearizable``, ``not linearizable``,
        ``unknown`` or ``not checked``."""

        if self.linearizability is None:
            return "not checked"
        return str(self.linearizability.verdict.value)

    @property
    def linearizable(self) -> bool:
        return self.linearizability is not None and bool(self.linearizability.verdict.passed)

    @property
    def passed(self) -> bool:
        return self.predicates_passed and self.linearizable


def check_run(run: SimRun, *, timeout: float | None = DEFAULT_CHECK_TIMEOUT) -> CheckOutcome:
    """Check ``run.history`` with the spec predicates and for linearizability.

    ``timeout`` bounds the linearizability search in wall seconds; when it runs out the
    verdict is ``UNKNOWN``, which fails the run.
    """

    violations = check_history(run.history, run.config.policy)
    try:
        from osqueue.checker import check_store_history
    except ImportError as error:
        # NOTE: only while the checker package lacks check_store_history; counts as a failure.
        logger.warning("linearizability checker unavailable: %s", error)
        return CheckOutcome(violations, None, f"checker unavailable: {error}")

    result = check_store_history(run.history, run.config.policy, timeout=timeout)
    return CheckOutcome(violations, result)


def render_report(run: SimRun, outcome: CheckOutcome) -> str | None:
    """Return the checker's HTML report on the run, or None when there is nothing to show."""

    if outcome.linearizability is None:
        return None
    from osqueue.checker import object_store_model, operations_from_store_history, render_html

    operations = operations_from_store_history(run.history)
    html = render_html(outcome.linearizability, operations, object_store_model(run.config.policy))
    return html or None


# -- files ----------------------------------------------------------------------------


def history_header(config: SimConfig) -> dict[str, Any]:
    """Return the first line of ``history.jsonl``: the format, the seed and the config."""

    return {
        "format": HISTORY_FORMAT,
        "version": HISTORY_VERSION,
        "model": "object-store",
        "policy": config.policy.value,
        "source": "osqueue.sim",
        "seed": config.seed,
        "config": config.to_record(),
    }


def history_lines(run: SimRun) -> Iterator[str]:
    """Yield the lines of ``history.jsonl``: the header, then one operation per line."""

    yield _dump(history_header(run.config))
    for operation in run.history:
        yield _dump(operation.to_record())


def _dump(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True)


def write_history(run: SimRun, path: Path) -> None:
    """Write the history of ``run`` to ``path`` as JSON lines (see ``history_lines``)."""

    with path.open("w", encoding="utf-8", newline="\n") as stream:
        for line in history_lines(run):
            stream.write(line)
            stream.write("\n")


def read_history(path: Path) -> tuple[dict[str, Any], list[StoreOperation]]:
    """Read a ``history.jsonl`` written by ``write_history``: the header and the operations."""

    with path.open(encoding="utf-8") as stream:
        lines = [line for line in stream if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty; expected a header line and operations")
    header = json.loads(lines[0])
    if header.get("format") != HISTORY_FORMAT:
        raise ValueError(
            f"{path} does not start with an {HISTORY_FORMAT!r} header line; "
            "write it with `osqueue sim --out DIR`"
        )
    operations = [StoreOperation.from_record(json.loads(line)) for line in lines[1:]]
    return header, operations


def write_outputs(run: SimRun, outcome: CheckOutcome, directory: Path) -> list[Path]:
    """Write ``history.jsonl`` and, when the checker renders one, ``report.html``."""

    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / HISTORY_FILE]
    write_history(run, written[0])
    html = render_report(run, outcome)
    if html is not None:
        report = directory / REPORT_FILE
        report.write_text(html, encoding="utf-8")
        written.append(report)
    return written
