"""Fault tests of the exactly-once commit protocol and of fencing.

Each test names the flawed behaviour it would catch. All run under trio with a MockClock.
"""

from __future__ import annotations

import anyio
import pytest
import trio.testing
from osqueue.election import LeaseHeldError, NotLeaderError, acquire
from osqueue.engine import CommitIndeterminateError
from osqueue.errors import IndeterminateWriteError, StorageBackendError
from osqueue.spec import queue as spec
from osqueue.storage.memory import Fault, MemoryBackend

from tests.engine_support import (
    KEY,
    Clock,
    HookedBackend,
    enqueue,
    foreign_commit,
    job_ids,
    make_engine,
    stored_state,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


# Lost responses and lost requests ----------------------------------------------------------


async def test_dropped_response_claim_marks_one_job():
    # Flaw caught: re-applying a claim whose write landed would mark a second job in progress.
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        await engine.submit(spec.Enqueue((spec.NewJob("a"), spec.NewJob("a"))))
        backend.inject(Fault.DROP_RESPONSE, operations=("write",))
        claimed = await engine.submit(spec.Claim("w"))

    state = await stored_state(backend)
    assert claimed.job_id == "job-1"
    assert [job.status for job in state.jobs] == ["in_progress", "unclaimed"]
    assert state.counters.claimed == 1
    assert state.jobs[0].claim_token == claimed.token
    assert engine.stats.indeterminate == 1


async def test_dropped_response_enqueue_not_duplicated():
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        backend.inject(Fault.DROP_RESPONSE, operations=("write",))
        result = await engine.enqueue("a")
        await engine.enqueue("b")

    state = await stored_state(backend)
    assert result == spec.Enqueued(("job-1",))
    assert job_ids(state) == ["job-1", "job-2"]
    assert state.counters.enqueued == 2


async def test_dropped_response_then_other_writer_still_found():
    # The batch landed, then another writer committed on top: the commit id proves it landed.
    inner = MemoryBackend()
    backend = HookedBackend(inner)

    async with make_engine(backend) as engine:
        async def drop_then_foreign(number: int) -> None:
            if number == 2:
                inner.inject(Fault.DROP_RESPONSE, operations=("write",))

        backend.before_write = drop_then_foreign
        await engine.enqueue("a")
        original_read = inner.read

        async def read_after_foreign(key):
            inner.read = original_read
            await foreign_commit(inner, "other-1", [enqueue(job_id="theirs")])
            return await original_read(key)

        inner.read = read_after_foreign
        result = await engine.enqueue("b")

    assert result == spec.Enqueued(("job-2",))
    assert job_ids(await stored_state(inner)) == ["job-1", "job-2", "theirs"]


async def test_dropped_request_resends_same_bytes():
    backend = HookedBackend(MemoryBackend())
    sent: list[bytes] = []
    original = backend.inner.write

    async def record(key, data, expected):
        sent.append(data)
        return await original(key, data, expected)

    backend.inner.write = record
    async with make_engine(backend) as engine:
        await engine.enqueue("a")
        backend.inner.inject(Fault.DROP_REQUEST, operations=("write",))
        result = await engine.enqueue("b")
        written = list(sent)

    assert result == spec.Enqueued(("job-2",))
    assert written[-1] == written[-2]
    assert job_ids(await stored_state(backend.inner)) == ["job-1", "job-2"]


async def test_lost_request_reapplied_after_other_commit():
    # Flaw caught: taking "the version changed" as proof that our batch landed loses it.
    inner = MemoryBackend()

    async def lose_request_after_foreign_commit(number: int) -> None:
        if number == 2:
            await foreign_commit(inner, "other-1", [enqueue(job_id="theirs")])
            raise IndeterminateWriteError(KEY, "test: request lost")

    backend = HookedBackend(inner, lose_request_after_foreign_commit)
    async with make_engine(backend) as engine:
        await engine.submit(enqueue(job_id="first"))
        result = await engine.submit(enqueue(job_id="mine"))

    state = await stored_state(inner)
    assert result == spec.Enqueued(("mine",))
    assert job_ids(state) == ["first", "theirs", "mine"]
    assert engine.stats.indeterminate == 1


async def test_unsettleable_outcome_is_never_success():
    # The record of the commit after our base was pruned: the outcome cannot be proven.
    inner = MemoryBackend()

    async def lose_request_after_many_commits(number: int) -> None:
        if number == 2:
            for index in range(3):
                await foreign_commit(inner, f"other-{index}", max_recent_commits=2)
            raise IndeterminateWriteError(KEY, "test: request lost")

    backend = HookedBackend(inner, lose_request_after_many_commits)
    async with make_engine(backend, max_recent_commits=2) as engine:
        await engine.submit(enqueue(job_id="first"))
        with pytest.raises(CommitIndeterminateError):
            await engine.submit(enqueue(job_id="mine"))
        after = await engine.submit(enqueue(job_id="later"))

    assert after == spec.Enqueued(("later",))
    assert job_ids(await stored_state(inner)) == ["first", "later"]


async def test_existing_object_is_not_proof_of_landing():
    # A write lost while the state stayed put, then every read-back fails: indeterminate.
    inner = MemoryBackend()

    async def lose_request(number: int) -> None:
        if number == 2:
            inner.inject(Fault.UNAVAILABLE, operations=("read",))
            raise IndeterminateWriteError(KEY, "test: request lost")

    backend = HookedBackend(inner, lose_request)
    async with make_engine(backend) as engine:
        await engine.submit(enqueue(job_id="first"))
        with pytest.raises(CommitIndeterminateError):
            await engine.submit(enqueue(job_id="mine"))


# Read failures, 409 and 429 --------------------------------------------------------------


async def test_read_failure_during_retry_fails_only_that_batch():
    inner = MemoryBackend()
    gate = anyio.Event()

    async def conflict_then_failing_read(number: int) -> None:
        if number == 2:
            await gate.wait()
            await foreign_commit(inner, "other-1")
            inner.inject(Fault.UNAVAILABLE, operations=("read",))

    backend = HookedBackend(inner, conflict_then_failing_read)
    outcomes: dict[str, object] = {}

    async def submit(engine, name):
        try:
            outcomes[name] = await engine.submit(enqueue(job_id=name))
        except StorageBackendError as error:
            outcomes[name] = error

    with anyio.fail_after(30):
        async with make_engine(backend) as engine, anyio.create_task_group() as group:
            await engine.submit(enqueue(job_id="first"))
            group.start_soon(submit, engine, "failing")
            await anyio.wait_all_tasks_blocked()
            group.start_soon(submit, engine, "later")
            await anyio.wait_all_tasks_blocked()
            gate.set()

    assert isinstance(outcomes["failing"], StorageBackendError)
    assert outcomes["later"] == spec.Enqueued(("later",))
    assert job_ids(await stored_state(inner)) == ["first", "later"]


async def test_concurrent_request_409_is_retried():
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        backend.inject(Fault.CONCURRENT_REQUEST, times=2, operations=("write",))
        result = await engine.enqueue("a")

    assert result == spec.Enqueued(("job-1",))
    assert engine.stats.concurrent_requests == 2
    assert engine.stats.reads == 0
    assert job_ids(await stored_state(backend)) == ["job-1"]


async def test_rate_limit_collects_next_batch_while_backing_off():
    inner = MemoryBackend()

    async def rate_limited(number: int) -> None:
        if number <= 4:
            raise StorageBackendError("test: 429", key=KEY, retryable=True, status=429)

    backend = HookedBackend(inner, rate_limited)
    results = []

    async def submit(engine, name):
        results.append(await engine.submit(enqueue(job_id=name)))

    async with make_engine(backend) as engine, anyio.create_task_group() as group:
        group.start_soon(submit, engine, "first")
        await anyio.wait_all_tasks_blocked()
        assert engine.stats.rate_limited == 1
        for number in range(20):
            group.start_soon(submit, engine, f"during-{number}")

    state = await stored_state(inner)
    assert len(results) == 21
    assert len(state.jobs) == 21
    assert engine.stats.rate_limited == 4
    assert list(engine.stats.batch_sizes)[:2] == [1, 20]


# Fencing and election ---------------------------------------------------------------------


async def seed_epoch(backend: MemoryBackend, clock: Clock, epoch_before: int) -> None:
    """Make the next acquire take epoch ``epoch_before + 1``."""

    for number in range(epoch_before):
        await acquire(backend, key=KEY, address=f"old-{number}", clock=clock,
                      lease_seconds=1.0, commit_id=f"seed-{number}", max_recent_commits=8)
        clock.jump(2.0)


async def test_deposed_broker_acknowledges_nothing_buffered():
    # Broker A leads epoch 7 and pauses past its lease; B takes epoch 8. A's held write then
    # conflicts, A reads epoch 8 and steps down: the batch and its buffered mutations fail.
    inner = MemoryBackend()
    clock = Clock()
    await seed_epoch(inner, clock, 6)
    gate = anyio.Event()

    async def pause(number: int) -> None:
        if number == 3:  # 1 is the takeover, 2 the first enqueue
            await gate.wait()

    backend = HookedBackend(inner, pause)
    errors: list[BaseException] = []

    async def submit(engine, name):
        try:
            await engine.submit(enqueue(job_id=name))
        except NotLeaderError as error:
            errors.append(error)

    broker_a = make_engine(backend, clock, address="broker-a", lease_seconds=10.0,
                           renew_deadline=9.0, renew_interval=3.0)
    with anyio.fail_after(60):
        async with broker_a, anyio.create_task_group() as group:
            assert broker_a.epoch == 7
            await broker_a.submit(enqueue(job_id="before"))
            group.start_soon(submit, broker_a, "in-flight")
            await anyio.wait_all_tasks_blocked()
            for number in range(5):
                group.start_soon(submit, broker_a, f"buffered-{number}")
            await anyio.wait_all_tasks_blocked()

            clock.jump(11.0)
            broker_b = make_engine(inner, clock, address="broker-b", lease_seconds=10.0,
                                   seed=2, renew_deadline=9.0, renew_interval=3.0)
            async with broker_b:
                assert broker_b.epoch == 8
                await broker_b.submit(enqueue(job_id="from-b"))
                gate.set()
                with anyio.fail_after(5):
                    while len(errors) < 6:
                        await anyio.sleep(0.01)
                assert not broker_a.is_leader
                with pytest.raises(NotLeaderError):
                    await broker_a.submit(enqueue(job_id="after"))
                await broker_b.submit(enqueue(job_id="from-b-2"))

    state = await stored_state(inner)
    assert job_ids(state) == ["before", "from-b", "from-b-2"]
    # broker-b released its lease at its clean stop; the epoch stays.
    assert state.broker.address is None
    assert state.broker.epoch == 8


async def test_deposed_broker_does_not_reclaim_lease():
    # Flaw caught: a deposed broker that re-registers itself on a CAS conflict would write
    # epoch 9 (or its own address) and both brokers would believe they lead.
    inner = MemoryBackend()
    clock = Clock()
    backend = HookedBackend(inner)
    broker_a = make_engine(backend, clock, address="broker-a", lease_seconds=10.0)

    async with broker_a:
        await broker_a.submit(enqueue(job_id="a-1"))
        clock.jump(11.0)
        leadership = await acquire(inner, key=KEY, address="broker-b", clock=clock,
                                   lease_seconds=10.0, commit_id="b-take", max_recent_commits=8)
        clock.jump(-10.0)  # A's own clock says its lease is fresh: only the fence stops it.
        with pytest.raises(NotLeaderError, match="replaced by 'broker-b' in epoch 2"):
            await broker_a.submit(enqueue(job_id="a-2"))
        writes_after = backend.writes

    state = await stored_state(inner)
    assert leadership.epoch == 2
    assert state.broker.address == "broker-b"
    assert state.broker.epoch == 2
    assert job_ids(state) == ["a-1"]
    assert backend.writes == writes_after


async def test_broker_past_renew_deadline_steps_down():
    inner = MemoryBackend()
    clock = Clock()
    backend = HookedBackend(inner)

    async with make_engine(backend, clock, lease_seconds=10.0) as engine:
        await engine.submit(enqueue(job_id="a-1"))
        writes = backend.writes
        clock.jump(7.0)
        with pytest.raises(NotLeaderError, match="renew deadline"):
            await engine.submit(enqueue(job_id="a-2"))

    assert backend.writes == writes
    assert job_ids(await stored_state(inner)) == ["a-1"]


async def test_step_down_with_write_in_doubt_is_indeterminate():
    # The batch's write landed but its response was lost, and the renew deadline passed
    # before the engine could read back: its callers must not be told "not applied".
    inner = MemoryBackend()
    clock = Clock()

    async def land_then_lose_response(number: int) -> None:
        if number == 2:
            clock.jump(25.0)
            inner.inject(Fault.DROP_RESPONSE, operations=("write",))

    backend = HookedBackend(inner, land_then_lose_response)
    async with make_engine(backend, clock, lease_seconds=30.0) as engine:
        await engine.submit(enqueue(job_id="first"))
        with pytest.raises(CommitIndeterminateError, match="stepped down") as caught:
            await engine.submit(enqueue(job_id="landed"))
        assert "outcome of the batch is unknown" in str(caught.value)
        assert "not applied" not in str(caught.value)
        assert "renew deadline" in str(caught.value.__cause__)
        with pytest.raises(NotLeaderError):
            await engine.submit(enqueue(job_id="after"))

    assert job_ids(await stored_state(inner)) == ["first", "landed"]


async def test_broker_that_cannot_renew_steps_down():
    inner = MemoryBackend()
    clock = Clock()

    async def unavailable(number: int) -> None:
        if number >= 2:
            raise StorageBackendError("test: 503", key=KEY, retryable=True, status=503)

    backend = HookedBackend(inner, unavailable)
    with anyio.fail_after(60):
        async with make_engine(backend, clock, lease_seconds=9.0) as engine:
            await anyio.sleep(20.0)
            assert not engine.is_leader
            with pytest.raises(NotLeaderError):
                await engine.enqueue("a")


async def test_second_broker_waits_for_live_lease():
    backend = MemoryBackend()
    clock = Clock()

    async with make_engine(backend, clock, address="broker-a", lease_seconds=10.0):
        with pytest.raises(LeaseHeldError, match="broker 'broker-a' holds the lease"):
            async with make_engine(backend, clock, address="broker-b", lease_seconds=10.0):
                pass
        # A release that fails leaves the lease to lapse, as after a crash.
        backend.inject(Fault.UNAVAILABLE, operations=("write",))

    started = anyio.current_time()
    waiting = make_engine(backend, clock, address="broker-b", lease_seconds=10.0)
    waiting._wait_for_lease = True
    async with waiting:
        assert waiting.epoch == 2
        assert anyio.current_time() - started > 10.0


# Stale worker ----------------------------------------------------------------------------


async def test_stale_worker_completion_is_rejected():
    backend = MemoryBackend()
    clock = Clock()

    async with make_engine(backend, clock, heartbeat_timeout=5.0) as engine:
        await engine.submit(enqueue(job_id="J"))
        worker_a = await engine.submit(spec.Claim("worker-a"))
        await anyio.sleep(6.0)
        worker_b = await engine.submit(spec.Claim("worker-b"))
        late = await engine.submit(spec.Complete("J", worker_a.token))
        done = await engine.submit(spec.Complete("J", worker_b.token))

    state = await stored_state(backend)
    assert worker_b.job_id == "J"
    assert worker_b.attempt == 2
    assert late.reason is spec.RejectReason.STALE_CLAIM
    assert done == spec.Acknowledged()
    assert state.counters.completed == 1
    assert state.counters.expired == 1
    assert state.jobs == []


# Start-up retries and rate limits ----------------------------------------------------------


@pytest.mark.parametrize(
    ("operations", "existing"),
    [(("read",), False), (("create",), False), (("read",), True), (("write",), True)],
)
async def test_startup_retries_unavailable_storage(operations, existing, caplog):
    backend = MemoryBackend()
    clock = Clock()
    if existing:
        async with make_engine(backend, clock):
            pass
    backend.inject(Fault.UNAVAILABLE, times=2, operations=operations)

    with caplog.at_level("WARNING", logger="osqueue.election"):
        async with make_engine(backend, clock, address="broker-b") as engine:
            assert engine.is_leader

    assert engine.epoch == (2 if existing else 1)
    assert backend.faults_injected[Fault.UNAVAILABLE] == 2
    assert sum("retry" in record.getMessage() for record in caplog.records) == 2


async def test_startup_retries_are_bounded():
    backend = MemoryBackend()
    backend.inject(Fault.UNAVAILABLE, times=10, operations=("read",))

    with pytest.raises(StorageBackendError):
        async with make_engine(backend, max_retries=3):
            pass

    assert backend.faults_injected[Fault.UNAVAILABLE] == 4


async def test_rate_limit_backs_off_from_larger_base():
    inner = MemoryBackend()
    # The store accepts one write of the object per second, like GCS.
    successes: list[float] = []

    async def one_write_per_second(number: int) -> None:
        now = anyio.current_time()
        if successes and now - successes[-1] < 1.0:
            raise StorageBackendError("test: 429", key=KEY, retryable=True, status=429)
        successes.append(now)

    backend = HookedBackend(inner, one_write_per_second)
    async with make_engine(backend, lease_seconds=30.0) as engine:
        started = anyio.current_time()
        for number in range(20):
            await engine.enqueue("a", number)
        elapsed = anyio.current_time() - started
        stats = engine.stats.summary()

    assert stats["commits"] == 20
    assert stats["failed_batches"] == 0
    # With a 5 ms base about 8 of 9 attempts were rejected (about 160 here); the larger
    # base and the pacing after a rejection leave a few.
    assert stats["rate_limited"] <= 6
    assert elapsed < 25.0
    assert len((await stored_state(inner)).jobs) == 20


async def test_rate_limit_base_configurable():
    inner = MemoryBackend()
    times: list[float] = []

    async def rate_limited(number: int) -> None:
        times.append(anyio.current_time())
        if number in (1, 2):
            raise StorageBackendError("test: 429", key=KEY, retryable=True, status=429)

    backend = HookedBackend(inner, rate_limited)
    async with make_engine(backend, rate_limit_backoff_base=0.2, backoff_max=2.0) as engine:
        await engine.enqueue("a")

    assert 0.1 <= times[1] - times[0] <= 0.2
    assert 0.2 <= times[2] - times[1] <= 0.4
