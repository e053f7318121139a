"""``osqueue submit``, ``jobs``, ``stats`` and ``worker`` against an ``osqueue broker`` process
on the memory backend (so every command needs BROKER_URL)."""

from __future__ import annotations

import contextlib
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
from osqueue.client import Client

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
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BROKER_", "STORAGE_", "S3_", "GCS_", "OSQUEUE_"))
    }
    # A wide console keeps rich from wrapping the messages that the tests look for.
    return env | {"COLUMNS": "400"}


@contextlib.contextmanager
def _broker_process(log_dir: Path, **env_extra: str) -> Iterator[str]:
    """Run ``osqueue broker`` on a free port with the memory backend; yield its URL."""

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_dir / "broker.log"
    env = _clean_env() | {"BROKER_PORT": str(port)} | env_extra
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


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _broker_process(tmp_path_factory.mktemp("cli-broker")) as url:
        yield url


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
    assert reserved.returncode == 2
    assert "reserved" in reserved.stderr
    assert "--id" in reserved.stderr

    empty_type = _run(broker_url, "submit", "", "{}")
    assert empty_type.returncode == 2
    assert "job type must be a non-empty string" in empty_type.stderr

    control = _run(broker_url, "submit", "cli-b", "1", "--id", "a\tb")
    assert control.returncode == 2
    assert "control characters" in control.stderr

    huge = _run(broker_url, "submit", "cli-b", '{"x": 1e400}')
    assert huge.returncode == 2
    assert "the number 1e400 is outside the range of a 64-bit float" in huge.stderr
    assert "Traceback" not in huge.stderr

    nan = _run(broker_url, "submit", "cli-b", "[NaN]")
    assert nan.returncode == 2
    assert "NaN is not valid JSON" in nan.stderr

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


@pytest.mark.parametrize("command, value", [
    (["stats"], "-1"),
    (["jobs"], "nan"),
    (["submit", "t", "1"], "inf"),
    (["submit", "t", "1"], "-1"),
    (["worker", "--handler", "m:f"], "-1"),
])
def test_retry_timeout_validated(command: list[str], value: str) -> None:
    result = _run("http://127.0.0.1:1", *command, "--retry-timeout", value)

    assert result.returncode == 2, result.stderr
    assert "--retry-timeout" in result.stderr
    assert "finite number of seconds >= 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_flag_named_in_config_error() -> None:
    result = _run("http://127.0.0.1:1", "stats", "--url", "notaurl")

    assert result.returncode == 2
    assert "--url" in result.stderr
    assert "BROKER_URL" not in result.stderr


def test_missing_broker_url_reported() -> None:
    result = subprocess.run(
        [*_osqueue(), "stats"], check=False, env=_clean_env(), capture_output=True, text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "BROKER_URL: is not set" in result.stderr
    assert "STORAGE_BACKEND=memory" in result.stderr


def test_worker_handler_syntax_error(broker_url: str, tmp_path: Path) -> None:
    (tmp_path / "syntaxmod.py").write_text("def f(:\n    pass\n")
    (tmp_path / "raisingmod.py").write_text("raise RuntimeError('boom at import')\n")
    env = _clean_env() | {"BROKER_URL": broker_url}

    results = [
        subprocess.run(
            [*_osqueue(), "worker", "--handler", handler], check=False, cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=60,
        )
        for handler in ("syntaxmod:f", "raisingmod:f")
    ]

    syntax, raising = results
    assert syntax.returncode == 2
    assert "cannot import module 'syntaxmod' (SyntaxError at syntaxmod.py:1" in syntax.stderr
    assert "Traceback" not in syntax.stderr
    assert raising.returncode == 2
    assert "RuntimeError while importing it: boom at import" in raising.stderr
    assert "Traceback" not in raising.stderr


def test_worker_wrong_token_one_line(tmp_path: Path) -> None:
    (tmp_path / "cli_handlers.py").write_text(HANDLER)
    with _broker_process(tmp_path, OSQUEUE_TOKEN="right-token-0123456789") as url:
        env = _clean_env() | {"BROKER_URL": url, "OSQUEUE_TOKEN": "wrong-token-0123456789"}
        result = subprocess.run(
            [*_osqueue(), "worker", "--handler", "cli_handlers:handle", "--retry-timeout", "2"],
            check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Unauthorized" in errors[0]


def test_jobs_table_readable(broker_url: str) -> None:
    long_id = "order-" + "x" * 70
    assert _run(broker_url, "submit", "cli-t", "1", "--id", long_id).returncode == 0

    table = _run(broker_url, "jobs", "--status", "unclaimed", "--limit", "1000")

    assert table.returncode == 0, table.stderr
    assert long_id in table.stdout
    assert "visible at (UTC)" in table.stdout
    assert " ago)" in table.stdout or "(now)" in table.stdout


def test_jobs_dead_shows_reason(broker_url: str) -> None:
    with Client(broker_url) as client:
        client.enqueue("cli-dead", {"n": 1}, max_attempts=1, job_id="dead-1")
        job = client.claim("cli-dead-worker", types=["cli-dead"])
        assert job is not None
        client.fail(job.id, job.claim_token, "handler crashed: KeyError 'to'")

    table = _run(broker_url, "jobs", "--status", "dead", "--limit", "1000")
    as_json = _run(broker_url, "jobs", "--status", "dead", "--json", "--limit", "1000")

    assert table.returncode == 0, table.stderr
    assert "reason" in table.stdout
    assert "KeyError" in table.stdout
    letters = {job["id"]: job for job in json.loads(as_json.stdout)}
    assert "KeyError 'to'" in letters["dead-1"]["reason"]


def test_jobs_count_singular(tmp_path: Path) -> None:
    with _broker_process(tmp_path) as url:
        assert _run(url, "submit", "cli-one", "1").returncode == 0
        listed = _run(url, "jobs")

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.rstrip().endswith("\n1 job")


def test_dead_purge(broker_url: str) -> None:
    with Client(broker_url) as client:
        for job_id in ("purge-1", "purge-2"):
            client.enqueue("cli-purge", 1, max_attempts=1, job_id=job_id)
            job = client.claim("w", types=["cli-purge"])
            assert job is not None
            client.fail(job.id, job.claim_token, "failed")

    neither = _run(broker_url, "dead", "purge")
    by_id = _run(broker_url, "dead", "purge", "--id", "purge-1")
    dead = json.loads(_run(broker_url, "jobs", "--status", "dead", "--json").stdout)

    assert neither.returncode == 2
    assert "--all" in neither.stderr
    assert by_id.returncode == 0, by_id.stderr
    assert by_id.stdout.strip() == "purged 1 dead letter"
    ids = [job["id"] for job in dead]
    assert "purge-1" not in ids
    assert "purge-2" in ids


def test_dead_purge_all(tmp_path: Path) -> None:
    with _broker_process(tmp_path) as url:
        with Client(url) as client:
            client.enqueue("t", 1, max_attempts=1)
            job = client.claim("w")
            assert job is not None
            client.fail(job.id, job.claim_token, "failed")
        purged = _run(url, "dead", "purge", "--all")
        again = _run(url, "dead", "purge", "--all")

    assert purged.stdout.strip() == "purged 1 dead letter"
    assert again.stdout.strip() == "purged 0 dead letters"


def test_exception_group_unwrapped() -> None:
    from osqueue.client import UnauthorizedError
    from osqueue.client_cli import _osqueue_error

    inner = UnauthorizedError("401")
    nested = BaseExceptionGroup("outer", [ExceptionGroup("inner", [inner])])
    mixed = ExceptionGroup("mixed", [inner, RuntimeError("bug")])

    assert _osqueue_error(nested) is inner
    assert _osqueue_error(mixed) is None
    assert _osqueue_error(RuntimeError("bug")) is None
