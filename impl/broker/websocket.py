"""The WebSocket protocol at ``/v1/ws``: JSON requests and responses matched by ``id``.

The client sends ``{"id": any, "method": str, "params": {...}}``; the server sends
``{"id": same, "ok": true, "result": ...}`` or ``{"id": same, "ok": false, "error":
{"_tag", "message"}}``. Requests run concurrently (up to ``MAX_IN_FLIGHT`` per
connection), so responses may arrive in another order than the requests, and requests
from one connection can share a commit. A message that is not a valid request gets an
error response with the request's ``id`` when it can be read, else ``null``. The connection
stays open.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
from osqueue.broker import operations, wire
from osqueue.broker.service import Broker
from starlette.websockets import WebSocket, WebSocketDisconnect

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 256
"""Requests of one connection handled at once; reading pauses while this many run."""

Method = Callable[[Broker, Any], Awaitable[Any]]


async def _enqueue(broker: Broker, params: wire.EnqueueIn) -> Any:
    return await operations.enqueue(broker, params)


async def _claim(broker: Broker, params: wire.ClaimIn) -> Any:
    return await operations.claim(broker, params)


async def _heartbeat(broker: Broker, params: wire.JobClaimTokenIn) -> Any:
    return await operations.heartbeat(broker, params.job_id, params.claim_token)


async def _complete(broker: Broker, params: wire.JobClaimTokenIn) -> Any:
    return await operations.complete(broker, params.job_id, params.claim_token)


async def _fail(broker: Broker, params: wire.JobFailIn) -> Any:
    return await operations.fail(broker, params.job_id, params)


async def _stats(broker: Broker, params: wire.EmptyIn) -> Any:
    return operations.stats(broker)


async def _purge_dead(broker: Broker, params: wire.PurgeDeadIn) -> Any:
    return await operations.purge_dead(broker, params)


METHODS: dict[str, tuple[type[Any], Method]] = {
    "enqueue": (wire.EnqueueIn, _enqueue),
    "claim": (wire.ClaimIn, _claim),
    "heartbeat": (wire.JobClaimTokenIn, _heartbeat),
    "complete": (wire.JobClaimTokenIn, _complete),
    "fail": (wire.JobFailIn, _fail),
    "stats": (wire.EmptyIn, _stats),
    "purgeDead": (wire.PurgeDeadIn, _purge_dead),
}
"""Method name -> (parameter struct, handler)."""


def _request_id(data: bytes) -> Any:
    """Return the ``id`` of a message that failed validation, or None if unreadable."""

    try:
        message = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
    return message.get("id") if isinstance(message, dict) else None


async def handle_message(broker: Broker, data: bytes) -> bytes:
    """Return the encoded response to one request message."""

    request_id: Any = None
    try:
        if len(data) > broker.settings.max_body_bytes:
            raise wire.ApiError(
                413, "BodyTooLarge",
                f"the message is {len(data)} bytes, more than MAX_BODY_BYTES "
                f"({broker.settings.max_body_bytes}); send fewer or smaller jobs per request")
        try:
            request = wire.decode_request(data, wire.WsRequest, "WebSocket message")
        except wire.ApiError:
            request_id = _request_id(data)
            raise
        request_id = request.id
        method = METHODS.get(request.method)
        if method is None:
            raise wire.invalid_request(
                f"unknown method {request.method!r}; use one of {', '.join(METHODS)}")
        params_type, handler = method
        raw_params = b"{}" if request.params is msgspec.UNSET else bytes(request.params)
        params = wire.decode_request(raw_params, params_type, f"params of {request.method}")
        result = await handler(broker, params)
        return wire.encode(wire.WsResultOut(id=request_id, ok=True, result=result))
    except wire.ApiError as error:
        return wire.encode(wire.WsErrorOut(id=request_id, ok=False, error=error.body()))
    except Exception as error:
        logger.error("WebSocket request %r failed with an unexpected error", request_id,
                     exc_info=error)
        internal = wire.ApiError(500, "InternalError",
                                 f"the broker failed unexpectedly ({type(error).__name__}); "
                                 "see the broker log")
        return wire.encode(wire.WsErrorOut(id=request_id, ok=False, error=internal.body()))


async def websocket_endpoint(broker: Broker, websocket: WebSocket) -> None:
    """Serve one WebSocket connection until the client closes it."""

    await websocket.accept()
    client = websocket.client
    peer = f"{client.host}:{client.port}" if client else "unknown"
    logger.info("WebSocket connection from %s opened", peer)
    send_lock = anyio.Lock()
    slots = anyio.Semaphore(MAX_IN_FLIGHT)

    async def respond(data: bytes) -> None:
        try:
            response = await handle_message(broker, data)
            async with send_lock:
                await websocket.send_text(response.decode("utf-8"))
        except (WebSocketDisconnect, RuntimeError, anyio.ClosedResourceError, OSError):
            # The client went away before its response; the request may still have been
            # committed, as with any cancelled call.
            logger.debug("WebSocket %s closed before a response was sent", peer)
        finally:
            slots.release()

    try:
        async with anyio.create_task_group() as group:
            try:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    text = message.get("text")
                    data = text.encode("utf-8") if text is not None else message.get("bytes")
                    await slots.acquire()
                    group.start_soon(respond, data or b"")
            finally:
                # Responses can no longer be delivered once the client is gone.
                group.cancel_scope.cancel()
    finally:
        logger.info("WebSocket connection from %s closed", peer)
