"""The OpenAPI description matches the application: routes, methods and body schemas."""

from __future__ import annotations

import re

import jsonschema
import msgspec
import pytest
from osqueue.broker import create_app
from osqueue.broker.app import ENDPOINTS
from osqueue.broker.openapi import openapi_document, openapi_path
from osqueue.broker.service import Broker
from osqueue.storage.memory import MemoryBackend
from starlette.routing import Route, WebSocketRoute

from tests.broker_support import running_broker, settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def validator(schema: dict) -> jsonschema.Draft202012Validator:
    document = openapi_document()
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


def test_every_app_route_is_described():
    app = create_app(Broker(MemoryBackend(), settings()))
    paths = openapi_document()["paths"]

    described = {(path, method.upper()) for path, item in paths.items() for method in item}
    served = set()
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            served.add((route.path, "GET"))
        else:
            assert isinstance(route, Route)
            for method in route.methods - {"HEAD"}:
                served.add((openapi_path(route.path), method))

    assert served == described


def test_schemas_come_from_handler_structs():
    document = openapi_document()
    components = document["components"]["schemas"]

    for endpoint in ENDPOINTS:
        operation = document["paths"][openapi_path(endpoint.path)][endpoint.method.lower()]
        if endpoint.request is not None:
            _, expected = msgspec.json.schema_components(
                [endpoint.request], ref_template="#/components/schemas/{name}")
            name = endpoint.request.__name__
            assert operation["requestBody"]["content"]["application/json"]["schema"] == {
                "$ref": f"#/components/schemas/{name}"}
            for component, schema in expected.items():
                assert components[component] == schema
        assert str(endpoint.status) in operation["responses"]


def test_document_is_valid_openapi_shape():
    document = openapi_document()

    assert document["openapi"] == "3.1.0"
    for path, item in document["paths"].items():
        assert path.startswith("/")
        assert not re.search(r"\{[^}]*:", path), path
        for operation in item.values():
            assert operation["operationId"]
            assert operation["responses"]
    jsonschema.Draft202012Validator.check_schema(
        {"$defs": document["components"]["schemas"]})


def _operation(method: str, path: str) -> dict:
    paths = openapi_document()["paths"]
    for template, item in paths.items():
        pattern = "^" + re.sub(r"\\\{id\\\}", "[^?]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            if template == "/v1/jobs/{id}/complete" and path.endswith("/claim"):
                continue
            return item[method.lower()]
    raise AssertionError(f"{method} {path} is not described")


async def test_real_responses_match_described_schemas():
    exercised = set()

    async def check(response, method, path):
        operation = _operation(method, path)
        exercised.add(operation["operationId"])
        described = operation["responses"]
        assert str(response.status_code) in described, (method, path, response.status_code)
        content = described[str(response.status_code)].get("content", {})
        if "application/json" in content:
            schema = content["application/json"]["schema"]
            validator(schema).validate(response.json())
        return response

    async with running_broker() as (_broker, client):
        async def request(method, path, **options):
            response = await client.request(method, path, **options)
            return await check(response, method, path)

        await request("GET", "/healthz")
        await request("GET", "/state")
        await request("POST", "/v1/jobs", json={"payload": {"a": 1}, "maxAttempts": 1})
        await request("POST", "/v1/jobs", json={"jobs": [{"payload": 2}, {"payload": 3}]})
        await request("POST", "/v1/jobs", json={"payload": 1, "colour": 2})
        claimed = (await request("POST", "/v1/jobs/claim", json={"workerId": "w"})).json()
        token = claimed["job"]["claimToken"]
        await request("POST", "/v1/jobs/job-1/heartbeat", json={"claimToken": token})
        await request("POST", "/v1/jobs/job-1/fail", json={"claimToken": token, "error": "e"})
        second = (await request("POST", "/v1/jobs/claim", json={"workerId": "w"})).json()
        await request("POST", "/v1/jobs/job-2/complete",
                      json={"claimToken": second["job"]["claimToken"]})
        await request("POST", "/v1/jobs/job-2/complete",
                      json={"claimToken": second["job"]["claimToken"]})
        await request("POST", "/v1/jobs/job-3/complete", json={"claimToken": "c999"})
        third = (await request("POST", "/v1/jobs/claim", json={"workerId": "w"})).json()
        await request("POST", "/v1/jobs/job-3/fail",
                      json={"claimToken": third["job"]["claimToken"], "retryDelayMs": 10})
        await request("GET", "/v1/stats")
        await request("GET", "/v1/jobs", params={"status": "unclaimed", "limit": 5})
        await request("GET", "/v1/jobs", params={"limit": "x"})
        await request("GET", "/v1/dead")
        await request("DELETE", "/v1/dead", json={"jobIds": ["job-1"]})
        await request("DELETE", "/v1/dead", json={"jobIds": []})
        await request("DELETE", "/v1/dead")
        await request("GET", "/v1/throttle-stats")
        await request("GET", "/openapi.json")
        await request("GET", "/")

    described = {endpoint.name for endpoint in ENDPOINTS}
    assert exercised == described
