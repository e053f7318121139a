"""The OpenAPI 3.1 description of the broker, generated from ``app.ENDPOINTS``.

Request and response schemas come from the msgspec structs of ``osqueue.broker.wire`` that
the handlers decode and encode, so the description follows the code. The WebSocket route
is described under ``x-websocket`` of ``GET /v1/ws``, because OpenAPI has no WebSocket
operations.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec
import osqueue
from osqueue.broker import wire
from osqueue.broker.app import ENDPOINTS, WEBSOCKET_PATH
from osqueue.broker.websocket import METHODS

_REF = "#/components/schemas/{name}"

_ERROR_DESCRIPTIONS = {
    400: "InvalidRequest: malformed JSON, wrong field types, unknown fields or query "
         "parameters, or values out of range",
    401: "Unauthorized: missing or wrong bearer token (when OSQUEUE_TOKEN is set)",
    404: "UnknownJob: no live job has this id",
    409: "StaleClaim: the claim token is not the job's current one; DuplicateJobId: an "
         "enqueue named an id that a live job has",
    413: "BodyTooLarge: the body exceeds MAX_BODY_BYTES",
    500: "InternalError: a bug in the broker; see its log",
    503: "NotLeader (with leader, the leader's URL or null), StorageUnavailable or "
         "Overloaded: nothing was applied, retry (at the leader)",
    504: "CommitIndeterminate: the commit may or may not have landed; not safe to retry "
         "blindly",
    507: "StateTooLarge: the queue state would exceed its size limit",
}


def openapi_path(path: str) -> str:
    """Return a Starlette path in OpenAPI form: ``{job_id:path}`` becomes ``{id}``."""

    return re.sub(r"\{job_id(:[a-z]+)?\}", "{id}", path)


def _content(schema: dict[str, Any], media_type: str = "application/json") -> dict[str, Any]:
    return {media_type: {"schema": schema}}


@functools.cache
def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI document as a JSON-compatible dict (built once)."""

    types: list[Any] = [wire.ErrorOut]
    for endpoint in ENDPOINTS:
        if endpoint.request is not None:
            types.append(endpoint.request)
        if isinstance(endpoint.response, tuple):
            types.extend(endpoint.response)
        elif endpoint.response is not None:
            types.append(endpoint.response)
    ws_types = [params for params, _ in METHODS.values()]
    types.extend([wire.WsRequest, wire.WsResultOut, wire.WsErrorOut, *ws_types])
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = dict(zip(map(id, types), schemas, strict=True))
    error_schema = schema_of[id(wire.ErrorOut)]

    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        path = openapi_path(endpoint.path)
        operation: dict[str, Any] = {"operationId": endpoint.name, "summary": endpoint.summary}
        parameters = []
        if "{id}" in path:
            parameters.append({"name": "id", "in": "path", "required": True,
                               "description": "job id", "schema": {"type": "string"}})
        for query in endpoint.query:
            parameters.append({"name": query.name, "in": "query", "required": False,
                               "description": query.description, "schema": query.schema})
        if parameters:
            operation["parameters"] = parameters
        if endpoint.request is not None:
            operation["requestBody"] = {
                "required": endpoint.request_required,
                "content": _content(schema_of[id(endpoint.request)])}

        if isinstance(endpoint.response, tuple):
            one_of = [schema_of[id(option)] for option in endpoint.response]
            success = {"description": "success", "content": _content({"oneOf": one_of})}
        elif endpoint.response is not None:
            success = {"description": "success",
                       "content": _content(schema_of[id(endpoint.response)])}
        else:
            success = {"description": "success",
                       "content": _content({"type": "object"} if endpoint.media_type ==
                                           "application/json" else {"type": "string"},
                                           endpoint.media_type)}
        responses: dict[str, Any] = {str(endpoint.status): success}
        statuses = set(endpoint.errors) | {500}
        if not endpoint.public:
            statuses.add(401)
        if endpoint.request is not None:
            statuses |= {400, 413}
        for status in sorted(statuses):
            responses[str(status)] = {"description": _ERROR_DESCRIPTIONS[status],
                                      "content": _content(error_schema)}
        operation["responses"] = responses
        if not endpoint.public:
            operation["security"] = [{"bearer": []}]
        paths.setdefault(path, {})[endpoint.method.lower()] = operation

    paths[WEBSOCKET_PATH] = {"get": {
        "operationId": "websocket",
        "summary": "WebSocket: JSON requests {id, method, params}, answered by "
                   "{id, ok, result} or {id, ok: false, error}.",
        "responses": {"101": {"description": "switching to the WebSocket protocol"},
                      "401": {"description": _ERROR_DESCRIPTIONS[401],
                              "content": _content(error_schema)}},
        "security": [{"bearer": []}],
        "x-websocket": {
            "request": schema_of[id(wire.WsRequest)],
            "result": schema_of[id(wire.WsResultOut)],
            "error": schema_of[id(wire.WsErrorOut)],
            "methods": {name: {"params": schema_of[id(params)]}
                        for name, (params, _) in METHODS.items()},
        },
    }}

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "osqueue broker",
            "version": osqueue.__version__,
            "description": "Job queue broker; every error is {\"_tag\", \"message\"}.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
