"""osqueue.worker against real in-process brokers on MemoryBackend."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import msgspec
import pytest
from osqueue.client import AsyncClient, ClaimedJob, FailResult, UnauthorizedError
from osqueue.storage.memory import MemoryBackend
from osqueue.worker import SHUTDOWN_REASON, HandlerSpec, Worker

from tests.support.client_harness import FAST_LEASE, BrokerCluster

pytestmark = pytest.mark.anyio

FAST_WORKER = {"poll_interval": 0.02, "heartbeat_interval": 0.1}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def cluster() -> AsyncIterator[BrokerCluster]:
    async with anyio.create_task_group() as group:
        cluster = BrokerCluster(MemoryBackend(), group, **FAST_LEASE, job_timeout=0.6)
        try:
            yield cluster
        finally:
            await cluster.stop_all()


@pytest.fixture
async def client(cluster: BrokerCluster) -> AsyncIterator[AsyncClient]:
    url = await cluster.start(wait_leader=True)
    async with AsyncClient(url, transport=cluster.transport, retry_timeout=10.0) as client:
        yield client


class Recorder:
    """Hooks that record what the worker reports."""

    def __init__(self) -> None:
        self.claimed: list[str] = []
        self.completed: list[tuple[str, Any]] = []
        self.failed: list[tuple[str, str, FailResult | None]] = []

    def hooks(self) -> dict[str, Callable[..., Any]]:
        return {
            "on_claimed": lambda job: self.claimed.append(job.id),
            "on_completed": lambda job, value: self.completed.append((job.id, value)),
            "on_failed": self._failed,
        }

    async def _failed(
        self, job: ClaimedJob, error: BaseException, result: FailResult | None
    ) -> None:
        self.failed.append((job.id, str(error), result))


async def _run_until(worker: Worker, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Run ``worker`` until ``condition()`` holds, then stop it and wait for it to finish."""

    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        with anyio.fail_after(timeout):
            while not condition():
                await anyio.sleep(0.01)
        worker.stop()


async def test_handlers_by_type(client: AsyncClient) -> None:
    recorder = Recorder()
    seen: list[tuple[str, Any]] = []

    async def email(job: ClaimedJob) -> str:
        seen.append(("email", job.payload))
        return "sent"

    def resize(job: ClaimedJob) -> int:
        # Plain functions run in a worker thread.
        assert threading.current_thread() is not threading.main_thread()
        seen.append(("resize", job.payload))
        return 42

    ids = [await client.enqueue("email", n) for n in range(3)]
    ids += [await client.enqueue("resize", 9)]
    other = await client.enqueue("sms", 0)

    worker = Worker(
        client, {"email": email, "resize": resize}, concurrency=3, **FAST_WORKER, **recorder.hooks()
    )
    assert worker.claim_types == ("email", "resize")
    await _run_until(worker, lambda: len(recorder.completed) == 4)

    assert sorted(job_id for job_id, _ in recorder.completed) == sorted(ids)
    assert sorted(seen, key=repr) == sorted(
        [("email", 0), ("email", 1), ("email", 2), ("resize", 9)], key=repr
    )
    assert dict(recorder.completed)[ids[-1]] == 42
    remaining = await client.jobs()
    assert [job["id"] for job in remaining] == [other]


async def test_exception_fails_with_delay(client: AsyncClient) -> None:
    recorder = Recorder()
    attempts: list[int] = []

    async def flaky(job: ClaimedJob) -> None:
        attempts.append(job.attempts)
        if job.attempts < 2:
            raise RuntimeError("try again")

    job_id = await client.enqueue("flaky", None, max_attempts=3)
    worker = Worker(client, {"flaky": flaky}, retry_delay=0.3, **FAST_WORKER, **recorder.hooks())
    started = anyio.current_time()
    await _run_until(worker, lambda: bool(recorder.completed))

    assert attempts == [1, 2]
    assert anyio.current_time() - started >= 0.3
    assert recorder.failed[0][0] == job_id
    assert recorder.failed[0][1] == "try again"
    assert recorder.failed[0][2] is not None and recorder.failed[0][2].status == "returned"


async def test_last_failure_dead_letters(client: AsyncClient) -> None:
    recorder = Recorder()

    async def broken(job: ClaimedJob) -> None:
        raise ValueError("bad input")

    job_id = await client.enqueue("broken", None, max_attempts=1)
    worker = Worker(client, {None: broken}, **FAST_WORKER, **recorder.hooks())
    assert worker.claim_types is None
    await _run_until(worker, lambda: bool(recorder.failed))

    result = recorder.failed[0][2]
    assert result is not None and result.status == "dead"
    letters = await client.dead()
    assert letters[0]["job"]["id"] == job_id
    assert "bad input" in letters[0]["reason"]


class Email(msgspec.Struct):
    to: str
    subject: str = ""


async def test_payload_type_validated(client: AsyncClient) -> None:
    recorder = Recorder()
    received: list[Any] = []

    async def send(job: ClaimedJob) -> None:
        received.append(job.payload)

    good = await client.enqueue("email", {"to": "a@example.com"})
    bad = await client.enqueue("email", {"to": 5}, max_attempts=1)
    worker = Worker(client, {"email": HandlerSpec(send, Email)}, **FAST_WORKER, **recorder.hooks())
    await _run_until(worker, lambda: bool(recorder.completed) and bool(recorder.failed))

    assert received == [Email(to="a@example.com")]
    assert recorder.completed[0][0] == good
    failed_id, message, _ = recorder.failed[0]
    assert failed_id == bad
    assert "invalid payload" in message
    assert "$.to" in message


async def test_heartbeats_keep_long_job(client: AsyncClient) -> None:
    recorder = Recorder()

    async def slow(job: ClaimedJob) -> None:
        await anyio.sleep(1.5)  # longer than the broker's 0.6 s job timeout

    await client.enqueue("slow", None)
    worker = Worker(client, {"slow": slow}, **FAST_WORKER, **recorder.hooks())
    await _run_until(worker, lambda: bool(recorder.completed))

    stats = await client.stats()
    assert stats["counters"]["expired"] == 0
    assert stats["counters"]["completed"] == 1


async def test_lost_claim_cancels_handler(client: AsyncClient) -> None:
    recorder = Recorder()
    cancelled: list[str] = []

    async def slow(job: ClaimedJob) -> None:
        try:
            await anyio.sleep(5)
        except anyio.get_cancelled_exc_class():
            cancelled.append(job.id)
            raise

    job_id = await client.enqueue("slow", None, max_attempts=1)
    # Heartbeats far apart: the job expires after 0.6 s, before the first heartbeat.
    worker = Worker(
        client, {"slow": slow}, poll_interval=0.02, heartbeat_interval=1.5, **recorder.hooks()
    )
    await _run_until(worker, lambda: bool(cancelled))

    assert cancelled == [job_id]
    assert recorder.completed == []
    assert recorder.failed == []
    letters = await client.dead()
    assert letters[0]["job"]["id"] == job_id


async def test_shutdown_waits_for_running_job(client: AsyncClient) -> None:
    recorder = Recorder()

    async def slow(job: ClaimedJob) -> None:
        await anyio.sleep(0.5)

    await client.enqueue("slow", None)
    worker = Worker(client, {"slow": slow}, shutdown_grace=5.0, **FAST_WORKER, **recorder.hooks())
    await _run_until(worker, lambda: bool(recorder.claimed))

    assert len(recorder.completed) == 1
    assert await client.jobs() == []


async def test_shutdown_gives_back_after_grace(client: AsyncClient) -> None:
    recorder = Recorder()

    async def stuck(job: ClaimedJob) -> None:
        await anyio.sleep(30)

    kept = await client.enqueue("stuck", 1, max_attempts=2)
    worker = Worker(client, {"stuck": stuck}, shutdown_grace=0.2, **FAST_WORKER, **recorder.hooks())
    with anyio.fail_after(5):
        await _run_until(worker, lambda: bool(recorder.claimed))

    listed = await client.jobs()
    assert [(job["id"], job["status"], job["attempts"]) for job in listed] == [
        (kept, "unclaimed", 1)
    ]
    assert recorder.completed == []


async def test_shutdown_on_last_attempt_dead_letters(client: AsyncClient) -> None:
    # Giving back cannot refund the attempt the claim used, so a job on its last attempt
    # is dead-lettered by the give-back (documented in osqueue.worker).
    recorder = Recorder()

    async def stuck(job: ClaimedJob) -> None:
        await anyio.sleep(30)

    job_id = await client.enqueue("stuck", 1, max_attempts=1)
    worker = Worker(client, {"stuck": stuck}, shutdown_grace=0.0, **FAST_WORKER, **recorder.hooks())
    await _run_until(worker, lambda: bool(recorder.claimed))

    letters = await client.dead()
    assert letters[0]["job"]["id"] == job_id
    assert SHUTDOWN_REASON in letters[0]["reason"]


async def test_cancelled_run_gives_back(client: AsyncClient) -> None:
    recorder = Recorder()

    async def stuck(job: ClaimedJob) -> None:
        await anyio.sleep(30)

    job_id = await client.enqueue("stuck", 1)
    worker = Worker(client, {"stuck": stuck}, **FAST_WORKER, **recorder.hooks())
    with anyio.move_on_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run)
            while not recorder.claimed:
                await anyio.sleep(0.01)
            group.cancel_scope.cancel()

    listed = await client.jobs()
    assert [(job["id"], job["status"]) for job in listed] == [(job_id, "unclaimed")]


async def test_worker_survives_failover(cluster: BrokerCluster, client: AsyncClient) -> None:
    recorder = Recorder()
    first = cluster.leader()
    assert first is not None
    second = await cluster.start()

    async def handle(job: ClaimedJob) -> None:
        await anyio.sleep(0.01)

    async with AsyncClient(
        None, storage=cluster.storage, transport=cluster.transport, retry_timeout=10.0
    ) as discovering:
        ids = [await discovering.enqueue("t", n) for n in range(10)]
        worker = Worker(
            discovering, {"t": handle}, concurrency=2, **FAST_WORKER, **recorder.hooks()
        )
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run)
            with anyio.fail_after(10):
                while len(recorder.completed) < 3:
                    await anyio.sleep(0.01)
            await cluster.kill(first)
            ids += [await discovering.enqueue("t", n) for n in range(10, 15)]
            with anyio.fail_after(10):
                while len({job_id for job_id, _ in recorder.completed}) < len(ids):
                    await anyio.sleep(0.02)
            worker.stop()
        assert discovering.leader_url == second
        stats = await discovering.stats()

    assert stats["counters"]["completed"] == len(ids)
    assert stats["counts"]["unclaimed"] + stats["counts"]["inProgress"] == 0


def test_worker_rejects_bad_settings() -> None:
    client = AsyncClient("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="concurrency"):
        Worker(client, {"t": print}, concurrency=0)
    with pytest.raises(ValueError, match="heartbeat_interval"):
        Worker(client, {"t": print}, heartbeat_interval=0)
    with pytest.raises(ValueError, match="job type"):
        Worker(client, {"": print})


async def test_stop_interrupts_waiting_claim(cluster: BrokerCluster) -> None:
    # No broker listens at this address, so the claim keeps retrying until stop().
    async with AsyncClient(
        "http://127.0.0.1:18999", transport=cluster.transport, retry_timeout=30.0
    ) as unreachable:
        worker = Worker(unreachable, {"t": print}, **FAST_WORKER)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(worker.run)
                await anyio.sleep(0.3)
                worker.stop()
                stopped_at = anyio.current_time()
        # The task group waited for run() to return.
        assert anyio.current_time() - stopped_at < 1.0
    assert worker.processed == 0


async def test_unauthorized_stops_worker(cluster: BrokerCluster) -> None:
    url = await cluster.start(token="s3cret-token-0123456789", wait_leader=True)
    async with AsyncClient(url, transport=cluster.transport) as anonymous:
        worker = Worker(anonymous, {"t": print}, concurrency=2, **FAST_WORKER)
        with anyio.fail_after(5):
            with pytest.raises(UnauthorizedError):
                await worker.run()
