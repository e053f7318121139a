"""The simulated object store: each fault kind, the rate limit, the lying mode and recording."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from osqueue.errors import (
    CASConflictError,
    ConflictReason,
    IndeterminateWriteError,
    InvalidVersionError,
    StorageBackendError,
)
from osqueue.sim.faults import FaultConfig, FaultKind, Latency
from osqueue.sim.recorder import HistoryRecorder
from osqueue.sim.store import SimulatedObjectStore
from osqueue.spec.cas import TokenPolicy, content_token
from osqueue.spec.history import OpKind, Outcome
from osqueue.storage.base import StorageBackend, StorageVersion

FIXED = Latency.constant(0.1)
"""Every operation takes 0.1 s, so the expected times below are exact."""


def quiet(**changes: Any) -> FaultConfig:
    """Return a fault config with fixed latency, a 1 s timeout and only ``changes`` on."""

    settings: dict[str, Any] = {"read_latency": FIXED, "write_latency": FIXED, "timeout": 1.0}
    settings.update(changes)
    return FaultConfig(**settings)


def run_virtual(body: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(body, clock=trio.testing.MockClock(autojump_threshold=0))


def make_store(faults: FaultConfig, policy: TokenPolicy = TokenPolicy.UNIQUE):
    store = SimulatedObjectStore(rng=random.Random(7), policy=policy, faults=faults)
    recorder = HistoryRecorder()
    backend = recorder.wrap(store.connect("c0"), "c0")
    return store, recorder, backend


def only_count(store: SimulatedObjectStore, kind: FaultKind, expected: int) -> None:
    for other, count in store.faults_injected.items():
        assert count == (expected if other is kind else 0), f"{other.value} counted {count}"


def test_store_satisfies_protocol():
    store = SimulatedObjectStore(rng=random.Random(1))
    assert isinstance(store, StorageBackend)
    assert isinstance(store.connect("c0"), StorageBackend)
    assert store.name == "sim"


def test_store_without_faults_follows_model():
    store, recorder, backend = make_store(quiet())

    async def body():
        created = await backend.create_if_not_exists("k", b"one")
        read = await backend.read("k")
        written = await backend.write("k", b"two", created)
        with pytest.raises(CASConflictError) as stale:
            await backend.write("k", b"three", created)
        with pytest.raises(CASConflictError) as exists:
            await backend.create_if_not_exists("k", b"four")
        return created, read, written, stale.value, exists.value

    created, read, written, stale, exists = run_virtual(body)
    assert read.data == b"one"
    assert read.version == created
    assert written != created
    assert stale.reason is ConflictReason.STALE_VERSION
    assert exists.reason is ConflictReason.EXISTS
    assert store.objects()["k"].data == b"two"
    outcomes = [op.outcome for op in recorder.history()]
    assert outcomes == [Outcome.OK, Outcome.OK, Outcome.OK, Outcome.CONFLICT, Outcome.CONFLICT]
    assert [op.op_id for op in recorder.history()] == [0, 1, 2, 3, 4]


def test_write_to_missing_key_conflicts():
    store, _recorder, backend = make_store(quiet())

    async def body():
        with pytest.raises(CASConflictError) as missing:
            await backend.write("k", b"x", StorageVersion("sim", "v1"))
        return missing.value

    assert run_virtual(body).reason is ConflictReason.MISSING
    assert store.objects() == {}


def test_foreign_version_rejected_before_sending():
    store, _recorder, _backend = make_store(quiet())

    async def body():
        with pytest.raises(InvalidVersionError):
            await store.write("k", b"x", StorageVersion("memory", 1))

    run_virtual(body)
    assert store.events_applied == 0


def test_latency_sets_completion_time():
    _store, recorder, backend = make_store(quiet())

    async def body():
        await backend.create_if_not_exists("k", b"x")
        await backend.read("k")

    run_virtual(body)
    first, second = recorder.history()
    assert first.invoked_at == 0.0
    assert first.completed_at == pytest.approx(0.1)
    assert second.invoked_at == pytest.approx(0.1)
    assert second.completed_at == pytest.approx(0.2)


def test_drop_request_not_applied():
    store, recorder, backend = make_store(quiet(drop_request=1.0))

    async def body():
        with pytest.raises(IndeterminateWriteError):
            await backend.create_if_not_exists("k", b"x")
        failed_at = trio.current_time()
        await store.settle()
        return failed_at

    assert run_virtual(body) == pytest.approx(1.0)
    assert store.objects() == {}
    only_count(store, FaultKind.DROP_REQUEST, 1)
    (operation,) = recorder.history()
    assert operation.outcome is Outcome.INDETERMINATE
    assert operation.completed_at is None
    assert operation.data == b"x"


def test_drop_response_applied():
    store, recorder, backend = make_store(quiet(drop_response=1.0))

    async def body():
        with pytest.raises(IndeterminateWriteError):
            await backend.create_if_not_exists("k", b"x")
        return trio.current_time()

    assert run_virtual(body) == pytest.approx(1.0)
    assert store.objects()["k"].data == b"x"
    only_count(store, FaultKind.DROP_RESPONSE, 1)
    (operation,) = recorder.history()
    assert operation.outcome is Outcome.INDETERMINATE
    assert operation.completed_at is None


def test_applied_late_takes_effect_after_timeout():
    faults = quiet(applied_late=1.0, late_delay=Latency.constant(0.5))
    store, recorder, backend = make_store(faults)

    async def body():
        with pytest.raises(IndeterminateWriteError):
            await backend.create_if_not_exists("k", b"x")
        at_timeout = (trio.current_time(), dict(store.objects()))
        await store.settle()
        return at_timeout, trio.current_time()

    (timeout_time, objects_at_timeout), settled_time = run_virtual(body)
    assert timeout_time == pytest.approx(1.0)
    assert objects_at_timeout == {}
    assert settled_time == pytest.approx(1.5)
    assert store.objects()["k"].data == b"x"
    only_count(store, FaultKind.APPLIED_LATE, 1)
    assert recorder.history()[0].outcome is Outcome.INDETERMINATE


def test_late_write_seen_by_later_read():
    faults = quiet(applied_late=1.0, late_delay=Latency.constant(0.5))
    store, _recorder, backend = make_store(faults)
    reader = store.connect("c1")

    async def body():
        with pytest.raises(IndeterminateWriteError):
            await backend.create_if_not_exists("k", b"x")
        before = await reader.read("k")
        await trio.sleep(1.0)
        after = await reader.read("k")
        return before, after

    before, after = run_virtual(body)
    assert before is None
    assert after is not None and after.data == b"x"


@pytest.mark.parametrize(
    ("status", "kind"),
    [(500, FaultKind.ERROR_500), (503, FaultKind.ERROR_503), (429, FaultKind.ERROR_429)],
)
def test_transient_error_not_applied(status, kind):
    store, recorder, backend = make_store(quiet(error_rate=1.0, error_statuses=(status,)))

    async def body():
        with pytest.raises(StorageBackendError) as write_error:
            await backend.create_if_not_exists("k", b"x")
        with pytest.raises(StorageBackendError) as read_error:
            await backend.read("k")
        return write_error.value, read_error.value

    write_error, read_error = run_virtual(body)
    for error in (write_error, read_error):
        assert error.retryable
        assert error.status == status
    assert store.objects() == {}
    only_count(store, kind, 2)
    assert [op.outcome for op in recorder.history()] == [Outcome.FAILED, Outcome.FAILED]
    assert all(op.completed_at is not None for op in recorder.history())


def test_rate_limit_rejects_fast_writes():
    store, recorder, backend = make_store(quiet(write_rate_limit_per_second=1.0))

    async def body():
        version = await backend.create_if_not_exists("k", b"1")
        with pytest.raises(StorageBackendError) as limited:
            await backend.write("k", b"2", version)
        await trio.sleep(1.0)
        await backend.write("k", b"3", version)
        return limited.value

    limited = run_virtual(body)
    assert limited.status == 429
    assert limited.retryable
    assert store.objects()["k"].data == b"3"
    only_count(store, FaultKind.RATE_LIMITED, 1)
    outcomes = [op.outcome for op in recorder.history()]
    assert outcomes == [Outcome.OK, Outcome.FAILED, Outcome.OK]


def test_rate_limit_is_per_object():
    store, _recorder, backend = make_store(quiet(write_rate_limit_per_second=1.0))

    async def body():
        await backend.create_if_not_exists("a", b"1")
        await backend.create_if_not_exists("b", b"1")

    run_virtual(body)
    assert sorted(store.objects()) == ["a", "b"]
    assert store.faults_injected[FaultKind.RATE_LIMITED] == 0


def test_slow_write_times_out():
    faults = quiet(write_latency=Latency.constant(3.0))
    store, recorder, backend = make_store(faults)

    async def body():
        with pytest.raises(IndeterminateWriteError):
            await backend.create_if_not_exists("k", b"x")
        await store.settle()

    run_virtual(body)
    only_count(store, FaultKind.TIMEOUT, 1)
    assert store.objects()["k"].data == b"x"
    assert recorder.history()[0].outcome is Outcome.INDETERMINATE


def test_lying_store_ignores_preconditions():
    store, recorder, backend = make_store(quiet(lying=True))

    async def body():
        first = await backend.create_if_not_exists("k", b"1")
        await backend.write("k", b"2", first)
        await backend.write("k", b"3", first)
        await backend.create_if_not_exists("k", b"4")
        await backend.write("missing", b"5", first)

    run_virtual(body)
    assert store.objects()["k"].data == b"4"
    assert store.objects()["missing"].data == b"5"
    only_count(store, FaultKind.PRECONDITION_IGNORED, 3)
    assert all(op.outcome is Outcome.OK for op in recorder.history())


def test_content_hash_tokens_are_md5():
    store, recorder, backend = make_store(quiet(), TokenPolicy.CONTENT_HASH)

    async def body():
        version = await backend.create_if_not_exists("k", b"A")
        version = await backend.write("k", b"B", version)
        return await backend.write("k", b"A", version)

    version = run_virtual(body)
    assert version.value == content_token(b"A")
    tokens = [op.token for op in recorder.history()]
    assert tokens == [content_token(b"A"), content_token(b"B"), content_token(b"A")]
    assert store.policy is TokenPolicy.CONTENT_HASH


def test_recorder_fields_of_write():
    _store, recorder, backend = make_store(quiet())

    async def body():
        version = await backend.create_if_not_exists("k", b"1")
        await backend.write("k", b"2", version)

    run_virtual(body)
    create, write = recorder.history()
    assert create.kind is OpKind.CREATE
    assert create.token == "v1"
    assert write.kind is OpKind.WRITE
    assert write.expected == "v1"
    assert write.token == "v2"
    assert write.data == b"2"


def test_recorder_rejects_second_wrap():
    store = SimulatedObjectStore(rng=random.Random(1))
    recorder = HistoryRecorder()
    recorder.wrap(store.connect("c0"), "c0")
    with pytest.raises(ValueError, match="already recorded"):
        recorder.wrap(store.connect("c0"), "c0")


@pytest.mark.parametrize("second_starts_first", [True, False])
def test_same_instant_events_apply_in_key_order(second_starts_first):
    # Late writes with a constant delay take effect at the same instant (1.5 s). The
    # connection order decides which one wins, not the order in which trio runs the tasks.
    faults = quiet(applied_late=1.0, late_delay=Latency.constant(0.5))
    store = SimulatedObjectStore(rng=random.Random(3), faults=faults)
    first, second = store.connect("c0"), store.connect("c1")
    order = [(second, b"second"), (first, b"first")]
    if not second_starts_first:
        order.reverse()

    async def body():
        async with trio.open_nursery() as nursery:
            for backend, data in order:
                nursery.start_soon(_create_ignoring_errors, backend, data)
        await store.settle()

    run_virtual(body)
    assert store.objects()["k"].data == b"first"
    assert store.faults_injected[FaultKind.APPLIED_LATE] == 2


async def _create_ignoring_errors(backend: StorageBackend, data: bytes) -> None:
    try:
        await backend.create_if_not_exists("k", data)
    except IndeterminateWriteError:
        pass


@pytest.mark.parametrize(
    "changes",
    [
        {"drop_request": 1.5},
        {"error_rate": -0.1},
        {"drop_request": 0.6, "drop_response": 0.6},
        {"timeout": 0},
        {"error_statuses": (404,)},
        {"write_rate_limit_per_second": 0},
        {"rate_limit_burst": 0},
    ],
)
def test_fault_config_rejects_invalid(changes):
    with pytest.raises(ValueError):
        FaultConfig(**changes)


def test_latency_rejects_unknown_distribution():
    with pytest.raises(ValueError, match="unknown latency distribution"):
        Latency("pareto")


def test_latency_draws_stay_positive():
    rng = random.Random(5)
    draws = [Latency.uniform(0.0, 0.0).sample(rng) for _ in range(10)]
    assert min(draws) > 0
    lognormal = [Latency.lognormal(0.05, 1.0).sample(rng) for _ in range(1000)]
    assert min(lognormal) > 0
    assert 0.03 < sorted(lognormal)[500] < 0.08


def test_store_requires_random_instance():
    with pytest.raises(TypeError, match="seeded random.Random"):
        SimulatedObjectStore(rng=7)  # type: ignore[arg-type]
