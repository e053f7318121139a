"""Tests of GCSBackend: against fake-gcs-server, against gcp-storage-emulator as a negative
control, and at unit level with a fake client for input checks and error mapping."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import requests
from google.api_core import exceptions as api_exceptions
from osqueue.errors import (
    CASConflictError,
    ConflictReason,
    IndeterminateWriteError,
    InvalidDataError,
    InvalidKeyError,
    InvalidVersionError,
    StorageBackendError,
)
from osqueue.storage.base import ReadResult, StorageBackend, StorageVersion
from osqueue.storage.gcs import GCSBackend
from urllib3.exceptions import NewConnectionError, ProtocolError

from tests.support.gcs_servers import GCSTestServer

BEYOND_FLOAT = 2**53 + 1
"""A generation that a float64 cannot hold exactly."""


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


_prefix_counter = iter(range(1_000_000))


def unique_prefix(label: str) -> str:
    # The bucket is shared by the session, so each test writes under its own prefix.
    return f"test-gcs/{label}-{next(_prefix_counter)}/"


@pytest.fixture
async def fake_backend(fake_gcs_server: GCSTestServer) -> Any:
    backend = fake_gcs_server.make_backend(unique_prefix("fake"))
    yield backend
    await backend.aclose()


# -- fake-gcs-server: CAS behaviour ------------------------------------------------------


@pytest.mark.gcs
@pytest.mark.anyio
async def test_backend_satisfies_protocol(fake_backend: GCSBackend) -> None:
    assert isinstance(fake_backend, StorageBackend)
    assert fake_backend.name == "gcs"


@pytest.mark.gcs
@pytest.mark.anyio
async def test_read_missing_returns_none(fake_backend: GCSBackend) -> None:
    assert await fake_backend.read("queue.json") is None


@pytest.mark.gcs
@pytest.mark.anyio
async def test_create_then_read(fake_backend: GCSBackend) -> None:
    created = await fake_backend.create_if_not_exists("queue.json", b'{"jobs": []}')

    result = await fake_backend.read("queue.json")

    assert result == ReadResult(b'{"jobs": []}', created)
    assert created.backend == "gcs"
    assert type(created.value) is int
    assert created.value > 0


@pytest.mark.gcs
@pytest.mark.anyio
async def test_read_sends_one_request(fake_gcs_server: GCSTestServer) -> None:
    client = fake_gcs_server.make_client()
    sent: list[tuple[str, str]] = []
    original_request = client._http.request

    def counting_request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((method, url))
        return original_request(method, url, *args, **kwargs)

    client._http.request = counting_request
    backend = GCSBackend(fake_gcs_server.bucket, prefix=unique_prefix("one"), client=client)
    created = await backend.create_if_not_exists("state", b"payload")
    sent.clear()

    result = await backend.read("state")

    # google-cloud-storage 3.17 also fetches bucket metadata once per client in a background
    # thread for telemetry, so only requests about the object count here.
    object_requests = [(method, url) for method, url in sent if "/o/" in url or "/o?" in url]
    assert result == ReadResult(b"payload", created)
    assert len(object_requests) == 1
    assert object_requests[0][0] == "GET"
    assert "alt=media" in object_requests[0][1]
    client.close()


@pytest.mark.gcs
@pytest.mark.anyio
async def test_create_existing_is_rejected_unchanged(fake_backend: GCSBackend) -> None:
    original = await fake_backend.create_if_not_exists("queue.json", b"first")

    with pytest.raises(CASConflictError) as caught:
        await fake_backend.create_if_not_exists("queue.json", b"second")

    assert caught.value.reason is ConflictReason.EXISTS
    assert caught.value.key == "queue.json"
    assert await fake_backend.read("queue.json") == ReadResult(b"first", original)


@pytest.mark.gcs
@pytest.mark.anyio
async def test_write_with_current_generation(fake_backend: GCSBackend) -> None:
    first = await fake_backend.create_if_not_exists("queue.json", b"v1")

    second = await fake_backend.write("queue.json", b"v2", first)

    assert second != first
    assert type(second.value) is int
    assert second.value > first.value
    assert await fake_backend.read("queue.json") == ReadResult(b"v2", second)


@pytest.mark.gcs
@pytest.mark.anyio
async def test_stale_generation_is_rejected_unchanged(fake_backend: GCSBackend) -> None:
    first = await fake_backend.create_if_not_exists("queue.json", b"v1")
    second = await fake_backend.write("queue.json", b"v2", first)

    with pytest.raises(CASConflictError) as caught:
        await fake_backend.write("queue.json", b"lost update", first)

    assert caught.value.reason is ConflictReason.STALE_VERSION
    assert str(first.value) in caught.value.detail
    assert await fake_backend.read("queue.json") == ReadResult(b"v2", second)


@pytest.mark.gcs
@pytest.mark.anyio
async def test_write_missing_key_conflicts(fake_backend: GCSBackend) -> None:
    other = await fake_backend.create_if_not_exists("other.json", b"x")

    with pytest.raises(CASConflictError) as caught:
        await fake_backend.write("absent.json", b"data", other)

    assert caught.value.reason is ConflictReason.MISSING
    assert await fake_backend.read("absent.json") is None


@pytest.mark.gcs
@pytest.mark.anyio
async def test_concurrent_writes_one_wins(fake_backend: GCSBackend) -> None:
    base = await fake_backend.create_if_not_exists("queue.json", b"base")
    outcomes: dict[int, StorageVersion | ConflictReason] = {}

    async def attempt(index: int) -> None:
        try:
            outcomes[index] = await fake_backend.write("queue.json", f"w{index}".encode(), base)
        except CASConflictError as error:
            outcomes[index] = error.reason

    async with anyio.create_task_group() as group:
        for index in range(8):
            group.start_soon(attempt, index)

    winners = {i: v for i, v in outcomes.items() if isinstance(v, StorageVersion)}
    losers = [v for v in outcomes.values() if not isinstance(v, StorageVersion)]
    assert len(winners) == 1
    assert set(losers) == {ConflictReason.STALE_VERSION}
    [(index, version)] = winners.items()
    assert await fake_backend.read("queue.json") == ReadResult(f"w{index}".encode(), version)


@pytest.mark.gcs
@pytest.mark.anyio
async def test_prefixes_are_isolated(fake_gcs_server: GCSTestServer) -> None:
    left = fake_gcs_server.make_backend(unique_prefix("left"))
    right = fake_gcs_server.make_backend(unique_prefix("right"))
    await left.create_if_not_exists("queue.json", b"left")

    assert await right.read("queue.json") is None
    await right.create_if_not_exists("queue.json", b"right")
    left_result = await left.read("queue.json")
    assert left_result is not None
    assert left_result.data == b"left"
    await left.aclose()
    await right.aclose()


@pytest.mark.gcs
@pytest.mark.anyio
async def test_delete_then_create_again(fake_backend: GCSBackend) -> None:
    first = await fake_backend.create_if_not_exists("queue.json", b"one")

    await fake_backend.delete("queue.json")
    await fake_backend.delete("queue.json")

    assert await fake_backend.read("queue.json") is None
    again = await fake_backend.create_if_not_exists("queue.json", b"two")
    assert again != first


@pytest.mark.gcs
@pytest.mark.anyio
async def test_fake_server_generations_are_microseconds(fake_backend: GCSBackend) -> None:
    before = time.time()
    version = await fake_backend.create_if_not_exists("queue.json", b"x")
    after = time.time()

    # fake-gcs-server 1.54 sets the generation to the write time in Unix microseconds.
    # Real GCS generations are also large int64 values, but their meaning is unspecified.
    assert isinstance(version.value, int)
    assert 10**15 < version.value < 10**17
    assert before - 5 <= version.value / 1_000_000 <= after + 5


@pytest.mark.gcs
@pytest.mark.anyio
async def test_create_in_missing_bucket_fails(fake_gcs_server: GCSTestServer) -> None:
    backend = GCSBackend(
        "osqueue-no-such-bucket", prefix="p/", endpoint_url=fake_gcs_server.endpoint_url
    )

    with pytest.raises(StorageBackendError) as caught:
        await backend.create_if_not_exists("queue.json", b"x")

    assert caught.value.status == 404
    assert caught.value.retryable is False
    assert "osqueue-no-such-bucket" in str(caught.value)
    await backend.aclose()


@pytest.mark.gcs
@pytest.mark.anyio
async def test_emulator_host_variable_selects_server(
    fake_gcs_server: GCSTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs_server.endpoint_url)
    backend = GCSBackend(fake_gcs_server.bucket, prefix=unique_prefix("env"))

    created = await backend.create_if_not_exists("queue.json", b"x")

    assert await backend.read("queue.json") == ReadResult(b"x", created)
    await backend.aclose()


def test_endpoint_without_scheme_rejected() -> None:
    with pytest.raises(ValueError, match="127.0.0.1:4443"):
        GCSBackend("bucket", endpoint_url="127.0.0.1:4443")


# -- gcp-storage-emulator: the negative control ------------------------------------------


@pytest.mark.gcs
@pytest.mark.anyio
async def test_emulator_accepts_stale_generation(gcp_emulator_server: GCSTestServer) -> None:
    backend = gcp_emulator_server.make_backend(unique_prefix("control"))
    first = await backend.create_if_not_exists("queue.json", b"v1")
    second = await backend.write("queue.json", b"v2", first)

    # A correct server rejects this write with 412, but gcp-storage-emulator stores it.
    # The assertion documents the server's flaw so that the negative control stays meaningful.
    third = await backend.write("queue.json", b"lost update", first)

    assert second != first
    assert third not in (first, second)
    await backend.aclose()


@pytest.mark.gcs
@pytest.mark.anyio
async def test_emulator_generations_exceed_float(gcp_emulator_server: GCSTestServer) -> None:
    backend = gcp_emulator_server.make_backend(unique_prefix("control-big"))

    version = await backend.create_if_not_exists("queue.json", b"v1")

    # gcp-storage-emulator 2026.7.19 uses time.time_ns() as the generation, so the JSON
    # string contains a number above 2**53 that must arrive as an exact int.
    assert type(version.value) is int
    assert version.value > 2**53
    await backend.aclose()


@pytest.mark.gcs
@pytest.mark.anyio
async def test_emulator_create_overwrites(gcp_emulator_server: GCSTestServer) -> None:
    backend = gcp_emulator_server.make_backend(unique_prefix("control-create"))
    first = await backend.create_if_not_exists("queue.json", b"v1")

    second = await backend.create_if_not_exists("queue.json", b"v2")

    assert second != first
    await backend.aclose()


@pytest.mark.gcs
@pytest.mark.anyio
async def test_emulator_read_falls_back_to_metadata(
    gcp_emulator_server: GCSTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The emulator's downloads carry no x-goog-generation header; the backend then pins the
    # generation with metadata requests before and after the download.
    backend = gcp_emulator_server.make_backend(unique_prefix("control-read"))
    created = await backend.create_if_not_exists("queue.json", b"v1")

    with caplog.at_level("WARNING", logger="osqueue.storage.gcs"):
        first = await backend.read("queue.json")
        second = await backend.read("queue.json")

    assert first is not None
    assert first.data == b"v1"
    assert first.version == created
    assert second == first
    assert await backend.read("missing.json") is None
    warnings = [record for record in caplog.records if "x-goog-generation" in record.message]
    assert len(warnings) == 1
    await backend.aclose()


# -- real sockets: failures around the request --------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Yield the URL of a TCP server on 127.0.0.1 that accepts connections and never responds."""

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    connections: list[socket.socket] = []

    def accept_forever() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connections.append(connection)

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=2)
    for connection in connections:
        connection.close()
    listener.close()


@pytest.mark.anyio
async def test_upload_timeout_is_indeterminate(silent_server: str) -> None:
    backend = GCSBackend("bucket", endpoint_url=silent_server, timeout=0.5)

    with pytest.raises(IndeterminateWriteError) as caught:
        await backend.create_if_not_exists("queue.json", b"x")

    assert caught.value.key == "queue.json"
    await backend.aclose()


@pytest.mark.anyio
async def test_refused_connection_is_retryable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    backend = GCSBackend("bucket", endpoint_url=f"http://127.0.0.1:{closed_port}", timeout=2)

    with pytest.raises(StorageBackendError) as caught:
        await backend.write("queue.json", b"x", StorageVersion("gcs", 5))

    assert caught.value.retryable is True
    await backend.aclose()


# -- unit level: a fake client -------------------------------------------------------------


@dataclass
class FakeBlob:
    """A stand-in for ``Blob`` that records each call in ``FakeBucket.calls``.

    Downloads raise the queued ``download_errors`` first. Then every call raises the
    bucket's ``error`` if it is set, and succeeds otherwise.
    """

    name: str
    bucket: FakeBucket
    generation: int | None = None

    def download_as_bytes(self, **kwargs: Any) -> bytes:
        def attempt() -> bytes:
            self.bucket.calls.append(("download", self.name, kwargs))
            if self.bucket.download_errors:
                raise self.bucket.download_errors.pop(0)
            if self.bucket.error is not None:
                raise self.bucket.error
            data, header = self.bucket.stored
            # Blob.generation in google-cloud-storage 3.17 is int() of the x-goog-generation
            # header string.
            self.generation = int(header)
            return data

        # Like the library, run each attempt under the Retry object the caller passed.
        retry = kwargs.get("retry")
        return retry(attempt)() if retry is not None else attempt()

    def upload_from_string(self, data: bytes, **kwargs: Any) -> None:
        self.bucket.calls.append(("upload", self.name, kwargs))
        if self.bucket.error is not None:
            raise self.bucket.error
        self.generation = self.bucket.next_generation

    def delete(self, **kwargs: Any) -> None:
        self.bucket.calls.append(("delete", self.name, kwargs))


@dataclass
class FakeBucket:
    error: BaseException | None = None
    download_errors: list[BaseException] = field(default_factory=list)
    stored: tuple[bytes, str] = (b"", "1")
    next_generation: int = 2
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def blob(self, name: str) -> FakeBlob:
        return FakeBlob(name, self)

    def get_blob(self, name: str, **kwargs: Any) -> FakeBlob | None:
        self.calls.append(("get_blob", name, kwargs))
        return FakeBlob(name, self, generation=self.next_generation)


@dataclass
class FakeClient:
    fake_bucket: FakeBucket = field(default_factory=FakeBucket)

    def bucket(self, name: str) -> FakeBucket:
        return self.fake_bucket

    def close(self) -> None:
        raise AssertionError("a client passed in by the caller must not be closed")


def make_unit_backend(error: BaseException | None = None) -> tuple[GCSBackend, FakeBucket]:
    client = FakeClient(FakeBucket(error=error))
    return GCSBackend("bucket", prefix="p/", client=client), client.fake_bucket


@pytest.mark.anyio
async def test_generation_beyond_float_round_trips() -> None:
    backend, bucket = make_unit_backend()
    bucket.stored = (b"data", str(BEYOND_FLOAT))

    result = await backend.read("queue.json")

    assert result is not None
    assert result.version == StorageVersion("gcs", BEYOND_FLOAT)
    assert result.version != StorageVersion("gcs", BEYOND_FLOAT - 1)
    assert float(BEYOND_FLOAT) == float(BEYOND_FLOAT - 1)
    await backend.write("queue.json", b"next", result.version)
    assert bucket.calls[-1][2]["if_generation_match"] == BEYOND_FLOAT


@pytest.mark.anyio
async def test_create_sends_generation_zero() -> None:
    backend, bucket = make_unit_backend()

    await backend.create_if_not_exists("queue.json", b"x")

    [(operation, name, kwargs)] = bucket.calls
    assert (operation, name) == ("upload", "p/queue.json")
    assert kwargs["if_generation_match"] == 0
    assert kwargs["if_generation_match"] is not None


@pytest.mark.anyio
async def test_uploads_disable_library_retry() -> None:
    backend, bucket = make_unit_backend()

    await backend.create_if_not_exists("queue.json", b"x")
    await backend.write("queue.json", b"y", StorageVersion("gcs", 7))

    assert [kwargs["retry"] for _, _, kwargs in bucket.calls] == [None, None]


@pytest.mark.parametrize(
    ("call", "expected_error"),
    [
        (lambda b: b.read(""), InvalidKeyError),
        (lambda b: b.read("k" * 1023), InvalidKeyError),
        (lambda b: b.read(b"bytes-key"), InvalidKeyError),
        (lambda b: b.read("line\nbreak"), InvalidKeyError),
        (lambda b: b.create_if_not_exists("k", "text"), InvalidDataError),
        (lambda b: b.write("k", b"x", StorageVersion("s3", '"x"')), InvalidVersionError),
        (lambda b: b.write("k", b"x", StorageVersion("gcs", "123")), InvalidVersionError),
        (lambda b: b.write("k", b"x", StorageVersion("gcs", 0)), InvalidVersionError),
        (lambda b: b.write("k", b"x", 5), InvalidVersionError),
        (lambda b: b.delete(""), InvalidKeyError),
    ],
    ids=[
        "empty-key",
        "key-over-1024-with-prefix",
        "bytes-key",
        "newline-key",
        "str-data",
        "s3-token",
        "string-generation",
        "zero-generation",
        "int-token",
        "delete-empty-key",
    ],
)
@pytest.mark.anyio
async def test_bad_input_rejected_before_request(call: Any, expected_error: type) -> None:
    backend, bucket = make_unit_backend()

    with pytest.raises(expected_error):
        await call(backend)

    assert bucket.calls == []


def _connection_refused() -> requests.ConnectionError:
    refused = NewConnectionError(None, "Failed to establish a new connection: refused")
    return requests.ConnectionError(refused)


@pytest.mark.parametrize(
    ("error", "expected_type", "retryable", "status"),
    [
        (requests.exceptions.ReadTimeout("read timed out"), IndeterminateWriteError, None, None),
        (
            requests.ConnectionError(ProtocolError("reset", ConnectionResetError())),
            IndeterminateWriteError,
            None,
            None,
        ),
        (api_exceptions.InternalServerError("boom"), IndeterminateWriteError, None, None),
        (api_exceptions.GatewayTimeout("slow"), IndeterminateWriteError, None, None),
        (api_exceptions.ServiceUnavailable("busy"), StorageBackendError, True, 503),
        (api_exceptions.TooManyRequests("slow down"), StorageBackendError, True, 429),
        (api_exceptions.Forbidden("denied"), StorageBackendError, False, 403),
        (_connection_refused(), StorageBackendError, True, None),
        (requests.exceptions.ConnectTimeout("connect"), StorageBackendError, True, None),
    ],
    ids=[
        "read-timeout",
        "connection-reset",
        "500",
        "504",
        "503",
        "429",
        "403",
        "refused",
        "connect-timeout",
    ],
)
@pytest.mark.anyio
async def test_upload_error_mapping(
    error: BaseException, expected_type: type, retryable: bool | None, status: int | None
) -> None:
    backend, bucket = make_unit_backend(error)

    with pytest.raises(expected_type) as caught:
        await backend.write("queue.json", b"x", StorageVersion("gcs", 3))

    assert type(caught.value) is expected_type
    assert caught.value.key == "queue.json"
    if expected_type is StorageBackendError:
        assert caught.value.retryable is retryable
        assert caught.value.status == status
    assert len([c for c in bucket.calls if c[0] == "upload"]) == 1


@pytest.mark.anyio
async def test_412_on_write_looks_up_object() -> None:
    backend, bucket = make_unit_backend(api_exceptions.PreconditionFailed("precondition"))

    with pytest.raises(CASConflictError) as caught:
        await backend.write("queue.json", b"x", StorageVersion("gcs", 3))

    assert caught.value.reason is ConflictReason.STALE_VERSION
    assert [call[0] for call in bucket.calls] == ["upload", "get_blob"]


@pytest.mark.anyio
async def test_404_on_write_is_missing() -> None:
    backend, _ = make_unit_backend(api_exceptions.NotFound("no such object"))

    with pytest.raises(CASConflictError) as caught:
        await backend.write("queue.json", b"x", StorageVersion("gcs", 3))

    assert caught.value.reason is ConflictReason.MISSING


@pytest.mark.anyio
async def test_read_error_is_storage_error() -> None:
    backend, _ = make_unit_backend(api_exceptions.Forbidden("denied"))

    with pytest.raises(StorageBackendError) as caught:
        await backend.read("queue.json")

    assert caught.value.status == 403
    assert caught.value.retryable is False


@pytest.mark.anyio
async def test_read_retries_transient_errors(caplog: pytest.LogCaptureFixture) -> None:
    backend, bucket = make_unit_backend()
    bucket.stored = (b"data", "9")
    bucket.download_errors = [
        api_exceptions.ServiceUnavailable("busy"),
        requests.ConnectionError("reset"),
    ]

    with caplog.at_level("INFO", logger="osqueue.storage.gcs"):
        result = await backend.read("queue.json")

    assert result == ReadResult(b"data", StorageVersion("gcs", 9))
    assert len([call for call in bucket.calls if call[0] == "download"]) == 3
    retry_logs = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retry_logs) == 2
    assert all("'queue.json'" in message for message in retry_logs)


@pytest.mark.anyio
async def test_read_does_not_retry_403() -> None:
    backend, bucket = make_unit_backend()
    bucket.download_errors = [api_exceptions.Forbidden("denied")]

    with pytest.raises(StorageBackendError):
        await backend.read("queue.json")

    assert len([call for call in bucket.calls if call[0] == "download"]) == 1


def test_bad_bucket_name_rejected() -> None:
    with pytest.raises(ValueError, match="bucket"):
        GCSBackend("", client=FakeClient())


@pytest.mark.anyio
async def test_endpoint_password_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    with caplog.at_level("DEBUG", logger="osqueue.storage.gcs"):
        backend = GCSBackend(
            "bucket", endpoint_url=f"http://user:g5-secret@127.0.0.1:{closed_port}", timeout=2
        )
        with pytest.raises(StorageBackendError) as caught:
            await backend.write("queue.json", b"x", StorageVersion("gcs", 5))
        await backend.aclose()

    assert "GCS backend ready" in caplog.text
    assert "***@127.0.0.1" in caplog.text
    assert "g5-secret" not in caplog.text
    assert "g5-secret" not in str(caught.value)


@pytest.mark.anyio
async def test_errors_name_full_object_name(caplog: pytest.LogCaptureFixture) -> None:
    backend, _ = make_unit_backend(api_exceptions.Forbidden("denied"))

    with caplog.at_level("WARNING", logger="osqueue.storage.gcs"):
        with pytest.raises(StorageBackendError) as on_read:
            await backend.read("queue.json")
        with pytest.raises(StorageBackendError) as on_create:
            await backend.create_if_not_exists("queue.json", b"x")

    assert "'p/queue.json'" in str(on_read.value)
    assert "'p/queue.json'" in str(on_create.value)
    # The caller receives these errors; a WARNING as well would print each one twice.
    assert caplog.records == []
