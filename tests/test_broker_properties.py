"""Property-based API test: malformed requests get documented errors, the state stays valid."""

from __future__ import annotations

import json

import anyio.from_thread
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from osqueue.broker.websocket import handle_message
from osqueue.broker.wire import ERROR_STATUSES
from osqueue.state import decode_state
from osqueue.storage.memory import MemoryBackend

from tests.broker_support import running_broker

SUCCESS_STATUSES = {200, 201}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)

FIELD_NAMES = ["payload", "type", "maxAttempts", "id", "jobs", "workerId", "types",
               "claimToken", "error", "retryDelayMs", "jobId", "method", "params"]

# Objects made mostly of the API's own field names reach deeper checks than random keys.
field_objects = st.dictionaries(
    st.sampled_from(FIELD_NAMES) | st.text(max_size=8), json_values, max_size=5)

# Valid JSON that msgspec cannot turn into Python values: out-of-range numbers, deep nesting.
hostile_payloads = st.sampled_from([b"1e400", b"-1e999", b"[[[[[[1e309]]]]]]",
                                    b"[" * 3000 + b"]" * 3000, b'{"a": 123456789e999}'])

bodies = st.one_of(
    st.binary(max_size=200),
    hostile_payloads.map(lambda raw: b'{"payload": ' + raw + b"}"),
    hostile_payloads.map(lambda raw: b'{"jobs": [{"payload": ' + raw + b"}]}"),
    json_values.map(lambda value: json.dumps(value).encode()),
    field_objects.map(lambda value: json.dumps(value).encode()),
    st.builds(lambda jobs: json.dumps({"jobs": jobs}).encode(),
              st.lists(field_objects, max_size=4)),
)

job_ids = st.sampled_from(["job-1", "job-2", "missing", "a%2Fb", ""]) | st.text(
    alphabet=st.characters(min_codepoint=48, max_codepoint=122), max_size=12)

paths = st.one_of(
    st.sampled_from(["/healthz", "/state", "/v1/jobs", "/v1/jobs/claim", "/v1/stats",
                     "/v1/dead", "/v1/throttle-stats", "/openapi.json", "/", "/v1/nope"]),
    st.builds(lambda job, action: f"/v1/jobs/{job}/{action}", job_ids,
              st.sampled_from(["heartbeat", "complete", "fail", "explode"])),
)

queries = st.dictionaries(st.sampled_from(["status", "limit", "x"]),
                          st.text(max_size=6), max_size=2)


@pytest.fixture(scope="module")
def live_broker():
    storage = MemoryBackend()
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        context = portal.wrap_async_context_manager(running_broker(storage))
        with context as (broker, client):
            yield portal, storage, broker, client


def check_state(portal, storage) -> None:
    read = portal.call(storage.read, "queue.json")
    decode_state(read.data)


def check_error_body(status: int, body: dict) -> None:
    assert set(body) <= {"_tag", "message", "leader"}, body
    assert body["_tag"] in ERROR_STATUSES, body
    assert ERROR_STATUSES[body["_tag"]] == status, (status, body)
    assert isinstance(body["message"], str) and body["message"]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]), path=paths, body=bodies,
       query=queries)
def test_http_requests_get_documented_answers(live_broker, method, path, body, query):
    portal, storage, _broker, client = live_broker

    response = portal.call(lambda: client.request(method, path, content=body, params=query))

    assert response.status_code != 500, response.text
    if response.status_code in SUCCESS_STATUSES:
        if response.headers["content-type"].startswith("application/json"):
            msgspec.json.decode(response.content)
    else:
        check_error_body(response.status_code, response.json())
    check_state(portal, storage)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    bodies,
    st.builds(lambda method, params, request_id: json.dumps(
        {"id": request_id, "method": method, "params": params}).encode(),
        st.sampled_from(["enqueue", "claim", "heartbeat", "complete", "fail", "stats", "x"]),
        field_objects, json_values),
))
def test_websocket_messages_get_documented_answers(live_broker, data):
    portal, storage, broker, _client = live_broker

    answer = msgspec.json.decode(portal.call(handle_message, broker, data))

    assert set(answer) in ({"id", "ok", "result"}, {"id", "ok", "error"}), answer
    if answer["ok"] is False:
        error = answer["error"]
        check_error_body(ERROR_STATUSES.get(error["_tag"], -1), error)
        assert error["_tag"] != "InternalError", error
    check_state(portal, storage)
