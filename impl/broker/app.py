"""The broker's ASGI application (Starlette): HTTP routes, the WebSocket and the status page.

``create_app(broker)`` builds the application from ``ENDPOINTS``, the table that the
OpenAPI description (``osqueue.broker.openapi``) is generated from as well. Every response
that is not a success is a JSON error ``{"_tag", "message"}`` (see ``wire.ERROR_STATUSES``),
including unknown routes, wrong methods and unexpected failures (500 ``InternalError``).
The application does not run the election: run ``broker.running()`` around it.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from osqueue.broker import operations, wire
from osqueue.broker.page import STATUS_PAGE
from osqueue.broker.service import Broker
from osqueue.broker.websocket import websocket_endpoint
from osqueue.state import QueueState
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class QueryParameter:
    name: str
    schema: dict[str, Any]
    description: str


@dataclass(frozen=True)
class Endpoint:
    """One HTTP route and its OpenAPI metadata.

    ``path`` is in Starlette syntax; ``request`` is the body struct (None without a body);
    ``response`` is the type of the success body, a tuple of types when it is one of
    several, or None for a body without a schema. ``errors``
    lists the error statuses the route can return besides 401, 413 and 500.
    """

    method: str
    path: str
    name: str
    summary: str
    handler: Callable[[Broker, Request], Awaitable[Response]]
    response: Any
    status: int = 200
    request: type[Any] | None = None
    errors: tuple[int, ...] = ()
    query: tuple[QueryParameter, ...] = ()
    media_type: str = "application/json"
    public: bool = False
    request_required: bool = True


# ----------------------------------------------------------------------------------------
# Request and response helpers
# ----------------------------------------------------------------------------------------


def json_response(value: Any, status: int = 200) -> Response:
    return Response(wire.encode(value), status_code=status, media_type="application/json")


def error_response(error: wire.ApiError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return Response(wire.encode(error.body()), status_code=error.status,
                    media_type="application/json", headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """Return the request body; raise 413 ``BodyTooLarge`` as soon as it exceeds ``limit``."""

    too_large = wire.ApiError(
        413, "BodyTooLarge",
        f"the request body exceeds MAX_BODY_BYTES ({limit} bytes); send fewer or smaller "
        "jobs per request")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large
        except ValueError:
            raise wire.invalid_request(
                f"Content-Length {declared!r} is not a whole number") from None
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def decode_body(broker: Broker, request: Request, type_: type[Any]) -> Any:
    data = await read_body(request, broker.settings.max_body_bytes)
    return wire.decode_request(data, type_, "request body")


def _query(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    params = request.query_params
    for name in params:
        if name not in allowed:
            raise wire.invalid_request(
                f"unknown query parameter {name!r}; this route accepts "
                f"{', '.join(allowed) or 'none'}")
    values = {}
    for name in allowed:
        given = params.getlist(name)
        if len(given) > 1:
            raise wire.invalid_request(f"query parameter {name!r} is given {len(given)} times")
        if given:
            values[name] = given[0]
    return values


def _limit(values: dict[str, str]) -> int:
    raw = values.get("limit")
    if raw is None:
        return operations.DEFAULT_LIST_LIMIT
    if not raw.isascii() or not raw.isdigit() or not (
            1 <= int(raw) <= operations.MAX_LIST_LIMIT):
        raise wire.invalid_request(
            f"limit must be a whole number from 1 to {operations.MAX_LIST_LIMIT}, got {raw!r}")
    return int(raw)


# ----------------------------------------------------------------------------------------
# Route handlers
# ----------------------------------------------------------------------------------------


async def _healthz(broker: Broker, request: Request) -> Response:
    return json_response(operations.health(broker))


async def _state(broker: Broker, request: Request) -> Response:
    _query(request, ())
    return json_response(operations.state(broker))


async def _enqueue(broker: Broker, request: Request) -> Response:
    _query(request, ())
    body = await decode_body(broker, request, wire.EnqueueIn)
    return json_response(await operations.enqueue(broker, body), status=201)


async def _claim(broker: Broker, request: Request) -> Response:
    _query(request, ())
    body = await decode_body(broker, request, wire.ClaimIn)
    return json_response(await operations.claim(broker, body))


async def _heartbeat(broker: Broker, request: Request) -> Response:
    _query(request, ())
    job_id = operations.validate_job_id(request.path_params["job_id"])
    body = await decode_body(broker, request, wire.ClaimTokenIn)
    return json_response(await operations.heartbeat(broker, job_id, body.claim_token))


async def _complete(broker: Broker, request: Request) -> Response:
    _query(request, ())
    job_id = operations.validate_job_id(request.path_params["job_id"])
    body = await decode_body(broker, request, wire.ClaimTokenIn)
    return json_response(await operations.complete(broker, job_id, body.claim_token))


async def _fail(broker: Broker, request: Request) -> Response:
    _query(request, ())
    job_id = operations.validate_job_id(request.path_params["job_id"])
    body = await decode_body(broker, request, wire.FailIn)
    return json_response(await operations.fail(broker, job_id, body))


async def _stats(broker: Broker, request: Request) -> Response:
    _query(request, ())
    return json_response(operations.stats(broker))


_STATUSES = ("unclaimed", "in_progress", "dead")


async def _jobs(broker: Broker, request: Request) -> Response:
    values = _query(request, ("status", "limit"))
    status = values.get("status")
    if status is not None and status not in _STATUSES:
        raise wire.invalid_request(
            f"status must be one of {', '.join(_STATUSES)}, got {status!r}")
    return json_response(operations.jobs(broker, status, _limit(values)))  # type: ignore[arg-type]


async def _dead(broker: Broker, request: Request) -> Response:
    values = _query(request, ("limit",))
    return json_response(operations.dead(broker, _limit(values)))


async def _purge_dead(broker: Broker, request: Request) -> Response:
    _query(request, ())
    data = await read_body(request, broker.settings.max_body_bytes)
    body = (wire.PurgeDeadIn() if not data.strip()
            else wire.decode_request(data, wire.PurgeDeadIn, "request body"))
    return json_response(await operations.purge_dead(broker, body))


async def _throttle(broker: Broker, request: Request) -> Response:
    _query(request, ())
    return json_response(operations.throttle(broker))


async def _openapi(broker: Broker, request: Request) -> Response:
    from osqueue.broker.openapi import openapi_document

    return json_response(openapi_document())


async def _page(broker: Broker, request: Request) -> Response:
    return HTMLResponse(STATUS_PAGE, headers={
        # The page loads nothing from elsewhere; the policy makes sure of it.
        "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
        "style-src 'unsafe-inline'; connect-src 'self'; img-src 'none'",
        "Cache-Control": "no-store",
    })


_LIMIT = QueryParameter(
    "limit", {"type": "integer", "minimum": 1, "maximum": operations.MAX_LIST_LIMIT,
              "default": operations.DEFAULT_LIST_LIMIT},
    "maximum number of entries to return")

_JOB_ROUTE_ERRORS = (400, 404, 409, 503, 504)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/healthz", "healthz", "Liveness and role of this broker (no auth).",
             _healthz, wire.HealthOut, public=True),
    Endpoint("GET", "/state", "state", "The decoded queue state, as stored in queue.json.",
             _state, QueueState, errors=(400, 503)),
    Endpoint("POST", "/v1/jobs", "enqueue",
             "Enqueue one job (payload) or a batch (jobs); 201 with the assigned ids.",
             _enqueue, (wire.EnqueuedOut, wire.EnqueuedManyOut), status=201,
             request=wire.EnqueueIn, errors=(400, 409, 503, 504, 507)),
    Endpoint("GET", "/v1/jobs", "list_jobs",
             "Live jobs in position order, or dead-lettered jobs, filtered by status.",
             _jobs, wire.JobsOut, errors=(400, 503), query=(
                 QueryParameter("status", {"type": "string", "enum": list(_STATUSES)},
                                "only jobs with this status (default: all live jobs)"),
                 _LIMIT)),
    Endpoint("POST", "/v1/jobs/claim", "claim",
             "Claim the first eligible job, or get null when none is available.",
             _claim, wire.ClaimOut, request=wire.ClaimIn, errors=(400, 503, 504)),
    Endpoint("POST", "/v1/jobs/{job_id:path}/heartbeat", "heartbeat",
             "Renew the claim of a job.", _heartbeat, wire.OkOut,
             request=wire.ClaimTokenIn, errors=_JOB_ROUTE_ERRORS),
    Endpoint("POST", "/v1/jobs/{job_id:path}/complete", "complete",
             "Mark a claimed job done.", _complete, wire.OkOut,
             request=wire.ClaimTokenIn, errors=_JOB_ROUTE_ERRORS),
    Endpoint("POST", "/v1/jobs/{job_id:path}/fail", "fail",
             "Give a claimed job back (retried after retryDelayMs) or dead-letter it.",
             _fail, wire.FailOut, request=wire.FailIn, errors=_JOB_ROUTE_ERRORS),
    Endpoint("GET", "/v1/stats", "stats",
             "Job counts, counters, engine statistics, broker role and throughput.",
             _stats, wire.StatsOut, errors=(400,)),
    Endpoint("GET", "/v1/dead", "dead_letters", "The newest dead letters, oldest first.",
             _dead, wire.DeadLettersOut, errors=(400, 503), query=(_LIMIT,)),
    Endpoint("DELETE", "/v1/dead", "purge_dead_letters",
             "Remove dead letters for good: those of jobIds (all when absent) that died "
             "before diedBefore (any time when absent). Without a body, removes every dead "
             "letter. Their jobs are then no longer listed anywhere.",
             _purge_dead, wire.PurgedOut, request=wire.PurgeDeadIn, request_required=False,
             errors=(400, 503, 504)),
    Endpoint("GET", "/v1/throttle-stats", "throttle_stats",
             "Counters of the storage rate limiter, or throttled false.",
             _throttle, wire.ThrottleOut, errors=(400,)),
    Endpoint("GET", "/openapi.json", "openapi", "This OpenAPI description.", _openapi,
             None),
    Endpoint("GET", "/", "status_page", "Live status page (HTML).", _page, None,
             media_type="text/html"),
)

WEBSOCKET_PATH = "/v1/ws"


# ----------------------------------------------------------------------------------------
# Application
# ----------------------------------------------------------------------------------------


def _route(broker: Broker, endpoint: Endpoint) -> Route:
    async def handle(request: Request) -> Response:
        try:
            return await endpoint.handler(broker, request)
        except wire.ApiError as error:
            # A standby rejects every mutation with NotLeader during normal operation, so
            # those go to DEBUG; other server-side failures deserve a WARNING.
            if error.tag == "NotLeader":
                logger.debug("%s %s: %s", request.method, request.url.path, error.message)
            elif error.status >= 500:
                logger.warning("%s %s failed: %s %s", request.method, request.url.path,
                               error.tag, error.message)
            return error_response(error)

    return Route(endpoint.path, handle, methods=[endpoint.method], name=endpoint.name,
                 include_in_schema=False)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = wire.ApiError(404, "NotFound",
                              f"no route {request.url.path!r}; see /openapi.json for the routes")
    elif exc.status_code == 405:
        error = wire.ApiError(405, "MethodNotAllowed",
                              f"{request.method} is not allowed on {request.url.path!r}; "
                              "see /openapi.json for the methods of each route")
    else:
        error = wire.ApiError(exc.status_code, "InvalidRequest", str(exc.detail))
    response = error_response(error)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.error("%s %s failed with an unexpected error", request.method, request.url.path,
                 exc_info=exc)
    return error_response(wire.ApiError(
        500, "InternalError", f"the broker failed unexpectedly ({type(exc).__name__}); see "
        "the broker log"))


class BearerAuth:
    """ASGI middleware: every HTTP request and WebSocket handshake but ``public_paths``
    needs ``Authorization: Bearer <token>``.

    The scheme name is case-insensitive (RFC 7235, section 2.1), so ``bearer <token>`` is
    accepted too. The token comparison takes constant time.
    """

    def __init__(self, app: ASGIApp, token: str, public_paths: frozenset[str]) -> None:
        self.app = app
        self._expected = token.encode("ascii")
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                presented = value
                break
        scheme, _, credentials = presented.strip().partition(b" ")
        is_bearer = scheme.lower() == b"bearer"
        # Compare even when the scheme is wrong, so the time taken shows nothing.
        matches = hmac.compare_digest(credentials.strip(), self._expected)
        if is_bearer and matches:
            await self.app(scope, receive, send)
            return

        message, reason = _unauthorized_message(presented, scheme, is_bearer)
        logger.info("rejected %s %s: %s", scope["type"], scope["path"], reason)
        response = error_response(wire.ApiError(401, "Unauthorized", message))
        if scope["type"] == "http":
            await response(scope, receive, send)
            return
        await _deny_websocket(scope, receive, send, response)


def _unauthorized_message(presented: bytes, scheme: bytes, is_bearer: bool
                          ) -> tuple[str, str]:
    """Return the 401 message for the client and the reason for the log (never the token)."""

    if not presented:
        message = ("missing Authorization header; send 'Authorization: Bearer <token>' with "
                   "the value of OSQUEUE_TOKEN")
        return message, "no token"
    if not is_bearer:
        # A value without a space may be a bare token, so only a short scheme name followed
        # by credentials is repeated.
        named = bool(presented.strip().partition(b" ")[2]) and re.fullmatch(
            rb"[A-Za-z][A-Za-z0-9-]{0,19}", scheme)
        shown = f"the {scheme.decode('ascii')!r} scheme" if named else "no scheme"
        message = (f"the Authorization header uses {shown}, but the broker expects a Bearer "
                   "token; send 'Authorization: Bearer <token>' with the value of "
                   "OSQUEUE_TOKEN")
        return message, shown
    return "the bearer token is not valid; use the value of OSQUEUE_TOKEN", "wrong token"


async def _deny_websocket(scope: Scope, receive: Receive, send: Send, response: Response
                          ) -> None:
    """Reject a WebSocket handshake: a 401 response where the server supports it, else a
    close with code 1008 (policy violation)."""

    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": response.status_code,
                    "headers": response.raw_headers})
        await send({"type": "websocket.http.response.body", "body": response.body})
        return
    await send({"type": "websocket.close", "code": 1008})


def create_app(broker: Broker, *, run_broker: bool = False) -> ASGIApp:
    """Return the ASGI application of ``broker`` (with bearer auth if a token is set).

    With ``run_broker`` the application's lifespan runs ``broker.running()``, for servers
    that send lifespan events; otherwise the caller runs it around the server.
    """

    routes: list[BaseRoute] = [_route(broker, endpoint) for endpoint in ENDPOINTS]

    async def ws(websocket: Any) -> None:
        await websocket_endpoint(broker, websocket)

    routes.append(WebSocketRoute(WEBSOCKET_PATH, ws, name="websocket"))
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with broker.running():
            yield

    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan if run_broker else None,
    )
    # A path with a trailing slash gets 404 NotFound (JSON) rather than a redirect that
    # clients would follow with a body-less request.
    app.router.redirect_slashes = False
    app.state.broker = broker
    if broker.settings.token is None:
        return app
    public = frozenset(endpoint.path for endpoint in ENDPOINTS if endpoint.public)
    return BearerAuth(app, broker.settings.token, public)


__all__ = ["ENDPOINTS", "WEBSOCKET_PATH", "BearerAuth", "Endpoint", "create_app"]
