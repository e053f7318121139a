"""``osqueue submit``, ``jobs``, ``stats`` and ``worker`` against an ``osqueue broker`` process
on the memory backend (so every command needs BROKER_URL)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

HANDLER = """
import json, os

def handle(job):
    if job.payload.get("fail"):
        raise RuntimeError("asked to fail")
    with open(os.environ["CLI_RECORD"], "a") as record:
        record.write(json.dumps(job.payload) + "\\n")
"""


def _osqueue() -> list[str]:
    script = Path(sys.executable).parent / "osqueue"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from osqueue.cli import main; main()"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean_env() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BROKER_", "STORAGE_", "S3_", "GCS_", "OSQUEUE_"))
    }


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("cli-broker") / "broker.log"
    env = _clean_env() | {"BROKER_PORT": str(port)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*_osqueue(), "broker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"broker did not start:\n{log_path.read_text(errors='replace')}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).json().get("leader"):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _run(broker_url: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = _clean_env() | {"BROKER_URL": broker_url}
    return subprocess.run(
        [*_osqueue(), *args],
        check=False,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_submit_jobs_and_stats(broker_url: str) -> None:
    submitted = _run(
        broker_url, "submit", "cli-a", '{"to": "a@example.com"}', "--max-attempts", "2"
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith("job-")

    from_stdin = _run(broker_url, "submit", "cli-a", "-", "--id", "order-1", input="[1, 2]")
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout.strip() == "order-1"

    listed = _run(broker_url, "jobs", "--status", "unclaimed", "--json")
    assert listed.returncode == 0, listed.stderr
    jobs = {job["id"]: job for job in json.loads(listed.stdout)}
    assert jobs[job_id]["payload"] == {"to": "a@example.com"}
    assert jobs[job_id]["maxAttempts"] == 2
    assert jobs["order-1"]["payload"] == [1, 2]

    table = _run(broker_url, "jobs")
    assert table.returncode == 0, table.stderr
    assert "order-1" in table.stdout

    stats = _run(broker_url, "stats")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["broker"]["leader"] is True


def test_submit_rejects_bad_input(broker_url: str) -> None:
    not_json = _run(broker_url, "submit", "cli-b", "{to: 1}")
    assert not_json.returncode == 2
    assert "is not JSON" in not_json.stderr

    reserved = _run(broker_url, "submit", "cli-b", "1", "--id", "job-9")
    assert reserved.returncode == 1
    assert "reserved" in reserved.stderr

    duplicate = _run(broker_url, "submit", "cli-b", "1", "--id", "dup-1")
    assert duplicate.returncode == 0
    again = _run(broker_url, "submit", "cli-b", "1", "--id", "dup-1")
    assert again.returncode == 1
    assert "DuplicateJobId" in again.stderr

    bad_status = _run(broker_url, "jobs", "--status", "finished")
    assert bad_status.returncode == 2
    assert "unknown status" in bad_status.stderr


def test_unreachable_broker_reported() -> None:
    result = _run(f"http://127.0.0.1:{_free_port()}", "stats", "--retry-timeout", "0.3")
    assert result.returncode == 1
    assert "no leader accepted the request" in result.stderr


def test_worker_runs_and_stops(broker_url: str, tmp_path: Path) -> None:
    (tmp_path / "cli_handlers.py").write_text(HANDLER)
    record = tmp_path / "record.jsonl"
    for n in range(3):
        assert _run(broker_url, "submit", "cli-w", json.dumps({"n": n})).returncode == 0
    assert (
        _run(broker_url, "submit", "cli-w", '{"fail": true}', "--max-attempts", "1").returncode == 0
    )

    env = _clean_env() | {"BROKER_URL": broker_url, "CLI_RECORD": str(record)}
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [
                *_osqueue(),
                "--log-level",
                "INFO",
                "worker",
                "--handler",
                "cli_handlers:handle",
                "--type",
                "cli-w",
                "--concurrency",
                "2",
                "--poll-interval",
                "0.05",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done = record.read_text().splitlines() if record.exists() else []
            if len(done) == 3:
                break
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    log = log_path.read_text(errors="replace")
    assert sorted(json.loads(line)["n"] for line in record.read_text().splitlines()) == [0, 1, 2]
    assert "started: handler cli_handlers:handle, types cli-w, concurrency 2" in log
    assert "stopped after" in log
    assert "moved to the dead letters" in log

    dead = _run(broker_url, "jobs", "--status", "dead", "--json")
    letters = json.loads(dead.stdout)
    assert [job["payload"] for job in letters] == [{"fail": True}]


def test_worker_rejects_bad_handler(broker_url: str, tmp_path: Path) -> None:
    result = _run(broker_url, "worker", "--handler", "no_such_module_xyz:run")
    assert result.returncode == 2
    assert "cannot import module 'no_such_module_xyz'" in result.stderr

    result = _run(broker_url, "worker", "--handler", "json")
    assert result.returncode == 2
    assert "is not module:function" in result.stderr
