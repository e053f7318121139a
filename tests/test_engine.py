"""Tests of GroupCommitEngine on MemoryBackend: batching, limits, stop, fencing basics.

Timing-sensitive tests run under trio with a MockClock (virtual time).
"""

from __future__ import annotations

import anyio
import msgspec
import pytest
import trio.testing
from osqueue.election import take_over
from osqueue.engine import (
    EngineConfig,
    EngineStoppedError,
    GroupCommitEngine,
    StateMissingError,
)
from osqueue.errors import ConfigError
from osqueue.spec import queue as spec
from osqueue.state import StateDecodeError, decode_state, encode_state
from osqueue.storage.memory import MemoryBackend

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


async def test_enqueue_claim_complete_round_trip():
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        enqueued = await engine.enqueue("email", {"to": "a@example.com"})
        claimed = await engine.submit(spec.Claim("w1"))
        done = await engine.submit(spec.Complete(claimed.job_id, claimed.token))

    state = await stored_state(backend)
    assert enqueued == spec.Enqueued(("job-1",))
    assert claimed.payload == {"to": "a@example.com"}
    assert done == spec.Acknowledged()
    assert state.jobs == []
    assert state.counters.completed == 1
    assert state.broker.address is None
    assert state.broker.epoch == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_engine_runs_under_asyncio(anyio_backend):
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        results = []

        async def submit(number: int) -> None:
            results.append(await engine.submit(enqueue(job_id=f"j{number}")))

        async with anyio.create_task_group() as group:
            for number in range(50):
                group.start_soon(submit, number)

    assert len(results) == 50
    assert len((await stored_state(backend)).jobs) == 50


async def test_mutations_during_write_join_next_batch():
    gate = anyio.Event()
    backend = HookedBackend(MemoryBackend())

    async def hold_first_write(number: int) -> None:
        if number == 1:
            await gate.wait()

    backend.before_write = hold_first_write
    async with make_engine(backend) as engine, anyio.create_task_group() as group:
        group.start_soon(engine.submit, enqueue(job_id="first"))
        await anyio.wait_all_tasks_blocked()
        assert backend.in_flight == 1

        for number in range(50):
            group.start_soon(engine.submit, enqueue(job_id=f"later-{number}"))
        await anyio.wait_all_tasks_blocked()
        assert backend.writes == 1
        gate.set()

    assert list(engine.stats.batch_sizes)[:2] == [1, 50]
    assert backend.max_in_flight == 1


async def test_single_writer_under_load_accepts_every_mutation():
    # 100 submitters, each sending a request about every 10 ms, against storage with 10 ms
    # latency: one write at a time, and every mutation is committed (none rejected).
    backend = HookedBackend(MemoryBackend(latency=0.010))
    results: list[spec.Result] = []

    async def submitter(engine: GroupCommitEngine, worker: int) -> None:
        for number in range(20):
            results.append(await engine.submit(enqueue(job_id=f"w{worker}-{number}")))
            await anyio.sleep(0.01)

    async with make_engine(backend) as engine, anyio.create_task_group() as group:
        for worker in range(100):
            group.start_soon(submitter, engine, worker)

    assert len(results) == 2000
    assert all(isinstance(result, spec.Enqueued) for result in results)
    assert backend.max_in_flight == 1
    assert engine.stats.commits < 400
    assert len((await stored_state(backend.inner)).jobs) == 2000


async def test_invalid_mutation_rejected_alone():
    gate = anyio.Event()
    backend = HookedBackend(MemoryBackend())

    async def hold_second_write(number: int) -> None:
        if number == 2:
            await gate.wait()

    backend.before_write = hold_second_write
    results = {}

    async def run(name, mutation):
        results[name] = await engine.submit(mutation)

    async with make_engine(backend) as engine, anyio.create_task_group() as group:
        await engine.submit(enqueue(job_id="x"))
        group.start_soon(run, "renewal", enqueue(job_id="first"))
        await anyio.wait_all_tasks_blocked()
        group.start_soon(run, "stale", spec.Complete("x", "c77"))
        group.start_soon(run, "unknown", spec.Heartbeat("nope", "c1"))
        group.start_soon(run, "enqueue", enqueue(job_id="y"))
        await anyio.wait_all_tasks_blocked()
        gate.set()

    assert list(engine.stats.batch_sizes) == [1, 1, 3]
    assert results["enqueue"] == spec.Enqueued(("y",))
    assert results["stale"].reason is spec.RejectReason.STALE_CLAIM
    assert results["unknown"].reason is spec.RejectReason.UNKNOWN_JOB
    assert job_ids(await stored_state(backend.inner)) == ["x", "first", "y"]


async def test_unencodable_payload_fails_its_caller_only():
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        with pytest.raises(ValueError, match="is not JSON"):
            await engine.enqueue("a", object())
        assert await engine.enqueue("a", [1, 2]) == spec.Enqueued(("job-1",))


async def test_enqueue_larger_than_batch_is_rejected():
    backend = MemoryBackend()

    async with make_engine(backend, max_batch_size=3) as engine:
        jobs = tuple(spec.NewJob("a") for _ in range(4))
        with pytest.raises(ValueError, match="exceeds max_batch_size 3"):
            await engine.submit(spec.Enqueue(jobs))


async def test_batches_respect_max_batch_size():
    backend = HookedBackend(MemoryBackend(latency=0.01))

    async with make_engine(backend, max_batch_size=10) as engine, anyio.create_task_group() as group:
        for number in range(35):
            group.start_soon(engine.submit, enqueue(job_id=f"j{number}"))

    assert max(engine.stats.batch_sizes) <= 10
    assert len((await stored_state(backend.inner)).jobs) == 35


async def test_state_size_limit_rejects_enqueues_only():
    backend = MemoryBackend()

    async with make_engine(backend, max_state_bytes=1500) as engine:
        await engine.enqueue("a", "x" * 200)
        claimed = await engine.submit(spec.Claim("w"))
        too_large = await engine.enqueue("a", "y" * 2000)
        done = await engine.submit(spec.Complete(claimed.job_id, claimed.token))

    assert too_large.reason is spec.RejectReason.STATE_TOO_LARGE
    assert "max_state_bytes 1500" in too_large.message
    assert done == spec.Acknowledged()


async def test_stop_rejects_pending_callers():
    gate = anyio.Event()
    backend = HookedBackend(MemoryBackend())
    errors: list[BaseException] = []

    async def hold(number: int) -> None:
        if number == 2:
            await gate.wait()

    async def submit(engine, mutation):
        try:
            await engine.submit(mutation)
        except EngineStoppedError as error:
            errors.append(error)

    backend.before_write = hold
    engine = make_engine(backend, stop_timeout=5.0)
    with anyio.fail_after(60):
        async with engine, anyio.create_task_group() as group:
            await engine.enqueue("a")
            group.start_soon(submit, engine, enqueue(job_id="in-flight"))
            await anyio.wait_all_tasks_blocked()
            group.start_soon(submit, engine, enqueue(job_id="pending"))
            await anyio.wait_all_tasks_blocked()
            group.start_soon(engine.stop)
            await anyio.wait_all_tasks_blocked()
            gate.set()

    assert len(errors) == 1
    assert "not applied" in str(errors[0])
    assert job_ids(await stored_state(backend.inner)) == ["job-1", "in-flight"]
    with pytest.raises(EngineStoppedError):
        await engine.enqueue("a")


async def test_stop_cancels_stuck_write_as_indeterminate():
    from osqueue.engine import CommitIndeterminateError

    forever = anyio.Event()
    backend = HookedBackend(MemoryBackend())
    errors: list[BaseException] = []

    async def hang(number: int) -> None:
        await forever.wait()

    async def submit(engine):
        try:
            await engine.enqueue("a")
        except CommitIndeterminateError as error:
            errors.append(error)

    backend.before_write = hang
    with anyio.fail_after(60):
        async with make_engine(backend, stop_timeout=1.0) as engine, anyio.create_task_group() as group:
            group.start_soon(submit, engine)
            await anyio.wait_all_tasks_blocked()
            await engine.stop()

    assert len(errors) == 1
    message = str(errors[0])
    assert "was stopped and cancelled its batch after stop_timeout" in message
    assert "outcome of the batch is unknown" in message
    assert "not applied" not in message
    assert "before the mutation was written" not in message


async def test_idle_engine_renews_lease():
    backend = MemoryBackend()
    clock = Clock()

    async with make_engine(backend, clock, lease_seconds=9.0, heartbeat_timeout=5.0) as engine:
        await anyio.sleep(10.0)
        state = await stored_state(backend)

    assert engine.stats.commits >= 3
    assert state.broker.heartbeat_at >= 6.0


async def test_idle_renewal_expires_jobs():
    backend = MemoryBackend()

    async with make_engine(backend, lease_seconds=9.0, heartbeat_timeout=2.0) as engine:
        await engine.enqueue("a")
        await engine.submit(spec.Claim("w"))
        await anyio.sleep(7.0)
        state = await stored_state(backend)

    assert state.jobs[0].status == "unclaimed"
    assert state.counters.expired == 1


async def test_undecodable_state_is_never_overwritten():
    backend = MemoryBackend()
    await backend.create_if_not_exists(KEY, b'{"schema_version": 1, "sequence": "x"}')

    with pytest.raises(StateDecodeError, match=r"\$\.sequence"):
        async with make_engine(backend):
            pass

    read = await backend.read(KEY)
    assert read.data == b'{"schema_version": 1, "sequence": "x"}'


async def test_state_corrupted_while_running_stops_engine():
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        await engine.enqueue("a")
        current = await backend.read(KEY)
        await backend.write(KEY, b"not json", current.version)

        with pytest.raises(StateDecodeError):
            await engine.enqueue("a")
        with pytest.raises(StateDecodeError):
            await engine.enqueue("a")

    assert (await backend.read(KEY)).data == b"not json"


async def test_state_deleted_while_running_stops_engine():
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        await engine.enqueue("a")
        await backend.delete(KEY)
        with pytest.raises(StateMissingError):
            await engine.enqueue("a")

    assert backend.keys() == []


async def test_foreign_commit_is_merged_not_overwritten():
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        await engine.submit(enqueue(job_id="mine-1"))
        await foreign_commit(backend, "other-1", [enqueue(job_id="theirs")])
        await engine.submit(enqueue(job_id="mine-2"))

    assert job_ids(await stored_state(backend)) == ["mine-1", "theirs", "mine-2"]
    assert engine.stats.conflicts == 1


@pytest.mark.parametrize(
    ("option", "value"),
    [("lease_seconds", 0), ("max_batch_size", 0), ("renew_deadline", 40.0),
     ("renew_interval", 25.0), ("heartbeat_timeout", float("inf"))],
)
def test_config_rejects_invalid_values(option, value):
    options = {"lease_seconds": 30.0, option: value}
    with pytest.raises(ConfigError, match=option):
        EngineConfig(**options)


def test_address_must_be_text():
    with pytest.raises(ConfigError, match="address"):
        GroupCommitEngine(MemoryBackend(), address="")


# Payload validation ------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"[1,", b"1e400"])
async def test_invalid_raw_payload_rejected_at_submit(raw):
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        with pytest.raises(ValueError, match="raw payload .* is not valid JSON"):
            await engine.enqueue("raw", msgspec.Raw(raw))
        await engine.enqueue("ok", msgspec.Raw(b'{"n": 1}'))
        claimed = await engine.submit(spec.Claim("w"))

    assert claimed.payload == {"n": 1}
    assert job_ids(await stored_state(backend)) == ["job-1"]


async def test_nan_payload_rejected_with_path():
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        with pytest.raises(ValueError, match=r"payload\['a'\]\[1\]: float nan is not JSON"):
            await engine.enqueue("a", {"a": [1, float("nan")]})
        with pytest.raises(ValueError, match=r"payload\[0\]: bytes"):
            await engine.submit_many([spec.Enqueue.one("a", [b"x"])])


async def test_undecodable_stored_payload_does_not_stop_writer():
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        await engine.enqueue("a", 1)
        await engine.enqueue("a", 2)
    read = await backend.read(KEY)
    state = decode_state(read.data)
    bad = msgspec.structs.replace(state.jobs[0], payload=msgspec.Raw(b"1e400"))
    await backend.write(KEY, encode_state(msgspec.structs.replace(
        state, jobs=[bad, *state.jobs[1:]])), read.version)

    async with make_engine(backend) as engine:
        claimed = await engine.submit(spec.Claim("w"))
        assert engine.is_leader

    state = await stored_state(backend)
    assert claimed.job_id == "job-2"
    assert [letter.job.id for letter in state.dead_letters] == ["job-1"]


# State size limit ----------------------------------------------------------------------------


async def test_long_fail_error_commits_whole_batch():
    backend = MemoryBackend()

    async with make_engine(backend, max_state_bytes=4000) as engine:
        await engine.submit_many([spec.Enqueue.one("a", 1, max_attempts=1),
                                  spec.Enqueue.one("a", 2)])
        first = await engine.submit(spec.Claim("w"))
        second = await engine.submit(spec.Claim("w"))
        failed, done = await engine.submit_many([
            spec.Fail(first.job_id, first.token, "e" * 100_000),
            spec.Complete(second.job_id, second.token),
        ])

    state = await stored_state(backend)
    assert isinstance(failed, spec.DeadLettered)
    assert done == spec.Acknowledged()
    assert "more characters cut" in state.dead_letters[0].reason
    assert len(state.dead_letters[0].reason) < 1200


def _full_state_config():
    return {"max_state_bytes": 2000, "lease_seconds": 9.0, "heartbeat_timeout": 1e6}


async def _fill_with_dead_letters(engine) -> None:
    while True:
        result = await engine.enqueue("a", "p" * 100, max_attempts=1)
        if isinstance(result, spec.Rejected):
            assert result.reason is spec.RejectReason.STATE_TOO_LARGE
            return
        claimed = await engine.submit(spec.Claim("w"))
        await engine.submit(spec.Fail(claimed.job_id, claimed.token, "boom"))


async def test_full_state_keeps_renewing_lease():
    backend = MemoryBackend()

    async with make_engine(backend, **_full_state_config()) as engine:
        await _fill_with_dead_letters(engine)
        commits = engine.stats.commits
        await anyio.sleep(30.0)
        assert engine.is_leader
        assert engine.stats.commits >= commits + 8
        assert engine.stats.failed_batches == 0
        rejected = await engine.enqueue("a", "more")

    assert rejected.reason is spec.RejectReason.STATE_TOO_LARGE


async def test_full_state_takeover_succeeds():
    backend = MemoryBackend()
    clock = Clock()

    async with make_engine(backend, clock, **_full_state_config()) as engine:
        await _fill_with_dead_letters(engine)
        # Keep the lease instead of releasing it, as a crashed broker would.
        engine._epoch = None
    clock.jump(10.0)

    async with make_engine(backend, clock, address="broker-b",
                           **_full_state_config()) as successor:
        assert successor.epoch == 2
        await anyio.sleep(10.0)
        assert successor.is_leader


async def test_purge_dead_frees_room_for_enqueues():
    backend = MemoryBackend()

    async with make_engine(backend, **_full_state_config()) as engine:
        await _fill_with_dead_letters(engine)
        dead = len(engine.state.dead_letters)
        purged = await engine.submit(spec.PurgeDead())
        enqueued = await engine.enqueue("a", "fits again")

    state = await stored_state(backend)
    assert purged == spec.Purged(dead)
    assert isinstance(enqueued, spec.Enqueued)
    assert state.dead_letters == []
    assert state.counters.dead == dead


# Lease release at stop ------------------------------------------------------------------------


async def test_stop_releases_lease():
    backend = MemoryBackend()
    clock = Clock()

    async with make_engine(backend, clock, lease_seconds=30.0) as engine:
        await engine.enqueue("a")
    released = await stored_state(backend)
    started = anyio.current_time()

    async with make_engine(backend, clock, address="broker-b", lease_seconds=30.0) as other:
        assert other.epoch == 2
        assert anyio.current_time() == started
        assert job_ids(other.state) == ["job-1"]

    assert released.broker.address is None
    assert released.broker.epoch == 1
    assert not engine.is_leader


async def test_same_address_restarts_at_once():
    backend = MemoryBackend()

    async with make_engine(backend):
        pass
    async with make_engine(backend) as restarted:
        assert restarted.epoch == 2


async def test_deposed_engine_does_not_release():
    backend = MemoryBackend()
    clock = Clock()

    async with make_engine(backend, clock):
        read = await backend.read(KEY)
        taken = take_over(decode_state(read.data), address="broker-b", now=clock(),
                          lease_seconds=30.0, commit_id="takeover", max_recent_commits=256)
        await backend.write(KEY, encode_state(taken), read.version)

    state = await stored_state(backend)
    assert state.broker.address == "broker-b"
    assert state.broker.epoch == 2
