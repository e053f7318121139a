"""Retry and leader-following rules of osqueue.client, against scripted HTTP responses.

The real broker cannot be made to drop a connection after a request or to return 504 on
demand, so these tests script the responses with ``httpx.MockTransport``. The tests against
the real broker app are in test_client.py.
"""

from __future__ import annotations

import json
import random

import anyio
import httpx
import pytest
from osqueue.client import (
    AsyncClient,
    BrokerUnavailableError,
    Client,
    CommitIndeterminateError,
    InvalidRequestError,
    StaleClaimError,
    UnauthorizedError,
    UnknownJobError,
    error_from_response,
    settings_from_env,
)
from osqueue.errors import ConfigError, StorageBackendError
from osqueue.spec.queue import NewJob
from osqueue.state import encode_state, initial_state
from osqueue.storage.memory import MemoryBackend

pytestmark = pytest.mark.anyio

A = "http://127.0.0.1:9001"
B = "http://127.0.0.1:9002"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


def _error(status: int, tag: str, **extra: object) -> httpx.Response:
    return httpx.Response(status, json={"_tag": tag, "message": f"scripted {tag}", **extra})


class Script:
    """A transport that returns the next scripted response, or raises the next scripted
    error, and logs each request."""

    def __init__(self, *actions: object) -> None:
        self.actions = list(actions)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        action = self.actions.pop(0)
        if isinstance(action, Exception):
            raise action
        assert isinstance(action, httpx.Response)
        return action

    def hosts(self) -> list[str]:
        return [f"{r.url.scheme}://{r.url.host}:{r.url.port}" for r in self.requests]


def _client(script: Script, url: object = A, **options: object) -> AsyncClient:
    options.setdefault("retry_timeout", 5.0)
    return AsyncClient(url, transport=httpx.MockTransport(script), rng=random.Random(1), **options)


async def test_not_leader_follows_hint() -> None:
    script = Script(
        _error(503, "NotLeader", leader=B),
        httpx.Response(201, json={"jobId": "job-1"}),
    )
    async with _client(script) as client:
        assert await client.enqueue("email", {"to": "x"}) == "job-1"
        assert client.leader_url == B
    assert script.hosts() == [A, B]


async def test_not_leader_without_hint_rotates_urls() -> None:
    script = Script(
        _error(503, "NotLeader", leader=None),
        httpx.Response(200, json={"job": None}),
    )
    async with _client(script, url=f"{A},{B}") as client:
        assert await client.claim("w1") is None
    assert script.hosts() == [A, B]


async def test_connect_error_retries_enqueue() -> None:
    script = Script(
        httpx.ConnectError("refused"),
        httpx.Response(201, json={"jobId": "job-7"}),
    )
    async with _client(script, url=f"{A},{B}") as client:
        assert await client.enqueue("email") == "job-7"
    assert script.hosts() == [A, B]


async def test_enqueue_504_not_retried() -> None:
    script = Script(_error(504, "CommitIndeterminate"))
    async with _client(script) as client:
        with pytest.raises(CommitIndeterminateError):
            await client.enqueue("email", 1)
    assert len(script.requests) == 1


async def test_enqueue_read_timeout_not_retried() -> None:
    script = Script(httpx.ReadTimeout("no answer"))
    async with _client(script) as client:
        with pytest.raises(CommitIndeterminateError, match="may have been applied"):
            await client.enqueue("email", 1)
    assert len(script.requests) == 1


async def test_enqueue_with_id_retried_duplicate_is_success() -> None:
    script = Script(
        _error(504, "CommitIndeterminate"),
        _error(409, "DuplicateJobId"),
    )
    async with _client(script) as client:
        assert await client.enqueue("email", 1, job_id="order-1") == "order-1"
    bodies = [json.loads(request.content) for request in script.requests]
    assert bodies[0] == bodies[1] == {"type": "email", "payload": 1, "id": "order-1"}


async def test_enqueue_with_id_first_duplicate_raises() -> None:
    script = Script(_error(409, "DuplicateJobId"))
    async with _client(script) as client:
        with pytest.raises(Exception, match="DuplicateJobId"):
            await client.enqueue("email", 1, job_id="order-1")


async def test_enqueue_many_with_ids_retried() -> None:
    script = Script(httpx.RemoteProtocolError("dropped"), _error(409, "DuplicateJobId"))
    jobs = [NewJob("email", 1, id="a-1"), NewJob("email", 2, id="a-2")]
    async with _client(script) as client:
        assert await client.enqueue_many(jobs) == ["a-1", "a-2"]
    assert len(script.requests) == 2


async def test_complete_retried_after_504() -> None:
    script = Script(_error(504, "CommitIndeterminate"), _error(404, "UnknownJob"))
    async with _client(script) as client:
        with pytest.raises(UnknownJobError) as raised:
            await client.complete("job-1", "c1")
    assert raised.value.retried is True
    assert script.requests[1].url.path == "/v1/jobs/job-1/complete"


async def test_stale_claim_not_retried() -> None:
    script = Script(_error(409, "StaleClaim"))
    async with _client(script) as client:
        with pytest.raises(StaleClaimError) as raised:
            await client.heartbeat("job-1", "c1")
    assert raised.value.retried is False
    assert len(script.requests) == 1


async def test_storage_unavailable_retried() -> None:
    script = Script(
        _error(503, "StorageUnavailable"),
        _error(503, "Overloaded"),
        httpx.Response(200, json={"ok": True}),
    )
    async with _client(script) as client:
        await client.heartbeat("job-1", "c1")
    assert len(script.requests) == 3


async def test_gives_up_after_retry_timeout() -> None:
    script = Script(*[httpx.ConnectError("refused") for _ in range(100)])
    async with _client(script, retry_timeout=0.3) as client:
        with anyio.fail_after(5):
            with pytest.raises(BrokerUnavailableError, match="within 0.3 s"):
                await client.stats()
    assert 2 <= len(script.requests) < 100


async def test_token_sent_as_bearer() -> None:
    script = Script(httpx.Response(200, json={"jobs": []}))
    async with _client(script, token="s3cret") as client:
        assert await client.jobs(status="dead", limit=5) == []
    request = script.requests[0]
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.url.params["status"] == "dead"
    assert request.url.params["limit"] == "5"


async def test_job_id_is_quoted_in_path() -> None:
    script = Script(httpx.Response(200, json={"status": "dead", "reason": "r"}))
    async with _client(script) as client:
        result = await client.fail("orders/7", "c3", "boom", retry_delay=1.5)
    assert result.status == "dead"
    assert result.reason == "r"
    assert script.requests[0].url.raw_path == b"/v1/jobs/orders%2F7/fail"
    assert json.loads(script.requests[0].content) == {
        "claimToken": "c3",
        "error": "boom",
        "retryDelayMs": 1500,
    }


async def test_discovery_reads_queue_json() -> None:
    storage = MemoryBackend()
    await storage.create_if_not_exists(
        "queue.json", encode_state(initial_state(address=B, epoch=2, lease_seconds=5.0))
    )
    script = Script(httpx.Response(200, json={"job": None}))
    async with _client(script, url=None, storage=storage) as client:
        assert await client.claim("w1", ["email"]) is None
    assert script.hosts() == [B]
    assert json.loads(script.requests[0].content) == {"workerId": "w1", "types": ["email"]}


async def test_discovery_without_queue_json_times_out() -> None:
    script = Script()
    async with _client(script, url=None, storage=MemoryBackend(), retry_timeout=0.2) as client:
        with pytest.raises(BrokerUnavailableError, match="names no leader"):
            await client.stats()
    assert script.requests == []


def test_error_tags_map_to_classes() -> None:
    request = httpx.Request("POST", f"{A}/v1/jobs")
    cases = {
        (400, "InvalidRequest"): InvalidRequestError,
        (401, "Unauthorized"): UnauthorizedError,
        (404, "UnknownJob"): UnknownJobError,
        (409, "StaleClaim"): StaleClaimError,
        (504, "CommitIndeterminate"): CommitIndeterminateError,
    }
    for (status, tag), cls in cases.items():
        response = _error(status, tag)
        response.request = request
        error = error_from_response(response)
        assert type(error) is cls
        assert error.tag == tag
        assert error.status == status


def test_error_without_json_body_uses_status() -> None:
    response = httpx.Response(401, text="<html>denied</html>")
    response.request = httpx.Request("GET", f"{A}/v1/stats")
    assert isinstance(error_from_response(response), UnauthorizedError)


def test_settings_from_env_prefers_url() -> None:
    settings = settings_from_env({"BROKER_URL": f"{A}/, {B}", "OSQUEUE_TOKEN": "t"})
    assert settings.urls == (A, B)
    assert settings.token == "t"
    assert settings.storage is None


def test_settings_from_env_host_port_default() -> None:
    assert settings_from_env({"BROKER_HOST": "127.0.0.1"}).urls == ("http://127.0.0.1:8080",)
    assert settings_from_env({"BROKER_PORT": "9001"}).urls == (A,)


def test_settings_from_env_requires_address_on_memory() -> None:
    with pytest.raises(ConfigError, match="BROKER_URL: is not set") as raised:
        settings_from_env({})
    assert "STORAGE_BACKEND=memory" in str(raised.value)


def test_settings_from_env_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="BROKER_URL"):
        settings_from_env({"BROKER_URL": "127.0.0.1:8080"})
    with pytest.raises(ConfigError, match="BROKER_PORT"):
        settings_from_env({"BROKER_PORT": "eighty"})


def test_sync_client_uses_same_rules() -> None:
    script = Script(
        _error(503, "NotLeader", leader=B),
        httpx.Response(201, json={"jobId": "job-3"}),
        _error(504, "CommitIndeterminate"),
    )
    with Client(A, transport=httpx.MockTransport(script), retry_timeout=5.0) as client:
        assert client.enqueue("email", {"n": 1}) == "job-3"
        assert client.leader_url == B
        with pytest.raises(CommitIndeterminateError):
            client.enqueue("email", {"n": 2})


def test_invalid_job_rejected_before_sending() -> None:
    script = Script()
    with Client(A, transport=httpx.MockTransport(script)) as client:
        with pytest.raises(ValueError, match="max_attempts"):
            client.enqueue("email", 1, max_attempts=0)
        with pytest.raises(ValueError, match="reserved"):
            client.enqueue("email", 1, job_id="job-5")
    assert script.requests == []


class MissingBucket(MemoryBackend):
    async def read(self, key: str) -> None:
        raise StorageBackendError(
            f"read of {key!r} failed: NoSuchBucket", key=key, retryable=False, status=404
        )


async def test_discovery_permanent_storage_error_raised() -> None:
    script = Script()
    async with _client(script, url=None, storage=MissingBucket(), retry_timeout=5.0) as client:
        with anyio.fail_after(1):
            with pytest.raises(StorageBackendError, match="NoSuchBucket"):
                await client.stats()
    assert script.requests == []


async def test_unreachable_logged_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="osqueue.client")
    script = Script(
        *[httpx.ConnectError("refused") for _ in range(6)],
        httpx.Response(200, json={"job": None}),
    )
    async with _client(script, url=f"{A},{B}") as client:
        assert await client.claim("w1") is None

    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1
    assert "after 6 failed connection attempts" in caplog.text


class FlakyStorage(MemoryBackend):
    async def read(self, key: str) -> None:
        raise StorageBackendError(f"read of {key!r} failed: timed out", key=key, retryable=True)


async def test_discovery_read_failure_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="osqueue.client")
    script = Script(*[httpx.ConnectError("refused") for _ in range(4)],
                    httpx.Response(200, json={"job": None}))
    async with _client(script, url=A, storage=FlakyStorage()) as client:
        assert await client.claim("w1") is None

    warnings = [r for r in caplog.records if "to find the leader failed" in r.getMessage()]
    assert len(script.requests) == 5
    assert len(warnings) == 1
    assert "at a fixed URL" in warnings[0].getMessage()
    assert "timed out" in warnings[0].getMessage()


async def test_discovery_failure_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="osqueue.client")
    script = Script(*[httpx.ConnectError("refused") for _ in range(100)])
    async with _client(script, url=A, storage=FlakyStorage(), retry_timeout=0.3) as client:
        with pytest.raises(BrokerUnavailableError) as raised:
            await client.stats()

    assert caplog.records == []
    assert "no leader accepted the request" in str(raised.value)
    assert "to find the leader failed too: read of 'queue.json' failed" in str(raised.value)


async def test_purge_dead_retried_after_504() -> None:
    script = Script(_error(504, "CommitIndeterminate"), httpx.Response(200, json={"purged": 0}))
    async with _client(script) as client:
        assert await client.purge_dead(["job-7"]) == 0
    assert [r.method for r in script.requests] == ["DELETE", "DELETE"]
    assert json.loads(script.requests[0].content) == {"jobIds": ["job-7"]}


async def test_purge_dead_rejects_empty_ids() -> None:
    async with _client(Script()) as client:
        with pytest.raises(ValueError, match="non-empty list"):
            await client.purge_dead([])
