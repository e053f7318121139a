"""HTTP routes of the broker, called in-process through httpx's ASGI transport."""

from __future__ import annotations

import anyio
import httpx
import msgspec
import pytest
from osqueue.broker import Broker, create_app
from osqueue.broker.wire import ERROR_STATUSES
from osqueue.state import decode_state, encode_state
from osqueue.storage.memory import MemoryBackend
from osqueue.storage.throttled import ThrottledStorageBackend

from tests.broker_support import TOKEN, running_broker, settings

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


def assert_error(response: httpx.Response, status: int, tag: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["_tag"] == tag, body
    assert isinstance(body["message"], str) and body["message"]
    assert ERROR_STATUSES[tag] == status
    return body


async def test_healthz_reports_leader():
    async with running_broker() as (_broker, client):
        response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "leader": True, "epoch": 1,
                               "address": "http://127.0.0.1:18080", "leaderEpoch": 1,
                               "leaderAddress": "http://127.0.0.1:18080"}


async def test_job_lifecycle_over_http():
    async with running_broker() as (_broker, client):
        enqueued = await client.post("/v1/jobs", json={"payload": {"to": "a"}, "type": "email",
                                                       "maxAttempts": 2})
        claimed = await client.post("/v1/jobs/claim", json={"workerId": "w1",
                                                            "types": ["email"]})
        job = claimed.json()["job"]
        beat = await client.post(f"/v1/jobs/{job['id']}/heartbeat",
                                 json={"claimToken": job["claimToken"]})
        done = await client.post(f"/v1/jobs/{job['id']}/complete",
                                 json={"claimToken": job["claimToken"]})
        empty = await client.post("/v1/jobs/claim", json={"workerId": "w1"})

    assert enqueued.status_code == 201
    assert enqueued.json() == {"jobId": "job-1"}
    assert claimed.status_code == 200
    assert job == {"id": "job-1", "type": "email", "payload": {"to": "a"}, "attempts": 1,
                   "maxAttempts": 2, "claimToken": job["claimToken"]}
    assert beat.json() == {"ok": True}
    assert done.json() == {"ok": True}
    assert empty.json() == {"job": None}


async def test_batch_enqueue_keeps_order():
    async with running_broker() as (_broker, client):
        response = await client.post("/v1/jobs", json={"jobs": [
            {"payload": 1}, {"payload": 2, "type": "b"}, {"payload": None, "id": "order-7"}]})
        listed = await client.get("/v1/jobs", params={"status": "unclaimed"})

    assert response.status_code == 201
    assert response.json() == {"jobIds": ["job-1", "job-2", "order-7"]}
    jobs = listed.json()["jobs"]
    assert [job["id"] for job in jobs] == ["job-1", "job-2", "order-7"]
    assert [job["payload"] for job in jobs] == [1, 2, None]
    assert jobs[1]["type"] == "b"
    assert jobs[0]["type"] == "default"
    assert jobs[0]["maxAttempts"] == 3


async def test_fail_returns_then_dead_letters():
    async with running_broker() as (_broker, client):
        await client.post("/v1/jobs", json={"payload": "x", "maxAttempts": 2})
        first = (await client.post("/v1/jobs/claim", json={"workerId": "w"})).json()["job"]
        returned = await client.post("/v1/jobs/job-1/fail", json={
            "claimToken": first["claimToken"], "error": "boom", "retryDelayMs": 0})
        second = (await client.post("/v1/jobs/claim", json={"workerId": "w"})).json()["job"]
        dead = await client.post("/v1/jobs/job-1/fail", json={
            "claimToken": second["claimToken"], "error": "again"})
        dead_list = await client.get("/v1/dead")
        dead_jobs = await client.get("/v1/jobs", params={"status": "dead"})

    assert returned.status_code == 200
    assert returned.json()["status"] == "returned"
    assert isinstance(returned.json()["visibleAt"], float)
    assert dead.json() == {"status": "dead", "reason": "failed on attempt 2 of 2: again"}
    letters = dead_list.json()["dead"]
    assert len(letters) == 1
    assert letters[0]["job"]["id"] == "job-1"
    assert letters[0]["job"]["status"] == "dead"
    assert letters[0]["reason"] == "failed on attempt 2 of 2: again"
    assert [job["id"] for job in dead_jobs.json()["jobs"]] == ["job-1"]


async def test_fail_with_delay_counts_as_delayed():
    async with running_broker() as (_broker, client):
        await client.post("/v1/jobs", json={"payload": 1})
        job = (await client.post("/v1/jobs/claim", json={"workerId": "w"})).json()["job"]
        await client.post("/v1/jobs/job-1/fail", json={"claimToken": job["claimToken"],
                                                       "retryDelayMs": 60_000})
        stats = (await client.get("/v1/stats")).json()
        again = await client.post("/v1/jobs/claim", json={"workerId": "w"})

    assert stats["counts"] == {"unclaimed": 0, "delayed": 1, "inProgress": 0, "dead": 0}
    assert again.json() == {"job": None}


async def test_stats_and_state_match_queue():
    async with running_broker() as (broker, client):
        await client.post("/v1/jobs", json={"jobs": [{"payload": n} for n in range(3)]})
        await client.post("/v1/jobs/claim", json={"workerId": "w"})
        stats = (await client.get("/v1/stats")).json()
        state = await client.get("/state")
        stored = await broker.storage.read("queue.json")

    assert stats["counts"] == {"unclaimed": 2, "delayed": 0, "inProgress": 1, "dead": 0}
    assert stats["counters"]["enqueued"] == 3
    assert stats["counters"]["claimed"] == 1
    assert stats["deadLetters"] == 0
    assert stats["engine"]["commits"] >= 2
    assert stats["broker"] == {
        "address": "http://127.0.0.1:18080", "role": "leader", "leader": True, "epoch": 1,
        "leaderAddress": "http://127.0.0.1:18080", "leaderEpoch": 1,
        "sequence": stats["broker"]["sequence"],
        "leaseExpiresAt": stats["broker"]["leaseExpiresAt"]}
    assert set(stats["throughput"]) == {"enqueuedPerSecond", "completedPerSecond",
                                        "windowSeconds"}
    assert state.status_code == 200
    assert decode_state(state.content) == decode_state(stored.data)


async def test_list_jobs_limit_and_status():
    async with running_broker() as (_broker, client):
        await client.post("/v1/jobs", json={"jobs": [{"payload": n} for n in range(5)]})
        await client.post("/v1/jobs/claim", json={"workerId": "w"})
        limited = (await client.get("/v1/jobs", params={"limit": 2})).json()["jobs"]
        in_progress = (await client.get("/v1/jobs", params={"status": "in_progress"})).json()

    assert [job["id"] for job in limited] == ["job-1", "job-2"]
    assert [job["id"] for job in in_progress["jobs"]] == ["job-1"]
    assert in_progress["jobs"][0]["claimedBy"] == "w"


async def test_throttle_stats_without_and_with_limits():
    async with running_broker() as (_broker, client):
        plain = (await client.get("/v1/throttle-stats")).json()
    throttled_storage = ThrottledStorageBackend(MemoryBackend(), writes_per_minute=60_000)
    async with running_broker(throttled_storage) as (_broker, client):
        throttled = (await client.get("/v1/throttle-stats")).json()

    assert plain == {"throttled": False}
    assert throttled["throttled"] is True
    assert throttled["totalWrites"] >= 1
    assert isinstance(throttled["utcDate"], str)


async def test_status_page_and_openapi_served():
    async with running_broker() as (_broker, client):
        page = await client.get("/")
        spec = await client.get("/openapi.json")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "count-unclaimed" in page.text
    assert "http://" not in page.text.replace("http://www.w3.org", "")
    assert "https://" not in page.text
    assert spec.json()["openapi"].startswith("3.")


# Errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("body, fragment", [
    (b"{", "not valid JSON"),
    (b"", "empty"),
    (b"[]", "Expected `object`"),
    (b'{"payload": 1, "maxAttempts": 0}', "maxAttempts"),
    (b'{"payload": 1, "maxAttempts": "3"}', "maxAttempts"),
    (b'{"payload": 1, "type": ""}', "type"),
    (b'{"payload": 1, "colour": "red"}', "colour"),
    (b'{"type": "email"}', "payload"),
    (b'{"jobs": []}', "jobs"),
    (b'{"jobs": [{"payload": 1}], "payload": 2}', "not both"),
    (b'{"payload": 1, "id": "job-9"}', "reserved"),
    (b'{"payload": 1e400}', "range of a 64-bit float"),
    (b'{"payload": "\xff\xfe"}', "not valid UTF-8 (byte 0xff at offset 13)"),
    (b'{"payload": 1, "id": "a\\u0000b"}', "job id without control characters"),
    (b'{"jobs": [{"payload": 1, "id": "a\\nb"}]}', "job id without control characters"),
    (b'{"jobs": [{"payload": 1}, {"payload": [-1e999]}]}', "payload cannot be decoded"),
    (b'{"payload": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
])
async def test_enqueue_rejects_malformed_body(body, fragment):
    async with running_broker() as (broker, client):
        response = await client.post("/v1/jobs", content=body)
        stored = await broker.storage.read("queue.json")

    error = assert_error(response, 400, "InvalidRequest")
    assert fragment in error["message"]
    assert decode_state(stored.data).jobs == []


async def test_invalid_utf8_hint_not_about_floats():
    async with running_broker() as (_broker, client):
        response = await client.post("/v1/jobs", content=b'{"payload": "\xc3"}')

    message = assert_error(response, 400, "InvalidRequest")["message"]
    assert "UTF-8" in message
    assert "64-bit float" not in message


@pytest.mark.parametrize("path", [
    "/v1/jobs", "/v1/jobs/claim", "/v1/jobs/job-1/heartbeat", "/v1/jobs/job-1/complete",
    "/v1/jobs/job-1/fail",
])
async def test_post_routes_reject_unknown_query(path):
    async with running_broker() as (broker, client):
        response = await client.post(path, params={"dryRun": "1"},
                                     json={"payload": 1, "workerId": "w", "claimToken": "c"})
        stored = await broker.storage.read("queue.json")

    body = assert_error(response, 400, "InvalidRequest")
    assert "unknown query parameter 'dryRun'" in body["message"]
    assert decode_state(stored.data).jobs == []


async def test_path_job_id_with_control_character_rejected():
    async with running_broker() as (_broker, client):
        response = await client.post("/v1/jobs/a%00b/complete", json={"claimToken": "c1"})

    body = assert_error(response, 400, "InvalidRequest")
    assert "control characters" in body["message"]


@pytest.mark.parametrize("path, body", [
    ("/v1/jobs/claim", {"workerId": ""}),
    ("/v1/jobs/claim", {"workerId": "w", "types": []}),
    ("/v1/jobs/claim", {"worker": "w"}),
    ("/v1/jobs/job-1/heartbeat", {}),
    ("/v1/jobs/job-1/complete", {"claimToken": 5}),
    ("/v1/jobs/job-1/fail", {"claimToken": "c1", "retryDelayMs": -1}),
    ("/v1/jobs/job-1/fail", {"claimToken": "c1", "retryDelayMs": 1.5}),
])
async def test_job_routes_reject_malformed_body(path, body):
    async with running_broker() as (_broker, client):
        response = await client.post(path, json=body)

    assert_error(response, 400, "InvalidRequest")


async def test_unknown_job_and_stale_claim():
    async with running_broker() as (_broker, client):
        unknown = await client.post("/v1/jobs/nope/complete", json={"claimToken": "c1"})
        await client.post("/v1/jobs", json={"payload": 1})
        job = (await client.post("/v1/jobs/claim", json={"workerId": "w"})).json()["job"]
        stale = await client.post("/v1/jobs/job-1/heartbeat", json={"claimToken": "c999"})
        fail_stale = await client.post("/v1/jobs/job-1/fail", json={"claimToken": "zz"})
        ok = await client.post("/v1/jobs/job-1/complete", json={"claimToken": job["claimToken"]})

    assert_error(unknown, 404, "UnknownJob")
    assert_error(stale, 409, "StaleClaim")
    assert_error(fail_stale, 409, "StaleClaim")
    assert ok.json() == {"ok": True}


async def test_duplicate_job_id_conflicts():
    async with running_broker() as (_broker, client):
        first = await client.post("/v1/jobs", json={"payload": 1, "id": "order-1"})
        second = await client.post("/v1/jobs", json={"payload": 2, "id": "order-1"})

    assert first.status_code == 201
    assert_error(second, 409, "DuplicateJobId")


async def test_job_id_with_slash_is_routed():
    async with running_broker() as (_broker, client):
        await client.post("/v1/jobs", json={"payload": 1, "id": "tenant/7"})
        job = (await client.post("/v1/jobs/claim", json={"workerId": "w"})).json()["job"]
        done = await client.post("/v1/jobs/tenant%2F7/complete",
                                 json={"claimToken": job["claimToken"]})

    assert job["id"] == "tenant/7"
    assert done.json() == {"ok": True}


async def test_unknown_route_and_method():
    async with running_broker() as (_broker, client):
        missing = await client.get("/v2/jobs")
        trailing_slash = await client.get("/v1/jobs/")
        wrong_method = await client.delete("/v1/jobs")

    assert_error(missing, 404, "NotFound")
    assert_error(trailing_slash, 404, "NotFound")
    assert_error(wrong_method, 405, "MethodNotAllowed")


@pytest.mark.parametrize("query", [
    {"status": "done"}, {"limit": "0"}, {"limit": "abc"}, {"limit": "10001"},
    {"colour": "red"},
])
async def test_list_jobs_rejects_bad_query(query):
    async with running_broker() as (_broker, client):
        response = await client.get("/v1/jobs", params=query)

    assert_error(response, 400, "InvalidRequest")


async def test_body_limit_returns_413():
    async with running_broker(max_body_bytes=2048) as (_broker, client):
        declared = await client.post("/v1/jobs", json={"payload": "x" * 4096})

        async def chunks():
            # No Content-Length: the broker must count the streamed bytes.
            for _ in range(8):
                yield b" " * 512

        streamed = await client.post("/v1/jobs", content=chunks())
        small = await client.post("/v1/jobs", json={"payload": "x" * 100})

    assert_error(declared, 413, "BodyTooLarge")
    assert_error(streamed, 413, "BodyTooLarge")
    assert small.status_code == 201


# Auth -----------------------------------------------------------------------------------


async def test_token_protects_every_route_but_healthz():
    async with running_broker(token=TOKEN) as (_broker, client):
        health = await client.get("/healthz")
        missing = await client.get("/v1/stats")
        wrong = await client.get("/v1/stats", headers={"Authorization": "Bearer nope"})
        basic = await client.get("/v1/stats", headers={"Authorization": f"Basic {TOKEN}"})
        page = await client.get("/")
        enqueue = await client.post("/v1/jobs", json={"payload": 1})
        unknown_route = await client.get("/secret")
        good = await client.get("/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"})

    assert health.status_code == 200
    for response in (missing, wrong, basic, page, enqueue, unknown_route):
        body = assert_error(response, 401, "Unauthorized")
        assert TOKEN not in body["message"]
        assert response.headers["www-authenticate"] == "Bearer"
    assert good.status_code == 200


async def test_token_never_logged(caplog):
    caplog.set_level("DEBUG")
    async with running_broker(token=TOKEN) as (_broker, client):
        await client.get("/v1/stats", headers={"Authorization": "Bearer wrong-token-value"})
        await client.get("/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"})

    assert TOKEN not in caplog.text
    assert "wrong-token-value" not in caplog.text


async def test_bearer_scheme_case_insensitive():
    async with running_broker(token=TOKEN) as (_broker, client):
        lower = await client.get("/v1/stats", headers={"Authorization": f"bearer {TOKEN}"})
        upper = await client.get("/v1/stats", headers={"Authorization": f"BEARER {TOKEN}"})
        basic = await client.get("/v1/stats", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        bare = await client.get("/v1/stats", headers={"Authorization": TOKEN})

    assert lower.status_code == 200
    assert upper.status_code == 200
    basic_message = assert_error(basic, 401, "Unauthorized")["message"]
    assert "'Basic' scheme" in basic_message
    assert "expects a Bearer token" in basic_message
    bare_message = assert_error(bare, 401, "Unauthorized")["message"]
    assert "uses no scheme" in bare_message
    assert TOKEN[:8] not in bare_message
    assert TOKEN not in repr(settings(token=TOKEN))


# Standby and storage --------------------------------------------------------------------


async def test_standby_rejects_mutations_with_leader_url():
    storage = MemoryBackend()
    async with running_broker(storage, address="http://127.0.0.1:1"), running_broker(
            storage, address="http://127.0.0.1:2", wait_leader=False, seed=2) as (_, client):
        await anyio.sleep(0.1)
        health = (await client.get("/healthz")).json()
        enqueue = await client.post("/v1/jobs", json={"payload": 1})
        stats = (await client.get("/v1/stats")).json()

    assert health["leader"] is False
    assert health["epoch"] is None
    assert health["leaderEpoch"] == 1
    assert health["leaderAddress"] == "http://127.0.0.1:1"
    body = assert_error(enqueue, 503, "NotLeader")
    assert body["leader"] == "http://127.0.0.1:1"
    assert stats["broker"]["role"] == "standby"
    assert stats["broker"]["leaderAddress"] == "http://127.0.0.1:1"
    assert stats["engine"] is None


async def test_state_unavailable_before_first_read():
    broker = Broker(MemoryBackend(), settings())
    transport = httpx.ASGITransport(app=create_app(broker))
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
        state = await client.get("/state")
        claim = await client.post("/v1/jobs/claim", json={"workerId": "w"})
        stats = await client.get("/v1/stats")

    assert_error(state, 503, "StorageUnavailable")
    body = assert_error(claim, 503, "NotLeader")
    assert body["leader"] is None
    assert stats.status_code == 200
    assert stats.json()["broker"]["role"] == "stopped"


async def test_group_commit_interval_batches_commits():
    async with running_broker(group_commit_interval=0.05) as (_broker, client):
        async def enqueue(number: int) -> None:
            await client.post("/v1/jobs", json={"payload": number})

        async with anyio.create_task_group() as group:
            for number in range(20):
                group.start_soon(enqueue, number)
        stats = (await client.get("/v1/stats")).json()

    assert stats["counters"]["enqueued"] == 20
    assert stats["engine"]["batchSizeMax"] > 1


async def test_state_route_returns_stored_bytes_shape():
    async with running_broker() as (_broker, client):
        await client.post("/v1/jobs", json={"payload": {"k": [1, 2]}})
        state = await client.get("/state")

    decoded = decode_state(state.content)
    assert encode_state(decoded) == state.content
    assert msgspec.json.decode(decoded.jobs[0].payload) == {"k": [1, 2]}


async def _dead_letter(client, job_id: str) -> None:
    await client.post("/v1/jobs", json={"payload": 1, "id": job_id, "maxAttempts": 1})
    job = (await client.post("/v1/jobs/claim", json={"workerId": "w"})).json()["job"]
    await client.post(f"/v1/jobs/{job_id}/fail", json={"claimToken": job["claimToken"]})


async def test_purge_dead_by_id_and_all():
    async with running_broker() as (_broker, client):
        for job_id in ("d-1", "d-2", "d-3"):
            await _dead_letter(client, job_id)
        by_id = await client.request("DELETE", "/v1/dead", json={"jobIds": ["d-2", "nope"]})
        after_one = (await client.get("/v1/dead")).json()["dead"]
        too_old = await client.request("DELETE", "/v1/dead", json={"diedBefore": 1})
        everything = await client.delete("/v1/dead")
        after_all = (await client.get("/v1/dead")).json()["dead"]
        stats = (await client.get("/v1/stats")).json()

    assert by_id.json() == {"purged": 1}
    assert [letter["job"]["id"] for letter in after_one] == ["d-1", "d-3"]
    assert too_old.json() == {"purged": 0}
    assert everything.json() == {"purged": 2}
    assert after_all == []
    assert stats["counters"]["dead"] == 3


@pytest.mark.parametrize("body", [
    {"jobIds": []}, {"jobIds": ["a\u0000b"]}, {"diedBefore": -1}, {"colour": 1},
])
async def test_purge_dead_rejects_bad_body(body):
    async with running_broker() as (_broker, client):
        await _dead_letter(client, "d-1")
        response = await client.request("DELETE", "/v1/dead", json=body)
        letters = (await client.get("/v1/dead")).json()["dead"]

    assert_error(response, 400, "InvalidRequest")
    assert len(letters) == 1


async def test_standby_rejects_purge():
    storage = MemoryBackend()
    async with running_broker(storage, address="http://127.0.0.1:1"), running_broker(
            storage, address="http://127.0.0.1:2", wait_leader=False, seed=2) as (_, client):
        await anyio.sleep(0.1)
        response = await client.delete("/v1/dead")

    assert assert_error(response, 503, "NotLeader")["leader"] == "http://127.0.0.1:1"


async def test_standby_logs_leader_once(caplog):
    caplog.set_level("DEBUG", logger="osqueue.broker")
    storage = MemoryBackend()
    # The standby reads the state every 0.2 s, so it reads it several times in 0.5 s.
    async with running_broker(storage, address="http://127.0.0.1:1"), running_broker(
            storage, address="http://127.0.0.1:2", wait_leader=False, seed=2) as (_, client):
        for _ in range(3):
            await client.post("/v1/jobs", json={"payload": 1})
        await anyio.sleep(0.5)

    standby_lines = [r for r in caplog.records if "is a standby" in r.getMessage()]
    assert len(standby_lines) == 1
    assert standby_lines[0].levelname == "INFO"
    assert "http://127.0.0.1:1 leads epoch 1" in standby_lines[0].getMessage()
    not_leader = [r for r in caplog.records if "is not the leader" in r.getMessage()]
    assert len(not_leader) == 3
    assert all(r.levelname == "DEBUG" for r in not_leader)
