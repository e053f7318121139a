"""End to end: two ``osqueue broker`` processes on SeaweedFS or fake-gcs-server, producers and
workers, and the leader killed with SIGKILL in the middle of the run.

Each test starts broker A, waits until it leads, starts broker B as its standby, and runs:

- producers (tasks sharing an ``AsyncClient`` in this process) that enqueue ``JOBS`` jobs,
  half with an explicit id (retried safely across the failover) and half without (an
  unknown outcome is recorded, never retried);
- a worker in this process (``osqueue.worker.Worker``) and one ``osqueue worker``
  subprocess. Both find the leader through ``queue.json`` on the storage.

When a third of the jobs are acknowledged, broker A gets SIGKILL. Broker B takes over once
A's lease (``BROKER_HEARTBEAT_TIMEOUT_MS``) has lapsed. The test then waits until the queue
is drained and checks that no acknowledged job was lost: each one ran, the queue completed
every enqueued job exactly once (the ``completed`` counter equals ``enqueued`` and no job
is live or dead), and no job ran that was never submitted.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from osqueue.client import AsyncClient, ClaimedJob, CommitIndeterminateError
from osqueue.storage.base import StorageBackend
from osqueue.worker import Worker

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

JOBS = 90
PRODUCERS = 3
"""Producer tasks, so that several enqueues are in flight when the leader dies."""
KILL_AFTER = 30
"""Acknowledged enqueues before the leader is killed."""
BROKER_TIMINGS = {
    "BROKER_HEARTBEAT_INTERVAL_MS": "500",
    "BROKER_HEARTBEAT_TIMEOUT_MS": "3000",
    # Longer than a failover, so that jobs in progress at the kill usually survive it.
    "JOB_HEARTBEAT_TIMEOUT_MS": "6000",
}
WORKER_HEARTBEAT = 0.5
STARTUP_TIMEOUT = 30.0
DRAIN_TIMEOUT = 40.0

HANDLER_MODULE = '''
"""Handler of the ``osqueue worker`` subprocess: append each job to E2E_RECORD."""

import json
import os
import time


def handle(job):
    time.sleep(0.01)
    with open(os.environ["E2E_RECORD"], "a") as record:
        record.write(json.dumps({"id": job.id, "n": job.payload["n"]}) + "\\n")
'''


@dataclass
class StorageTarget:
    """Storage variables for the subprocesses and a backend for this process."""

    name: str
    env: dict[str, str]
    make_backend: Callable[[], StorageBackend]


@pytest.fixture
def seaweedfs_target(seaweedfs_server: Any) -> StorageTarget:
    prefix = f"e2e-{uuid.uuid4().hex[:8]}/"
    env = {
        "STORAGE_BACKEND": "s3",
        "S3_BUCKET": seaweedfs_server.bucket,
        "S3_ENDPOINT_URL": seaweedfs_server.endpoint_url,
        "S3_REGION": seaweedfs_server.region,
        "S3_PREFIX": prefix,
        # Dummy credentials of the local test server only.
        "AWS_ACCESS_KEY_ID": seaweedfs_server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": seaweedfs_server.secret_access_key,
    }
    return StorageTarget("seaweedfs", env, lambda: seaweedfs_server.make_backend(prefix))


@pytest.fixture
def fake_gcs_target(fake_gcs_server: Any) -> StorageTarget:
    prefix = f"e2e-{uuid.uuid4().hex[:8]}/"
    env = {
        "STORAGE_BACKEND": "gcs",
        "GCS_BUCKET": fake_gcs_server.bucket,
        "GCS_PREFIX": prefix,
        "STORAGE_EMULATOR_HOST": fake_gcs_server.endpoint_url,
    }
    return StorageTarget("fake-gcs-server", env, lambda: fake_gcs_server.make_backend(prefix))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _osqueue_command() -> list[str]:
    script = Path(sys.executable).parent / "osqueue"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from osqueue.cli import main; main()"]


def _base_env(target: StorageTarget) -> dict[str, str]:
    # Start from a clean slate: no broker or storage settings of the developer leak in.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "S3_", "GCS_", "BROKER_", "STORAGE_", "OSQUEUE_"))
    }
    env.update(target.env)
    return env


@dataclass
class Process:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str | None = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(log unreadable: {error})"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Run:
    """What the producer and the workers saw."""

    acknowledged: dict[int, str] = field(default_factory=dict)
    unknown: list[int] = field(default_factory=list)
    ran_here: list[int] = field(default_factory=list)
    completed_here: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class Cluster:
    """Broker and worker subprocesses of one test; everything is killed on exit."""

    def __init__(self, target: StorageTarget, work_dir: Path) -> None:
        self.target = target
        self.work_dir = work_dir
        self.processes: list[Process] = []

    def start_broker(self, name: str) -> Process:
        port = _free_port()
        env = (
            _base_env(self.target)
            | BROKER_TIMINGS
            | {
                "BROKER_HOST": "127.0.0.1",
                "BROKER_PORT": str(port),
            }
        )
        return self._spawn(
            name,
            [*_osqueue_command(), "--log-level", "INFO", "broker"],
            env,
            url=f"http://127.0.0.1:{port}",
        )

    def start_worker(self, name: str, record: Path) -> Process:
        (self.work_dir / "e2e_handlers.py").write_text(textwrap.dedent(HANDLER_MODULE))
        env = _base_env(self.target) | {"E2E_RECORD": str(record)}
        command = [
            *_osqueue_command(),
            "--log-level",
            "INFO",
            "worker",
            "--handler",
            "e2e_handlers:handle",
            "--type",
            "e2e",
            "--concurrency",
            "2",
            "--poll-interval",
            "0.05",
            "--heartbeat-interval",
            str(WORKER_HEARTBEAT),
            "--retry-delay",
            "0.1",
            "--shutdown-grace",
            "5",
        ]
        return self._spawn(name, command, env)

    def _spawn(
        self, name: str, command: list[str], env: dict[str, str], url: str | None = None
    ) -> Process:
        log_path = self.work_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=self.work_dir, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        logger.info("started %s (pid %d)", name, process.pid)
        started = Process(name, process, log_path, url)
        self.processes.append(started)
        return started

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} (exit {p.process.poll()}):\n{p.log_tail()}" for p in self.processes
        )

    def close(self) -> None:
        for started in self.processes:
            if started.process.poll() is None:
                started.process.kill()
                started.process.wait(timeout=10)


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[[StorageTarget], Cluster]]:
    clusters: list[Cluster] = []

    def make(target: StorageTarget) -> Cluster:
        cluster = Cluster(target, tmp_path)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


async def _health(http: httpx.AsyncClient, broker: Process) -> dict[str, Any] | None:
    try:
        response = await http.get(f"{broker.url}/healthz", timeout=2.0)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


async def _wait_role(
    http: httpx.AsyncClient,
    broker: Process,
    *,
    leader: bool | None,
    cluster: Cluster,
    timeout: float,
) -> float:
    """Wait until ``broker`` responds to /healthz (as leader, if ``leader``).

    Returns the seconds waited."""

    started = time.monotonic()
    with anyio.move_on_after(timeout):
        while True:
            if broker.process.poll() is not None:
                pytest.fail(f"{broker.name} exited early:\n{cluster.logs()}")
            health = await _health(http, broker)
            if health is not None and (leader is None or health["leader"] is leader):
                return time.monotonic() - started
            await anyio.sleep(0.05)
    pytest.fail(
        f"{broker.name} was not {'leader' if leader else 'up'} within {timeout} s:\n"
        f"{cluster.logs()}"
    )


async def _produce(client: AsyncClient, run: Run, first: int) -> None:
    for n in range(first, JOBS, PRODUCERS):
        job_id = f"e2e-{n}" if n % 2 == 0 else None
        try:
            run.acknowledged[n] = await client.enqueue(
                "e2e", {"n": n}, max_attempts=10, job_id=job_id
            )
        except CommitIndeterminateError:
            logger.info("enqueue %d has an unknown outcome", n)
            run.unknown.append(n)
        await anyio.sleep(0.02)


async def _scenario(target: StorageTarget, cluster: Cluster) -> Run:
    run = Run()
    record = cluster.work_dir / "cli-worker.jsonl"
    record.touch()
    began = time.monotonic()

    async with httpx.AsyncClient() as http:
        first = cluster.start_broker("broker-a")
        run.timings["first leader"] = await _wait_role(
            http, first, leader=True, cluster=cluster, timeout=STARTUP_TIMEOUT
        )
        second = cluster.start_broker("broker-b")
        await _wait_role(http, second, leader=False, cluster=cluster, timeout=STARTUP_TIMEOUT)
        cli_worker = cluster.start_worker("cli-worker", record)

        async def handle(job: ClaimedJob) -> None:
            run.ran_here.append(job.payload["n"])
            await anyio.sleep(0.01)

        producer = AsyncClient(None, storage=target.make_backend(), retry_timeout=30.0)
        consumer = AsyncClient(None, storage=target.make_backend(), retry_timeout=30.0)
        async with producer, consumer:
            worker = Worker(
                consumer,
                {"e2e": handle},
                concurrency=2,
                poll_interval=0.05,
                heartbeat_interval=WORKER_HEARTBEAT,
                retry_delay=0.1,
                on_completed=lambda job, _: run.completed_here.append(job.id),
            )
            async with anyio.create_task_group() as group:
                group.start_soon(worker.run)
                for first_job in range(PRODUCERS):
                    group.start_soon(_produce, producer, run, first_job)

                with anyio.fail_after(STARTUP_TIMEOUT):
                    while len(run.acknowledged) < KILL_AFTER:
                        await anyio.sleep(0.01)
                first.process.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                await _wait_role(http, second, leader=True, cluster=cluster, timeout=30.0)
                run.timings["failover"] = time.monotonic() - killed

                with anyio.fail_after(DRAIN_TIMEOUT):
                    while len(run.acknowledged) + len(run.unknown) < JOBS:
                        await anyio.sleep(0.05)
                    while True:
                        stats = await producer.stats()
                        counts, counters = stats["counts"], stats["counters"]
                        live = counts["unclaimed"] + counts["delayed"] + counts["inProgress"]
                        if live == 0 and counters["completed"] == counters["enqueued"]:
                            break
                        await anyio.sleep(0.1)
                run.timings["drained after kill"] = time.monotonic() - killed
                worker.stop()

            run.timings["total"] = time.monotonic() - began
            final_stats = await producer.stats()
            dead = await producer.dead()
            live_jobs = await producer.jobs()
            assert producer.leader_url == second.url

    cli_worker.process.send_signal(signal.SIGTERM)
    try:
        exit_code = cli_worker.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"osqueue worker ignored SIGTERM:\n{cluster.logs()}")
    assert exit_code == 0, cluster.logs()

    ran_there = [json.loads(line)["n"] for line in record.read_text().splitlines() if line]
    _check(run, ran_there, final_stats, dead, live_jobs, cluster)
    return run


def _check(
    run: Run,
    ran_there: list[int],
    stats: dict[str, Any],
    dead: list[Any],
    live_jobs: list[Any],
    cluster: Cluster,
) -> None:
    counters = stats["counters"]
    ran = set(run.ran_here) | set(ran_there)
    submitted = set(run.acknowledged) | set(run.unknown)
    lost = sorted(set(run.acknowledged) - ran)
    print(
        f"\nacknowledged {len(run.acknowledged)}, unknown {len(run.unknown)}, "
        f"executions {len(run.ran_here) + len(ran_there)} for {len(ran)} jobs, "
        f"counters {counters}, timings { ({k: round(v, 2) for k, v in run.timings.items()}) }"
    )

    assert lost == [], f"acknowledged jobs never ran: {lost}\n{cluster.logs()}"
    assert ran <= submitted, f"jobs ran that were never submitted: {sorted(ran - submitted)}"
    assert dead == [], f"dead letters: {dead}"
    assert live_jobs == []
    assert counters["completed"] == counters["enqueued"]
    assert len(run.acknowledged) <= counters["enqueued"] <= len(run.acknowledged) + len(run.unknown)
    assert len(run.completed_here) == len(set(run.completed_here))
    assert run.timings["failover"] < 15.0


@pytest.mark.s3
def test_failover_on_seaweedfs(
    seaweedfs_target: StorageTarget, cluster_factory: Callable[[StorageTarget], Cluster]
) -> None:
    cluster = cluster_factory(seaweedfs_target)
    anyio.run(_scenario, seaweedfs_target, cluster)


@pytest.mark.gcs
def test_failover_on_fake_gcs(
    fake_gcs_target: StorageTarget, cluster_factory: Callable[[StorageTarget], Cluster]
) -> None:
    cluster = cluster_factory(fake_gcs_target)
    anyio.run(_scenario, fake_gcs_target, cluster)
