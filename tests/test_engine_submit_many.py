"""Tests of GroupCommitEngine.submit_many and of the per-loop waiting paths of submit.

Most tests run under asyncio and under trio, because the engine settles callers with a
different primitive on each event loop.
"""

from __future__ import annotations

import anyio
import pytest
from osqueue.engine import (
    CommitFailedError,
    EngineOverloadedError,
    EngineStoppedError,
)
from osqueue.mutations import EncodedEnqueue, apply_batch
from osqueue.spec import queue as spec
from osqueue.state import encode_payload, initial_state
from osqueue.storage.memory import Fault, MemoryBackend

from tests.engine_support import HookedBackend, enqueue, job_ids, make_engine, stored_state

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


async def test_submit_many_returns_results_in_order():
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        results = await engine.submit_many([
            spec.Enqueue.one("email", {"to": "a"}),
            spec.Claim("w1"),
            spec.Complete("job-1", "c1"),
            spec.Complete("job-1", "c1"),
        ])

    assert results[0] == spec.Enqueued(("job-1",))
    assert results[1] == spec.Claimed("job-1", "email", {"to": "a"}, 1, 3, "c1")
    assert results[2] == spec.Acknowledged()
    assert results[3].reason is spec.RejectReason.UNKNOWN_JOB
    assert (await stored_state(backend)).counters.completed == 1


async def test_submit_many_lands_in_one_commit():
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        commits_before = engine.stats.commits
        sequence_before = engine.state.sequence
        await engine.submit_many([enqueue(job_id=f"j{number}") for number in range(5)])
        commits = engine.stats.commits - commits_before
        sequences = engine.state.sequence - sequence_before

    assert commits == 1
    assert sequences == 1
    assert job_ids(await stored_state(backend)) == [f"j{number}" for number in range(5)]


async def test_submit_many_stays_contiguous_among_submits():
    gate = anyio.Event()
    backend = HookedBackend(MemoryBackend())

    async def hold_second_write(number: int) -> None:
        if number == 2:
            await gate.wait()

    backend.before_write = hold_second_write

    async with make_engine(backend) as engine, anyio.create_task_group() as group:
        await engine.submit(enqueue(job_id="first"))
        group.start_soon(engine.submit, enqueue(job_id="held"))
        await anyio.wait_all_tasks_blocked()
        group.start_soon(engine.submit, enqueue(job_id="a"))
        await anyio.wait_all_tasks_blocked()
        group.start_soon(engine.submit_many, [enqueue(job_id="b1"), enqueue(job_id="b2")])
        await anyio.wait_all_tasks_blocked()
        group.start_soon(engine.submit, enqueue(job_id="c"))
        await anyio.wait_all_tasks_blocked()
        gate.set()

    assert list(engine.stats.batch_sizes)[-1] == 4  # a, b1, b2, c
    assert job_ids(await stored_state(backend.inner)) == [
        "first", "held", "a", "b1", "b2", "c"]


async def test_submit_many_empty_list_commits_nothing():
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        commits = engine.stats.commits
        assert await engine.submit_many([]) == []
        assert engine.stats.commits == commits


async def test_submit_many_rejects_weight_above_batch_size():
    backend = MemoryBackend()

    async with make_engine(backend, max_batch_size=3) as engine:
        mutations = [spec.Enqueue((spec.NewJob("a"), spec.NewJob("a"))), enqueue("a")
                     ] + [spec.Claim("w")]
        with pytest.raises(ValueError, match="weight 4.*max_batch_size 3"):
            await engine.submit_many(mutations)

    assert (await stored_state(backend)).jobs == []


async def test_submit_many_invalid_member_applies_nothing():
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        with pytest.raises(TypeError, match="not a queue mutation"):
            await engine.submit_many([enqueue(job_id="a"), "claim"])
        with pytest.raises(ValueError, match="is not JSON"):
            await engine.submit_many([enqueue(job_id="b"), spec.Enqueue.one("a", object())])
        assert await engine.submit(enqueue(job_id="c")) == spec.Enqueued(("c",))

    assert job_ids(await stored_state(backend)) == ["c"]


async def test_submit_many_failed_commit_applies_none():
    backend = MemoryBackend()

    async with make_engine(backend, max_retries=2, backoff_base=0.001) as engine:
        backend.inject(Fault.UNAVAILABLE, times=3, operations=("write",))
        with pytest.raises(CommitFailedError):
            await engine.submit_many([enqueue(job_id="a"), enqueue(job_id="b")])
        assert await engine.submit(enqueue(job_id="c")) == spec.Enqueued(("c",))

    assert job_ids(await stored_state(backend)) == ["c"]


async def test_max_pending_counts_every_mutation_of_submit_many():
    gate = anyio.Event()
    backend = HookedBackend(MemoryBackend())

    async def hold_second_write(number: int) -> None:
        if number == 2:
            await gate.wait()

    backend.before_write = hold_second_write

    async with make_engine(backend, max_pending=3) as engine, anyio.create_task_group() as group:
        await engine.submit(enqueue(job_id="first"))
        group.start_soon(engine.submit, enqueue(job_id="held"))
        await anyio.wait_all_tasks_blocked()
        group.start_soon(engine.submit_many, [enqueue(job_id="a"), enqueue(job_id="b")])
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(EngineOverloadedError, match="2 mutations are waiting"):
            await engine.submit_many([enqueue(job_id="c"), enqueue(job_id="d")])
        group.start_soon(engine.submit, enqueue(job_id="e"))
        await anyio.wait_all_tasks_blocked()
        gate.set()

    assert job_ids(await stored_state(backend.inner)) == ["first", "held", "a", "b", "e"]


async def test_stopped_engine_rejects_submit_many():
    backend = MemoryBackend()
    engine = make_engine(backend)

    async with engine:
        pass

    with pytest.raises(EngineStoppedError):
        await engine.submit_many([enqueue(job_id="a")])


async def test_cancelled_caller_leaves_batch_intact():
    gate = anyio.Event()
    backend = HookedBackend(MemoryBackend())
    results = {}

    async def hold_second_write(number: int) -> None:
        if number == 2:
            await gate.wait()

    async def submit(name, mutation):
        results[name] = await engine.submit(mutation)

    backend.before_write = hold_second_write

    async with make_engine(backend) as engine, anyio.create_task_group() as group:
        await engine.submit(enqueue(job_id="first"))
        group.start_soon(submit, "held", enqueue(job_id="held"))
        await anyio.wait_all_tasks_blocked()
        with anyio.CancelScope() as scope:
            group.start_soon(submit, "kept", enqueue(job_id="kept"))
            scope.cancel()
            await engine.submit(enqueue(job_id="cancelled"))
        group.start_soon(submit, "after", enqueue(job_id="after"))
        await anyio.wait_all_tasks_blocked()
        gate.set()

    # submit queues the mutation before its first await, so the cancelled one commits,
    # ahead of the task started just before it.
    assert job_ids(await stored_state(backend.inner)) == [
        "first", "held", "cancelled", "kept", "after"]
    assert results["kept"] == spec.Enqueued(("kept",))
    assert results["after"] == spec.Enqueued(("after",))
    assert "cancelled" not in results


async def test_engine_without_loop_primitive_uses_events(monkeypatch):
    import osqueue.engine

    monkeypatch.setattr(osqueue.engine, "_current_async_library", lambda: None)
    backend = MemoryBackend()

    async with make_engine(backend) as engine:
        assert engine._new_waiter is osqueue.engine._EventWaiter
        results = await engine.submit_many([enqueue(job_id="a"), spec.Claim("w")])
        with anyio.CancelScope() as scope:
            scope.cancel()
            await engine.submit(enqueue(job_id="cancelled"))
        done = await engine.submit(spec.Complete("a", results[1].token))

    assert results[0] == spec.Enqueued(("a",))
    assert done == spec.Acknowledged()
    assert job_ids(await stored_state(backend)) == ["cancelled"]


def test_encoded_enqueue_applies_like_enqueue():
    mutation = spec.Enqueue((spec.NewJob("a", {"n": 1}), spec.NewJob("b", [2], id="x")))
    encoded = EncodedEnqueue.encode(mutation)

    plain = apply_batch(initial_state(), [mutation], now=0.0, commit_id="c",
                        heartbeat_timeout=10.0)
    prepared = apply_batch(initial_state(), [encoded], now=0.0, commit_id="c",
                           heartbeat_timeout=10.0)

    assert prepared == plain
    assert encoded.payloads == (encode_payload({"n": 1}), encode_payload([2]))


def test_encoded_enqueue_needs_one_payload_per_job():
    mutation = spec.Enqueue((spec.NewJob("a"), spec.NewJob("b")))

    with pytest.raises(ValueError, match="2 jobs, 1 payloads"):
        EncodedEnqueue(mutation, (encode_payload(None),))


async def test_submit_many_is_never_split_across_batches():
    gate = anyio.Event()
    backend = HookedBackend(MemoryBackend())

    async def hold_second_write(number: int) -> None:
        if number == 2:
            await gate.wait()

    backend.before_write = hold_second_write

    async with make_engine(backend, max_batch_size=4) as engine, anyio.create_task_group() as group:
        await engine.submit(enqueue(job_id="first"))
        group.start_soon(engine.submit, enqueue(job_id="held"))
        await anyio.wait_all_tasks_blocked()
        group.start_soon(engine.submit, spec.Enqueue((spec.NewJob("a", id="a1"),
                                                      spec.NewJob("a", id="a2"))))
        await anyio.wait_all_tasks_blocked()
        group.start_soon(engine.submit_many, [enqueue(job_id=f"b{n}") for n in range(3)])
        await anyio.wait_all_tasks_blocked()
        group.start_soon(engine.submit, enqueue(job_id="c"))
        await anyio.wait_all_tasks_blocked()
        gate.set()

    # Weights 2 + 3 exceed max_batch_size 4, so the submit_many call starts a new batch.
    assert list(engine.stats.batch_sizes)[-2:] == [1, 4]
    assert job_ids(await stored_state(backend.inner)) == [
        "first", "held", "a1", "a2", "b0", "b1", "b2", "c"]


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_waiter_settled_before_await(anyio_backend):
    import osqueue.engine

    new_waiter = osqueue.engine._waiter_factory("trio")
    succeeded = new_waiter()
    failed = new_waiter()

    succeeded.set_result("value")
    failed.set_exception(ValueError("broken"))
    succeeded.set_result("ignored")

    assert succeeded.done()
    assert await succeeded == "value"
    with pytest.raises(ValueError, match="broken"):
        await failed
