"""Tests of S3Backend: against SeaweedFS and moto, and unit-level with botocore's Stubber,
client doubles and a local HTTP server that misbehaves on purpose."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import anyio
import boto3
import botocore.exceptions
import pytest
from botocore.config import Config
from botocore.response import StreamingBody
from botocore.stub import Stubber
from osqueue.errors import (
    CASConflictError,
    ConflictReason,
    IndeterminateWriteError,
    InvalidDataError,
    InvalidKeyError,
    InvalidVersionError,
    StorageBackendError,
)
from osqueue.storage.base import MAX_KEY_BYTES, StorageBackend, StorageVersion
from osqueue.storage.s3 import S3Backend

from tests.support import s3_servers
from tests.support.s3_servers import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3TestServer, free_port

pytestmark = pytest.mark.anyio

MISSING_KEY_STATUS = {"moto": 404, "seaweedfs": 412}
"""HTTP status each server returns for If-Match on an absent key (observed: moto 5.2.5 and
SeaweedFS 4.48). AWS documents 404 NoSuchKey."""


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["seaweedfs_server", "moto_server"])
def s3_server(request: pytest.FixtureRequest) -> S3TestServer:
    return request.getfixturevalue(request.param)


@pytest.fixture
def backend(s3_server: S3TestServer, request: pytest.FixtureRequest) -> S3Backend:
    # One prefix per test and parameter set keeps the keys of different tests apart.
    prefix = "tests/" + re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name) + "/"
    return s3_server.make_backend(prefix)


def quoted_md5(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


# --- against real servers ------------------------------------------------------------------


@pytest.mark.s3
async def test_read_missing_returns_none(backend: S3Backend) -> None:
    assert isinstance(backend, StorageBackend)
    assert await backend.read("absent.json") is None


@pytest.mark.s3
async def test_create_then_read_roundtrip(backend: S3Backend) -> None:
    created = await backend.create_if_not_exists("queue.json", b'{"jobs": []}')
    result = await backend.read("queue.json")

    assert result is not None
    assert result.data == b'{"jobs": []}'
    assert result.version == created
    assert created.backend == "s3"


@pytest.mark.s3
async def test_create_twice_conflicts_exists(backend: S3Backend) -> None:
    first = await backend.create_if_not_exists("queue.json", b"first")

    with pytest.raises(CASConflictError) as caught:
        await backend.create_if_not_exists("queue.json", b"second")

    assert caught.value.reason is ConflictReason.EXISTS
    assert caught.value.retry_same_request is False
    result = await backend.read("queue.json")
    assert result is not None
    assert result.data == b"first"
    assert result.version == first


@pytest.mark.s3
async def test_write_with_current_etag(backend: S3Backend) -> None:
    first = await backend.create_if_not_exists("queue.json", b"v1")
    second = await backend.write("queue.json", b"v2", first)
    result = await backend.read("queue.json")

    assert second != first
    assert result is not None
    assert result.data == b"v2"
    assert result.version == second


@pytest.mark.s3
async def test_write_stale_etag_conflicts(backend: S3Backend) -> None:
    first = await backend.create_if_not_exists("queue.json", b"v1")
    second = await backend.write("queue.json", b"v2", first)

    with pytest.raises(CASConflictError) as caught:
        await backend.write("queue.json", b"v3", first)

    assert caught.value.reason is ConflictReason.STALE_VERSION
    result = await backend.read("queue.json")
    assert result is not None
    assert result.data == b"v2"
    assert result.version == second


@pytest.mark.s3
async def test_write_missing_key_conflicts(backend: S3Backend, s3_server: S3TestServer) -> None:
    some_etag = StorageVersion("s3", quoted_md5(b"anything"))

    with pytest.raises(CASConflictError) as caught:
        await backend.write("never-created.json", b"data", some_etag)

    assert caught.value.reason is ConflictReason.MISSING
    expected_status = MISSING_KEY_STATUS[s3_server.name]
    assert s3_server.missing_key_status == expected_status
    assert f"HTTP {expected_status}" in caught.value.detail
    assert await backend.read("never-created.json") is None


@pytest.mark.s3
async def test_identical_bytes_identical_etag(backend: S3Backend) -> None:
    version_a = await backend.create_if_not_exists("queue.json", b"A")
    version_b = await backend.write("queue.json", b"B", version_a)
    version_a_again = await backend.write("queue.json", b"A", version_b)

    assert version_a_again == version_a

    # ABA: a writer still holding the first token of A succeeds, although B came between.
    await backend.write("queue.json", b"C", version_a)
    result = await backend.read("queue.json")
    assert result is not None
    assert result.data == b"C"


@pytest.mark.s3
async def test_etag_kept_with_quotes(backend: S3Backend, s3_server: S3TestServer) -> None:
    created = await backend.create_if_not_exists("queue.json", b"payload")
    raw = s3_server.client().head_object(Bucket=s3_server.bucket, Key=backend.prefix + "queue.json")

    assert created.value == raw["ETag"]
    assert created.value == quoted_md5(b"payload")
    assert created.value.startswith('"')
    assert created.value.endswith('"')


@pytest.mark.s3
async def test_prefix_isolates_keys(s3_server: S3TestServer, backend: S3Backend) -> None:
    other = s3_server.make_backend(backend.prefix + "other/")
    await backend.create_if_not_exists("queue.json", b"mine")

    assert await other.read("queue.json") is None
    raw = s3_server.client().get_object(Bucket=s3_server.bucket, Key=backend.prefix + "queue.json")
    assert raw["Body"].read() == b"mine"


@pytest.mark.s3
async def test_delete_removes_object(backend: S3Backend) -> None:
    await backend.create_if_not_exists("queue.json", b"x")
    await backend.delete("queue.json")
    await backend.delete("queue.json")

    assert await backend.read("queue.json") is None
    await backend.create_if_not_exists("queue.json", b"again")


@pytest.mark.s3
async def test_concurrent_creates_one_wins(backend: S3Backend) -> None:
    # Three writers only: SeaweedFS slows down with four or more conditional PUTs on a key.
    outcomes: list[object] = []

    async def create(index: int) -> None:
        try:
            outcomes.append(await backend.create_if_not_exists("queue.json", b"w%d" % index))
        except CASConflictError as error:
            outcomes.append(error.reason)

    async with anyio.create_task_group() as tasks:
        for index in range(3):
            tasks.start_soon(create, index)

    winners = [outcome for outcome in outcomes if isinstance(outcome, StorageVersion)]
    assert len(winners) == 1
    losers = [outcome for outcome in outcomes if not isinstance(outcome, StorageVersion)]
    assert set(losers) <= {ConflictReason.EXISTS, ConflictReason.CONCURRENT_REQUEST}
    result = await backend.read("queue.json")
    assert result is not None
    assert result.version == winners[0]


@pytest.mark.s3
async def test_missing_bucket_is_backend_error(s3_server: S3TestServer) -> None:
    backend = S3Backend(
        "osqueue-no-such-bucket",
        endpoint_url=s3_server.endpoint_url,
        region=s3_server.region,
        session=s3_server.session(),
    )

    with pytest.raises(StorageBackendError) as on_read:
        await backend.read("queue.json")
    with pytest.raises(StorageBackendError) as on_write:
        await backend.write("queue.json", b"x", StorageVersion("s3", quoted_md5(b"x")))

    assert on_read.value.status == 404
    assert on_write.value.status == 404
    assert "NoSuchBucket" in str(on_write.value)
    await backend.aclose()


@pytest.mark.s3
async def test_wrong_credentials_rejected(s3_server: S3TestServer) -> None:
    if s3_server.name == "moto":
        pytest.skip("moto accepts any credentials")
    session = boto3.session.Session(
        aws_access_key_id="wrongkey", aws_secret_access_key="wrongsecret", region_name="us-east-1"
    )
    backend = S3Backend(
        s3_server.bucket, endpoint_url=s3_server.endpoint_url, session=session, prefix="x/"
    )

    with pytest.raises(StorageBackendError) as caught:
        await backend.create_if_not_exists("queue.json", b"x")

    assert caught.value.status == 403
    assert caught.value.retryable is False


# --- input validation (no request may be sent) ------------------------------------------


class RecordingClient:
    """A client double that records every call and fails the test if one is made."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def record(**kwargs: Any) -> Any:
            self.calls.append(name)
            raise AssertionError(f"unexpected S3 request {name}({kwargs})")

        return record


@pytest.mark.parametrize(
    ("operation", "error_type"),
    [
        (lambda b: b.read(""), InvalidKeyError),
        (lambda b: b.read("k" * (MAX_KEY_BYTES + 1)), InvalidKeyError),
        (lambda b: b.read("é" * 600), InvalidKeyError),
        (lambda b: b.create_if_not_exists("queue.json", "text"), InvalidDataError),
        (lambda b: b.write("queue.json", b"x", StorageVersion("memory", 1)), InvalidVersionError),
        (lambda b: b.write("queue.json", b"x", StorageVersion("s3", 7)), InvalidVersionError),
        (lambda b: b.write("queue.json", b"x", '"abc"'), InvalidVersionError),
        (lambda b: b.write("", b"x", StorageVersion("s3", '"a"')), InvalidKeyError),
        (lambda b: b.delete(""), InvalidKeyError),
    ],
    ids=[
        "empty-key",
        "key-too-long",
        "key-too-long-utf8",
        "str-data",
        "memory-version",
        "int-etag",
        "bare-string-version",
        "write-empty-key",
        "delete-empty-key",
    ],
)
async def test_bad_input_rejected_before_request(operation: Any, error_type: type) -> None:
    client = RecordingClient()
    backend = S3Backend("osqueue-test", client=client)

    with pytest.raises(error_type):
        await operation(backend)

    assert client.calls == []


async def test_prefix_plus_key_too_long() -> None:
    client = RecordingClient()
    backend = S3Backend("osqueue-test", prefix="p" * 1000, client=client)

    with pytest.raises(InvalidKeyError, match="prefix"):
        await backend.read("k" * 30)

    assert client.calls == []


@pytest.mark.parametrize("bucket", ["", "a/b", None])
def test_bad_bucket_rejected(bucket: Any) -> None:
    with pytest.raises(ValueError, match="bucket"):
        S3Backend(bucket, client=RecordingClient())


# --- error mapping with botocore's Stubber -----------------------------------------------


@pytest.fixture
def stubbed() -> Iterator[tuple[S3Backend, Stubber]]:
    # The endpoint is a closed local port, so nothing could leave the machine even if a
    # response were not stubbed.
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name="us-east-1",
    )
    client = session.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        config=Config(retries={"total_max_attempts": 1}),
    )
    with Stubber(client) as stubber:
        yield S3Backend("osqueue-test", client=client), stubber
        stubber.assert_no_pending_responses()


ETAG = '"0cc175b9c0f1b6a831c399e269772661"'
OTHER_ETAG = '"92eb5ffee6ae2fec3ad71c777531578f"'


def body(data: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(data), len(data))


async def test_stub_read_takes_etag_from_response(stubbed: tuple[S3Backend, Stubber]) -> None:
    backend, stubber = stubbed
    stubber.add_response("get_object", {"Body": body(b"a"), "ETag": ETAG})

    result = await backend.read("queue.json")

    assert result is not None
    assert result.data == b"a"
    assert result.version == StorageVersion("s3", ETAG)


async def test_stub_write_sends_etag_verbatim(stubbed: tuple[S3Backend, Stubber]) -> None:
    backend, stubber = stubbed
    stubber.add_response(
        "put_object",
        {"ETag": OTHER_ETAG},
        {"Bucket": "osqueue-test", "Key": "queue.json", "Body": b"b", "IfMatch": ETAG},
    )

    version = await backend.write("queue.json", b"b", StorageVersion("s3", ETAG))

    assert version == StorageVersion("s3", OTHER_ETAG)


@pytest.mark.parametrize("operation", ["write", "create"])
async def test_stub_409_is_concurrent_request(
    stubbed: tuple[S3Backend, Stubber], operation: str
) -> None:
    backend, stubber = stubbed
    stubber.add_client_error(
        "put_object", service_error_code="ConditionalRequestConflict", http_status_code=409
    )

    with pytest.raises(CASConflictError) as caught:
        if operation == "write":
            await backend.write("queue.json", b"x", StorageVersion("s3", ETAG))
        else:
            await backend.create_if_not_exists("queue.json", b"x")

    assert caught.value.reason is ConflictReason.CONCURRENT_REQUEST
    assert caught.value.retry_same_request is True


@pytest.mark.parametrize("status", [500, 503])
async def test_stub_5xx_on_write_indeterminate(
    stubbed: tuple[S3Backend, Stubber], status: int
) -> None:
    backend, stubber = stubbed
    stubber.add_client_error(
        "put_object", service_error_code="InternalError", http_status_code=status
    )

    with pytest.raises(IndeterminateWriteError):
        await backend.write("queue.json", b"x", StorageVersion("s3", ETAG))


async def test_stub_5xx_on_read_retryable(stubbed: tuple[S3Backend, Stubber]) -> None:
    backend, stubber = stubbed
    stubber.add_client_error("get_object", service_error_code="SlowDown", http_status_code=503)

    with pytest.raises(StorageBackendError) as caught:
        await backend.read("queue.json")

    assert caught.value.retryable is True
    assert caught.value.status == 503


async def test_stub_403_not_retryable(stubbed: tuple[S3Backend, Stubber]) -> None:
    backend, stubber = stubbed
    stubber.add_client_error("put_object", service_error_code="AccessDenied", http_status_code=403)

    with pytest.raises(StorageBackendError) as caught:
        await backend.create_if_not_exists("queue.json", b"x")

    assert caught.value.status == 403
    assert caught.value.retryable is False


async def test_stub_no_such_bucket_not_missing(stubbed: tuple[S3Backend, Stubber]) -> None:
    backend, stubber = stubbed
    stubber.add_client_error("put_object", service_error_code="NoSuchBucket", http_status_code=404)

    with pytest.raises(StorageBackendError) as caught:
        await backend.write("queue.json", b"x", StorageVersion("s3", ETAG))

    assert caught.value.status == 404
    assert "create the bucket" in str(caught.value)


async def test_stub_404_no_such_key_missing(stubbed: tuple[S3Backend, Stubber]) -> None:
    backend, stubber = stubbed
    stubber.add_client_error("put_object", service_error_code="NoSuchKey", http_status_code=404)

    with pytest.raises(CASConflictError) as caught:
        await backend.write("queue.json", b"x", StorageVersion("s3", ETAG))

    assert caught.value.reason is ConflictReason.MISSING


async def test_stub_412_create_is_exists(stubbed: tuple[S3Backend, Stubber]) -> None:
    backend, stubber = stubbed
    stubber.add_client_error(
        "put_object", service_error_code="PreconditionFailed", http_status_code=412
    )

    with pytest.raises(CASConflictError) as caught:
        await backend.create_if_not_exists("queue.json", b"x")

    assert caught.value.reason is ConflictReason.EXISTS


async def test_stub_412_other_etag_is_stale(stubbed: tuple[S3Backend, Stubber]) -> None:
    backend, stubber = stubbed
    stubber.add_client_error(
        "put_object", service_error_code="PreconditionFailed", http_status_code=412
    )
    stubber.add_response("get_object", {"Body": body(b"b"), "ETag": OTHER_ETAG})

    with pytest.raises(CASConflictError) as caught:
        await backend.write("queue.json", b"x", StorageVersion("s3", ETAG))

    assert caught.value.reason is ConflictReason.STALE_VERSION


async def test_stub_412_absent_key_is_missing(stubbed: tuple[S3Backend, Stubber]) -> None:
    backend, stubber = stubbed
    stubber.add_client_error(
        "put_object", service_error_code="PreconditionFailed", http_status_code=412
    )
    stubber.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)

    with pytest.raises(CASConflictError) as caught:
        await backend.write("queue.json", b"x", StorageVersion("s3", ETAG))

    assert caught.value.reason is ConflictReason.MISSING
    assert "412" in caught.value.detail


async def test_stub_412_own_etag_is_config_error(stubbed: tuple[S3Backend, Stubber]) -> None:
    backend, stubber = stubbed
    stubber.add_client_error(
        "put_object", service_error_code="PreconditionFailed", http_status_code=412
    )
    stubber.add_response("get_object", {"Body": body(b"a"), "ETag": ETAG})

    with pytest.raises(StorageBackendError) as caught:
        await backend.write("queue.json", b"x", StorageVersion("s3", ETAG))

    assert not isinstance(caught.value, CASConflictError)
    assert caught.value.retryable is False
    assert caught.value.status == 412
    assert "rejected its own ETag" in str(caught.value)
    assert "stop retrying" in str(caught.value)


async def test_stub_412_own_etag_unquoted_is_stale(stubbed: tuple[S3Backend, Stubber]) -> None:
    # Only byte-for-byte equality counts as "own ETag", so an unquoted token is a different one.
    backend, stubber = stubbed
    stubber.add_client_error(
        "put_object", service_error_code="PreconditionFailed", http_status_code=412
    )
    stubber.add_response("get_object", {"Body": body(b"a"), "ETag": ETAG})

    with pytest.raises(CASConflictError) as caught:
        await backend.write("queue.json", b"x", StorageVersion("s3", ETAG.strip('"')))

    assert caught.value.reason is ConflictReason.STALE_VERSION


# --- transport errors with a client double -------------------------------------------------


class RaisingClient:
    """A client double whose put_object and get_object raise a given botocore error."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def put_object(self, **kwargs: Any) -> Any:
        self.calls += 1
        raise self.error

    def get_object(self, **kwargs: Any) -> Any:
        self.calls += 1
        raise self.error


URL = "http://127.0.0.1:9/osqueue-test/queue.json"


@pytest.mark.parametrize(
    "error",
    [
        botocore.exceptions.ConnectionClosedError(endpoint_url=URL),
        botocore.exceptions.ReadTimeoutError(endpoint_url=URL),
        botocore.exceptions.ResponseStreamingError(error="reset"),
        botocore.exceptions.SSLError(endpoint_url=URL, error="bad record mac"),
    ],
    ids=["closed-after-send", "read-timeout", "streaming", "ssl"],
)
async def test_double_sent_errors_indeterminate(error: Exception) -> None:
    backend = S3Backend("osqueue-test", client=RaisingClient(error))

    with pytest.raises(IndeterminateWriteError):
        await backend.write("queue.json", b"x", StorageVersion("s3", ETAG))
    with pytest.raises(IndeterminateWriteError):
        await backend.create_if_not_exists("queue.json", b"x")


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (botocore.exceptions.EndpointConnectionError(endpoint_url=URL), True),
        (botocore.exceptions.ConnectTimeoutError(endpoint_url=URL), True),
        (botocore.exceptions.NoCredentialsError(), False),
    ],
    ids=["refused", "connect-timeout", "no-credentials"],
)
async def test_double_unsent_errors_not_applied(error: Exception, retryable: bool) -> None:
    backend = S3Backend("osqueue-test", client=RaisingClient(error))

    with pytest.raises(StorageBackendError) as on_write:
        await backend.write("queue.json", b"x", StorageVersion("s3", ETAG))
    with pytest.raises(StorageBackendError) as on_read:
        await backend.read("queue.json")

    assert on_write.value.retryable is retryable
    assert on_read.value.retryable is retryable


# --- a local HTTP server that misbehaves ---------------------------------------------------


class MisbehavingServer:
    """An HTTP server on 127.0.0.1 that counts requests, then drops the connection or sends 500."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            # HTTP/1.1 makes the handler reply to "Expect: 100-continue" at once, so botocore
            # does not wait a second before it sends the body of a PUT.
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                owner.requests.append(self.command)
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if owner.mode == "close":
                    # The whole request has arrived, so dropping the connection now loses
                    # only the reply.
                    self.close_connection = True
                    return
                payload = b"<Error><Code>InternalError</Code><Message>boom</Message></Error>"
                self.send_response(500)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = _handle

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def local_backend(endpoint_url: str) -> S3Backend:
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name="us-east-1",
    )
    return S3Backend(
        "osqueue-test",
        endpoint_url=endpoint_url,
        session=session,
        client_config=Config(connect_timeout=2, read_timeout=5),
    )


@pytest.mark.parametrize("mode", ["close", "500"])
async def test_write_sent_once_then_indeterminate(mode: str) -> None:
    with MisbehavingServer(mode) as server:
        backend = local_backend(server.endpoint_url)

        with pytest.raises(IndeterminateWriteError):
            await backend.write("queue.json", b"x", StorageVersion("s3", ETAG))
        with pytest.raises(IndeterminateWriteError):
            await backend.create_if_not_exists("queue.json", b"x")

        # One attempt per conditional write: botocore made no retries of its own.
        assert server.requests == ["PUT", "PUT"]
        await backend.aclose()


async def test_read_retried_then_backend_error() -> None:
    with MisbehavingServer("500") as server:
        backend = local_backend(server.endpoint_url)

        with pytest.raises(StorageBackendError) as caught:
            await backend.read("queue.json")

        assert caught.value.retryable is True
        assert caught.value.status == 500
        # Standard retry mode: three attempts in total.
        assert server.requests == ["GET", "GET", "GET"]
        await backend.aclose()


async def test_unreachable_endpoint_fails_fast() -> None:
    backend = local_backend(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()

    with pytest.raises(StorageBackendError) as on_write:
        await backend.create_if_not_exists("queue.json", b"x")
    with pytest.raises(StorageBackendError) as on_read:
        await backend.read("queue.json")

    assert not isinstance(on_write.value, CASConflictError)
    assert on_write.value.retryable is True
    assert on_read.value.retryable is True
    assert "Could not connect" in str(on_write.value)
    # Reads retry with backoff (at most about 3 s); nothing may wait for a time-out.
    assert time.monotonic() - started < 10
    await backend.aclose()


def test_passed_client_with_retries_warns(caplog: pytest.LogCaptureFixture) -> None:
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name="us-east-1",
    )
    client = session.client("s3", endpoint_url=f"http://127.0.0.1:{free_port()}")

    with caplog.at_level("WARNING", logger="osqueue.storage.s3"):
        S3Backend("osqueue-test", client=client)

    assert "allows SDK retries" in caplog.text


# --- the fixture module itself ------------------------------------------------------------


def test_fixture_relaunches_exited_server(tmp_path: Path) -> None:
    launches: list[Path] = []

    def launch() -> tuple[list[str], S3TestServer, Path]:
        work_dir = tmp_path / f"launch{len(launches)}"
        work_dir.mkdir()
        launches.append(work_dir)
        server = S3TestServer(
            name="exits-at-once",
            endpoint_url=f"http://127.0.0.1:{free_port()}",
            bucket="osqueue-test",
            region="us-east-1",
            version="0",
            log_path=work_dir / "server.log",
        )
        command = [sys.executable, "-c", "print('address already in use'); raise SystemExit(3)"]
        return command, server, work_dir

    with pytest.raises(pytest.fail.Exception) as caught:
        next(s3_servers._run_server(launch))

    assert len(launches) == s3_servers.START_ATTEMPTS
    assert "exited with code 3" in str(caught.value)
    assert "address already in use" in str(caught.value)


# --- credentials and names in logs and messages ----------------------------------------------


async def test_endpoint_password_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    # The port is closed, so the request fails at connect and its error quotes the URL.
    endpoint = f"http://user:s3cr3t-pw@127.0.0.1:{free_port()}"
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name="us-east-1",
    )

    with caplog.at_level("DEBUG", logger="osqueue.storage.s3"):
        backend = S3Backend(
            "osqueue-test", endpoint_url=endpoint, session=session,
            client_config=Config(connect_timeout=1, retries={"total_max_attempts": 1}),
        )
        with pytest.raises(StorageBackendError) as caught:
            await backend.create_if_not_exists("queue.json", b"x")
        await backend.aclose()

    assert "S3 backend ready" in caplog.text
    assert "***@127.0.0.1" in caplog.text
    assert "s3cr3t-pw" not in caplog.text
    assert "s3cr3t-pw" not in str(caught.value)


async def test_error_names_full_object_name(stubbed: tuple[S3Backend, Stubber]) -> None:
    _, stubber = stubbed
    client = stubber.client
    backend = S3Backend("osqueue-test", prefix="runs/run-1/", client=client)
    stubber.add_client_error("put_object", service_error_code="NoSuchBucket", http_status_code=404)

    with pytest.raises(StorageBackendError) as caught:
        await backend.create_if_not_exists("probe/policy", b"x")

    assert "'runs/run-1/probe/policy'" in str(caught.value)


async def test_failed_request_not_logged_as_warning(
    stubbed: tuple[S3Backend, Stubber], caplog: pytest.LogCaptureFixture
) -> None:
    # The caller receives the error; a WARNING as well would print it twice.
    backend, stubber = stubbed
    stubber.add_client_error("put_object", service_error_code="NoSuchBucket", http_status_code=404)

    with caplog.at_level("WARNING", logger="osqueue.storage.s3"), pytest.raises(
        StorageBackendError
    ):
        await backend.create_if_not_exists("queue.json", b"x")

    assert caplog.records == []


async def test_missing_credentials_message_names_variables() -> None:
    backend = S3Backend(
        "osqueue-test", client=RaisingClient(botocore.exceptions.NoCredentialsError())
    )

    with pytest.raises(StorageBackendError) as caught:
        await backend.create_if_not_exists("queue.json", b"x")

    assert "AWS_ACCESS_KEY_ID" in str(caught.value)
    assert "AWS_SECRET_ACCESS_KEY" in str(caught.value)


@pytest.mark.parametrize("data", [bytearray(b"x"), memoryview(b"x")], ids=["bytearray", "memoryview"])
async def test_bytes_like_data_suggests_bytes(data: object) -> None:
    backend = S3Backend("osqueue-test", client=RecordingClient())

    with pytest.raises(InvalidDataError) as caught:
        await backend.create_if_not_exists("queue.json", data)  # type: ignore[arg-type]

    assert "bytes(value)" in str(caught.value)
    assert "encode" not in str(caught.value)
