"""osqueue.client against real brokers (election, engine, app) on MemoryBackend, in process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from osqueue.client import (
    AsyncClient,
    DuplicateJobError,
    InvalidRequestError,
    StaleClaimError,
    UnauthorizedError,
    UnknownJobError,
)
from osqueue.spec.queue import NewJob
from osqueue.storage.memory import MemoryBackend

from tests.support.client_harness import FAST_LEASE, BrokerCluster

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def cluster() -> AsyncIterator[BrokerCluster]:
    async with anyio.create_task_group() as group:
        cluster = BrokerCluster(MemoryBackend(), group, **FAST_LEASE)
        try:
            yield cluster
        finally:
            await cluster.stop_all()


def _client(cluster: BrokerCluster, url: str | None, **options: object) -> AsyncClient:
    options.setdefault("retry_timeout", 10.0)
    return AsyncClient(url, transport=cluster.transport, **options)


async def test_job_round_trip(cluster: BrokerCluster) -> None:
    url = await cluster.start(wait_leader=True)
    async with _client(cluster, url) as client:
        job_id = await client.enqueue("email", {"to": "a@example.com"}, max_attempts=2)
        job = await client.claim("worker-1", ["email"])
        assert job is not None
        assert job.id == job_id
        assert job.payload == {"to": "a@example.com"}
        assert (job.attempts, job.max_attempts) == (1, 2)

        await client.heartbeat(job.id, job.claim_token)
        await client.complete(job.id, job.claim_token)

        assert await client.claim("worker-1") is None
        stats = await client.stats()
        assert stats["counters"]["completed"] == 1


async def test_complete_twice_rejected(cluster: BrokerCluster) -> None:
    url = await cluster.start(wait_leader=True)
    async with _client(cluster, url) as client:
        await client.enqueue("email", 1)
        job = await client.claim("worker-1")
        assert job is not None
        await client.complete(job.id, job.claim_token)
        with pytest.raises(UnknownJobError) as raised:
            await client.complete(job.id, job.claim_token)
        assert raised.value.retried is False


async def test_fail_returns_then_dead_letters(cluster: BrokerCluster) -> None:
    url = await cluster.start(wait_leader=True)
    async with _client(cluster, url) as client:
        await client.enqueue("resize", {"w": 10}, max_attempts=2)

        first = await client.claim("worker-1")
        assert first is not None
        returned = await client.fail(first.id, first.claim_token, "boom", retry_delay=0)
        assert returned.status == "returned"

        with pytest.raises(StaleClaimError):
            await client.heartbeat(first.id, first.claim_token)

        second = await client.claim("worker-1")
        assert second is not None
        assert second.last_attempt
        dead = await client.fail(second.id, second.claim_token, "boom again")
        assert dead.status == "dead"
        assert "boom again" in (dead.reason or "")

        letters = await client.dead()
        assert [letter["job"]["id"] for letter in letters] == [first.id]
        listed = await client.jobs(status="dead")
        assert [job["id"] for job in listed] == [first.id]


async def test_explicit_ids_and_duplicates(cluster: BrokerCluster) -> None:
    url = await cluster.start(wait_leader=True)
    async with _client(cluster, url) as client:
        assert await client.enqueue("email", 1, job_id="order-1") == "order-1"
        with pytest.raises(DuplicateJobError):
            await client.enqueue("email", 2, job_id="order-1")
        ids = await client.enqueue_many([NewJob("email", 3, id="order-2"), NewJob("sms", 4)])
        assert ids[0] == "order-2"
        listed = await client.jobs(status="unclaimed")
        assert [job["id"] for job in listed] == ["order-1", *ids]


async def test_invalid_request_raised(cluster: BrokerCluster) -> None:
    url = await cluster.start(wait_leader=True)
    async with _client(cluster, url) as client:
        with pytest.raises(InvalidRequestError):
            await client.jobs(status="finished")


async def test_token_required(cluster: BrokerCluster) -> None:
    url = await cluster.start(token="s3cret-token-0123456789", wait_leader=True)
    async with _client(cluster, url) as anonymous:
        with pytest.raises(UnauthorizedError):
            await anonymous.enqueue("email", 1)
        assert (await anonymous.health())["leader"] is True
    async with _client(cluster, url, token="s3cret-token-0123456789") as client:
        assert await client.enqueue("email", 1)


async def test_standby_redirects_to_leader(cluster: BrokerCluster) -> None:
    leader = await cluster.start(wait_leader=True)
    standby = await cluster.start()
    # Give the standby time to read the state and learn the leader.
    await anyio.sleep(0.3)
    async with _client(cluster, standby) as client:
        await client.enqueue("email", 1)
        assert client.leader_url == leader


async def test_failover_found_through_storage(cluster: BrokerCluster) -> None:
    first = await cluster.start(wait_leader=True)
    second = await cluster.start()
    async with _client(cluster, None, storage=cluster.storage) as client:
        done = await client.enqueue("email", 1)
        assert client.leader_url == first

        job = await client.claim("worker-1")
        assert job is not None and job.id == done
        await cluster.kill(first)

        # The next requests wait out the lease and land on the standby.
        with anyio.fail_after(8):
            await client.complete(job.id, job.claim_token)
        assert client.leader_url == second
        assert await client.claim("worker-1") is None
