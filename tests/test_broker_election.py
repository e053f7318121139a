"""Two brokers on one in-process MemoryBackend: takeover, fencing and standby behaviour."""

from __future__ import annotations

import anyio
import pytest
from osqueue.state import decode_state
from osqueue.storage.memory import MemoryBackend

from tests.broker_support import (
    FAST,
    FailingStorage,
    PartitionedStorage,
    running_broker,
    wait_for,
)

pytestmark = pytest.mark.anyio

A = "http://127.0.0.1:18001"
B = "http://127.0.0.1:18002"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


async def stored(storage):
    read = await storage.read("queue.json")
    return decode_state(read.data)


async def start_leader(group, storage, stop: anyio.Event, address: str = A):
    """Run a broker in a task of ``group`` until ``stop`` is set; return it and its client."""

    async def run(*, task_status=anyio.TASK_STATUS_IGNORED):
        async with running_broker(storage, address=address, **FAST) as (broker, client):
            task_status.started((broker, client))
            await stop.wait()

    return await group.start(run)


async def test_standby_takes_over_after_leader_stops():
    storage = MemoryBackend()
    stop_leader = anyio.Event()
    async with anyio.create_task_group() as group:
        _leader, a_client = await start_leader(group, storage, stop_leader)
        async with running_broker(storage, address=B, wait_leader=False, seed=2,
                                  **FAST) as (standby, b_client):
            await a_client.post("/v1/jobs", json={"jobs": [{"payload": 1}, {"payload": 2}]})
            await anyio.sleep(0.1)
            was_standby = not standby.is_leader
            standby_health = (await b_client.get("/healthz")).json()
            standby_stats = (await b_client.get("/v1/stats")).json()["broker"]

            # The leader stops without releasing its lease; the standby waits for it to lapse.
            stop_leader.set()
            await wait_for(lambda: standby.is_leader, timeout=3.0, what="takeover")
            claimed = await b_client.post("/v1/jobs/claim", json={"workerId": "w"})
            health = (await b_client.get("/healthz")).json()
            state = await stored(storage)

    assert was_standby

    assert claimed.json()["job"]["id"] == "job-1"
    assert standby_health == {"status": "ok", "leader": False, "epoch": None, "address": B,
                              "leaderEpoch": 1, "leaderAddress": A}
    assert standby_stats["epoch"] is None
    assert standby_stats["leaderEpoch"] == 1
    assert standby_stats["leaderAddress"] == A
    assert health == {"status": "ok", "leader": True, "epoch": 2, "address": B,
                      "leaderEpoch": 2, "leaderAddress": B}
    assert state.broker.address == B
    assert state.broker.epoch == 2
    assert [job.id for job in state.jobs] == ["job-1", "job-2"]


async def test_partitioned_leader_is_deposed_and_answers_503():
    storage = MemoryBackend()
    a_view = PartitionedStorage(storage)
    async with running_broker(a_view, address=A, **FAST) as (leader, a_client):
        await a_client.post("/v1/jobs", json={"payload": "before"})
        async with running_broker(storage, address=B, wait_leader=False, seed=2,
                                  **FAST) as (standby, b_client):
            await anyio.sleep(0.1)
            refused = await b_client.post("/v1/jobs", json={"payload": "x"})

            # Cut the leader off from storage while a claim is waiting on it.
            a_view.partition()
            results = {}

            async def claim_on_old_leader():
                results["claim"] = await a_client.post("/v1/jobs/claim",
                                                       json={"workerId": "a-worker"})

            async with anyio.create_task_group() as group:
                group.start_soon(claim_on_old_leader)
                await wait_for(lambda: standby.is_leader, timeout=3.0, what="takeover")
                claimed = await b_client.post("/v1/jobs/claim", json={"workerId": "b-worker"})
                a_view.heal()

            after = await a_client.post("/v1/jobs", json={"payload": "late"})
            a_health = (await a_client.get("/healthz")).json()
            await wait_for(lambda: leader.leader_address() == B, timeout=2.0,
                           what="old leader sees the new one")
            redirected = await a_client.post("/v1/jobs", json={"payload": "late"})
            state = await stored(storage)

    assert refused.status_code == 503
    assert refused.json()["leader"] == A
    old_claim = results["claim"]
    assert old_claim.status_code == 503, old_claim.text
    assert old_claim.json()["_tag"] == "NotLeader"
    assert claimed.json()["job"]["id"] == "job-1"
    assert after.status_code == 503
    assert after.json()["_tag"] == "NotLeader"
    assert a_health["leader"] is False
    assert redirected.json()["leader"] == B
    # Only the new leader's claim is in the state; the old leader's never landed.
    assert state.broker.address == B
    assert [(job.id, job.claimed_by) for job in state.jobs] == [("job-1", "b-worker")]
    assert state.counters.enqueued == 1


async def test_leader_steps_down_when_storage_fails():
    storage = MemoryBackend()
    a_view = FailingStorage(storage)
    async with running_broker(a_view, address=A, **FAST) as (leader, client):
        a_view.partition()
        await wait_for(lambda: not leader.is_leader, timeout=2.0, what="step-down")
        refused = await client.post("/v1/jobs", json={"payload": 1})
        a_view.heal()
        # The lease lapsed while the storage failed, so the same broker may win again.
        await wait_for(lambda: leader.is_leader, timeout=3.0, what="re-election")
        accepted = await client.post("/v1/jobs", json={"payload": 2})
        state = await stored(storage)

    assert refused.status_code == 503
    assert refused.json()["_tag"] == "NotLeader"
    assert accepted.status_code == 201
    assert state.broker.epoch == 2
    assert leader.elections_won == 2


async def test_two_standbys_elect_exactly_one():
    storage = MemoryBackend()
    c_address = "http://127.0.0.1:18003"
    stop_leader = anyio.Event()
    async with anyio.create_task_group() as group:
        await start_leader(group, storage, stop_leader)
        async with running_broker(storage, address=B, wait_leader=False, seed=2, **FAST) as (
                b, _), running_broker(storage, address=c_address, wait_leader=False, seed=3,
                                      **FAST) as (c, _):
            await anyio.sleep(0.1)
            stop_leader.set()
            await wait_for(lambda: b.is_leader or c.is_leader, timeout=3.0, what="takeover")
            await anyio.sleep(0.3)
            leaders = [broker.address for broker in (b, c) if broker.is_leader]
            state = await stored(storage)

    assert len(leaders) == 1
    assert state.broker.address == leaders[0]
    assert state.broker.epoch == 2


class FlakyStorage(PartitionedStorage):
    """A view whose first ``failures`` requests raise an error that is not osqueue's own."""

    def __init__(self, inner, failures: int) -> None:
        super().__init__(inner)
        self.failures = failures

    async def _pass(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("injected SDK failure")


async def test_unexpected_storage_error_does_not_stop_broker(caplog):
    storage = FlakyStorage(MemoryBackend(), failures=2)
    async with running_broker(storage, address=A, wait_leader=False, **FAST) as (broker, _):
        await wait_for(lambda: broker.is_leader, timeout=3.0, what="leadership")

    assert storage.failures == 0
    assert "election round failed" in caplog.text
