"""A real Hypercorn server from ``osqueue.broker.serve`` on 127.0.0.1, under asyncio and trio."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
import wsproto
import wsproto.events
from osqueue.broker import load_settings, serve
from osqueue.storage.memory import MemoryBackend

from tests.broker_support import TOKEN, free_port

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


async def websocket_call(port: int, headers: list[tuple[str, str]], message: dict
                         ) -> tuple[int, dict | None]:
    """Open a WebSocket to /v1/ws with wsproto; return the handshake status and the response
    to ``message`` (None when the handshake was rejected)."""

    connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(connection.send(wsproto.events.Request(
            host=f"127.0.0.1:{port}", target="/v1/ws", extra_headers=headers)))
        status = 0
        answer_text = ""
        with anyio.fail_after(5):
            while True:
                connection.receive_data(await stream.receive())
                for event in connection.events():
                    if isinstance(event, wsproto.events.RejectConnection):
                        return event.status_code, None
                    if isinstance(event, wsproto.events.AcceptConnection):
                        status = 101
                        await stream.send(connection.send(
                            wsproto.events.TextMessage(json.dumps(message))))
                    if isinstance(event, wsproto.events.TextMessage):
                        answer_text += event.data
                        if event.message_finished:
                            await stream.send(connection.send(
                                wsproto.events.CloseConnection(code=1000)))
                            return status, json.loads(answer_text)


async def test_served_broker_answers_http_and_websocket():
    port = free_port()
    settings = load_settings({"OSQUEUE_TOKEN": TOKEN}, port=port,
                             heartbeat_interval_ms=200, heartbeat_timeout_ms=3000)
    shutdown = anyio.Event()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: serve(settings, MemoryBackend(), shutdown=shutdown))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            with anyio.fail_after(10):
                while True:
                    try:
                        if (await client.get("/healthz")).json()["leader"]:
                            break
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.02)
            enqueued = await client.post("/v1/jobs", json={"payload": 1}, headers=auth)
            unauthorized = await client.get("/v1/stats")
            denied = await websocket_call(port, [], {"id": 1, "method": "stats"})
            accepted = await websocket_call(port, [("Authorization", f"Bearer {TOKEN}")],
                                            {"id": 1, "method": "claim",
                                             "params": {"workerId": "w"}})
        shutdown.set()

    assert enqueued.status_code == 201
    assert unauthorized.status_code == 401
    assert denied == (401, None)
    status, answer = accepted
    assert status == 101
    assert answer["id"] == 1
    assert answer["ok"] is True
    assert answer["result"]["job"]["id"] == "job-1"
