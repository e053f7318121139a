"""The WebSocket protocol at /v1/ws, driven by Starlette's TestClient."""

from __future__ import annotations

import json
import random
import time
import warnings

import pytest
from osqueue.broker import Broker, create_app
from osqueue.storage.memory import MemoryBackend

with warnings.catch_warnings():
    # Starlette 1.x warns (StarletteDeprecationWarning, a UserWarning) that its TestClient
    # will move from httpx to httpx2. The client works the same with httpx, which the
    # project depends on.
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient, WebSocketDenialResponse

from tests.broker_support import TOKEN, settings


def client_for(**fields) -> TestClient:
    broker = Broker(MemoryBackend(), settings(**fields), rng=random.Random(3))
    client = TestClient(create_app(broker, run_broker=True))
    client.broker = broker  # type: ignore[attr-defined]
    return client


def wait_leader(client: TestClient) -> None:
    deadline = time.monotonic() + 5
    while not client.get("/healthz").json()["leader"]:
        assert time.monotonic() < deadline, "broker did not become leader"
        time.sleep(0.01)


def call(ws, request_id, method, params=None):
    message = {"id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    ws.send_text(json.dumps(message))
    return ws.receive_json()


def test_websocket_job_lifecycle():
    with client_for() as client:
        wait_leader(client)
        with client.websocket_connect("/v1/ws") as ws:
            enqueued = call(ws, 1, "enqueue", {"payload": {"n": 1}, "type": "t"})
            batch = call(ws, "b", "enqueue", {"jobs": [{"payload": 2}, {"payload": 3}]})
            claimed = call(ws, 2, "claim", {"workerId": "w", "types": ["t"]})
            token = claimed["result"]["job"]["claimToken"]
            beat = call(ws, 3, "heartbeat", {"jobId": "job-1", "claimToken": token})
            done = call(ws, 4, "complete", {"jobId": "job-1", "claimToken": token})
            second = call(ws, 5, "claim", {"workerId": "w"})
            failed = call(ws, 6, "fail", {"jobId": "job-2", "error": "x", "retryDelayMs": 5,
                                          "claimToken": second["result"]["job"]["claimToken"]})
            stats = call(ws, 7, "stats")

    assert enqueued == {"id": 1, "ok": True, "result": {"jobId": "job-1"}}
    assert batch == {"id": "b", "ok": True, "result": {"jobIds": ["job-2", "job-3"]}}
    assert claimed["result"]["job"]["id"] == "job-1"
    assert claimed["result"]["job"]["payload"] == {"n": 1}
    assert beat == {"id": 3, "ok": True, "result": {"ok": True}}
    assert done == {"id": 4, "ok": True, "result": {"ok": True}}
    assert failed["ok"] is True
    assert failed["result"]["status"] == "returned"
    assert stats["result"]["counters"]["completed"] == 1
    assert stats["result"]["broker"]["leader"] is True


def test_websocket_purge_dead():
    with client_for() as client:
        wait_leader(client)
        with client.websocket_connect("/v1/ws") as ws:
            call(ws, 1, "enqueue", {"payload": 1, "id": "d-1", "maxAttempts": 1})
            claimed = call(ws, 2, "claim", {"workerId": "w"})
            token = claimed["result"]["job"]["claimToken"]
            call(ws, 3, "fail", {"jobId": "d-1", "claimToken": token})
            bad = call(ws, 4, "purgeDead", {"jobIds": []})
            purged = call(ws, 5, "purgeDead", {"jobIds": ["d-1"]})
            again = call(ws, 6, "purgeDead")

    assert bad["ok"] is False
    assert bad["error"]["_tag"] == "InvalidRequest"
    assert purged == {"id": 5, "ok": True, "result": {"purged": 1}}
    assert again == {"id": 6, "ok": True, "result": {"purged": 0}}


@pytest.mark.parametrize("message, tag", [
    ("not json", "InvalidRequest"),
    ("[1, 2]", "InvalidRequest"),
    (json.dumps({"id": 9, "method": "explode"}), "InvalidRequest"),
    (json.dumps({"id": 9, "method": "claim", "params": {"workerId": 5}}), "InvalidRequest"),
    (json.dumps({"id": 9, "method": "enqueue", "params": {"payload": 1, "x": 1}}),
     "InvalidRequest"),
    (json.dumps({"id": 9, "method": "complete", "params": {"jobId": "nope",
                                                          "claimToken": "c1"}}),
     "UnknownJob"),
    (json.dumps({"id": 9, "method": "claim", "params": {"workerId": "w"}, "extra": 1}),
     "InvalidRequest"),
])
def test_websocket_errors_keep_connection_open(message, tag):
    with client_for() as client:
        wait_leader(client)
        with client.websocket_connect("/v1/ws") as ws:
            ws.send_text(message)
            error = ws.receive_json()
            after = call(ws, "next", "stats")

    assert error["ok"] is False
    assert error["error"]["_tag"] == tag
    assert error["error"]["message"]
    if message.startswith("{") and '"id": 9' in message:
        assert error["id"] == 9
    assert after["ok"] is True


def test_websocket_message_size_limit():
    with client_for(max_body_bytes=2048) as client:
        wait_leader(client)
        with client.websocket_connect("/v1/ws") as ws:
            big = call(ws, 1, "enqueue", {"payload": "x" * 4096})
            small = call(ws, 2, "enqueue", {"payload": "x"})

    assert big["ok"] is False
    assert big["error"]["_tag"] == "BodyTooLarge"
    assert small["ok"] is True


def test_websocket_binary_frame_is_parsed_as_json():
    with client_for() as client:
        wait_leader(client)
        with client.websocket_connect("/v1/ws") as ws:
            ws.send_bytes(json.dumps({"id": 1, "method": "stats"}).encode())
            answer = ws.receive_json()

    assert answer["ok"] is True


def test_websocket_pipelined_requests_all_answered():
    with client_for() as client:
        wait_leader(client)
        with client.websocket_connect("/v1/ws") as ws:
            for number in range(50):
                ws.send_text(json.dumps({"id": number, "method": "enqueue",
                                         "params": {"payload": number}}))
            answers = [ws.receive_json() for _ in range(50)]

    assert sorted(answer["id"] for answer in answers) == list(range(50))
    assert all(answer["ok"] for answer in answers)
    ids = {answer["result"]["jobId"] for answer in answers}
    assert len(ids) == 50


def test_websocket_requires_token_on_handshake():
    with client_for(token=TOKEN) as client:
        with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect(
                "/v1/ws"):
            pass
        with client.websocket_connect("/v1/ws",
                                      headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            answer = call(ws, 1, "stats")

    assert denied.value.status_code == 401
    assert denied.value.json()["_tag"] == "Unauthorized"
    assert answer["ok"] is True


def test_websocket_on_standby_answers_not_leader():
    storage = MemoryBackend()
    leader = TestClient(create_app(Broker(storage, settings("http://127.0.0.1:1")),
                                   run_broker=True))
    with leader:
        wait_leader(leader)
        standby = TestClient(create_app(Broker(storage, settings("http://127.0.0.1:2")),
                                        run_broker=True))
        with standby, standby.websocket_connect("/v1/ws") as ws:
            time.sleep(0.1)
            answer = call(ws, 1, "claim", {"workerId": "w"})

    assert answer["ok"] is False
    assert answer["error"]["_tag"] == "NotLeader"
    assert answer["error"]["leader"] == "http://127.0.0.1:1"
