"""The S3 backend: objects in one bucket, compare-and-swap through conditional PutObject.

Version tokens are ETags, kept and sent back exactly as the server returned them (quotes
included). A single-part ETag is the MD5 of the body on AWS, moto and SeaweedFS, so equal
bytes give equal tokens and the ABA caveat of ``TokenPolicy.CONTENT_HASH`` applies.

boto3 is blocking; every request runs in a worker thread through
``anyio.to_thread.run_sync``, so the backend works under asyncio and trio.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ProxyConnectionError,
)
from osqueue.errors import (
    CASConflictError,
    ConfigError,
    ConflictReason,
    IndeterminateWriteError,
    InvalidKeyError,
    InvalidVersionError,
    StorageBackendError,
)
from osqueue.storage.base import (
    MAX_KEY_BYTES,
    ReadResult,
    StorageVersion,
    validate_data,
    validate_key,
    validate_version,
)
from osqueue.storage.config import redact_text, redact_url

logger = logging.getLogger(__name__)

WRITE_RETRIES: dict[str, Any] = {"mode": "standard", "total_max_attempts": 1}
"""Retry settings of the client that sends conditional writes: one attempt, no SDK retries.

``total_max_attempts`` counts the initial request. botocore's ``max_attempts`` key counts
retries only, so ``max_attempts=1`` would still allow one retry."""

READ_RETRIES: dict[str, Any] = {"mode": "standard"}
"""Default retry settings for reads and deletes: botocore's standard mode (3 attempts in
total, exponential backoff with jitter). A ``client_config`` with ``retries`` replaces it."""

# Failures that botocore raises before any byte of the request went out: the connection was
# never established, or the request could not be built or signed.
_NOT_SENT_ERRORS: tuple[type[BaseException], ...] = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ProxyConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    ParamValidationError,
)
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)

_RETRYABLE_4XX = frozenset({408, 429})
_MISSING_BUCKET = "NoSuchBucket"


class S3Backend:
    """A ``StorageBackend`` on an S3 bucket (AWS or an S3-compatible server).

    Objects are stored under ``prefix + key``; that full name must fit in 1024 bytes of
    UTF-8. ``write`` sends PutObject with ``If-Match: <etag>``, ``create_if_not_exists``
    sends PutObject with ``If-None-Match: *``, and ``read`` takes the bytes and the ETag from
    one GetObject response.

    Error mapping of conditional writes:

    - 412 PreconditionFailed: ``CASConflictError`` with ``EXISTS`` for a create. For a write
      the backend reads the object once: absent gives ``MISSING`` (SeaweedFS returns 412 for
      a missing key), a different ETag gives ``STALE_VERSION``, and the very ETag that was
      sent gives a non-retryable ``StorageBackendError``, because a server that rejects its
      own ETag has an ETag quoting or proxy configuration problem that retries cannot fix.
      If that read fails with a non-retryable error (SeaweedFS returns 412 even when the
      bucket does not exist), the read's ``StorageBackendError`` is raised instead.
    - 404 NoSuchKey on a write: ``CASConflictError(MISSING)`` (AWS and moto).
    - 409 ConditionalRequestConflict: ``CASConflictError(CONCURRENT_REQUEST)``. Nothing was
      stored and the same request may be sent again.
    - Other 4xx (403 access denied, 404 NoSuchBucket, 400): ``StorageBackendError`` with
      ``status``; retryable only for 408 and 429.
    - 5xx, read time-outs, TLS errors, and connections closed or reset after the request
      went out: ``IndeterminateWriteError``, because the server may have applied the write.
    - Connection refused, DNS failure, connect time-out, missing credentials:
      ``StorageBackendError`` (retryable for the network cases), because nothing was sent.

    Retry policy: conditional writes go through a client configured with
    ``total_max_attempts=1``, so botocore never retries them. An SDK retry of a PUT whose
    first attempt landed would meet its own new ETag and report 412, turning a successful
    write into a reported conflict; with one attempt every lost response surfaces as
    ``IndeterminateWriteError`` instead, and the caller settles it by reading back. Reads
    and deletes use botocore's standard retry mode unless ``client_config`` sets
    ``retries``. A ``client`` passed in is used for every request as it is, so its retry
    configuration is the caller's responsibility; the backend logs a warning if it allows
    retries. Failed reads raise ``StorageBackendError``, retryable for 5xx, 408, 429 and
    network errors.

    ``session`` is a ``boto3.session.Session`` to build the clients from; pass one with
    explicit credentials to keep them off the process environment. Cancelling a pending
    call waits for its worker thread to finish the request.
    """

    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        client_config: Config | None = None,
        client: Any = None,
        session: boto3.session.Session | None = None,
    ) -> None:
        self.bucket = _validate_bucket(bucket)
        self.prefix = _validate_prefix(prefix)
        self.endpoint_url = endpoint_url

        if client is not None:
            self._read_client = client
            self._write_client = client
            self._owns_clients = False
            _warn_if_client_retries_writes(client)
        else:
            session = session if session is not None else boto3.session.Session()
            read_config, write_config = _client_configs(client_config, endpoint_url)
            self._read_client = session.client(
                "s3", region_name=region, endpoint_url=endpoint_url, config=read_config
            )
            self._write_client = session.client(
                "s3", region_name=region, endpoint_url=endpoint_url, config=write_config
            )
            self._owns_clients = True

        # The endpoint may carry user information; it never reaches the log.
        logger.info(
            "S3 backend ready: bucket=%s prefix=%r endpoint=%s",
            self.bucket,
            self.prefix,
            "(AWS default)" if endpoint_url is None else redact_url(endpoint_url),
        )

    async def read(self, key: str) -> ReadResult | None:
        """Return the bytes and ETag of ``key`` from one GetObject, or None if it is absent."""

        name = self._object_name(key)
        return await anyio.to_thread.run_sync(self._read_sync, key, name)

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion:
        """Replace ``key`` only if its ETag is ``expected``; return the new ETag."""

        name = self._object_name(key)
        validate_data(data)
        etag = _validate_etag(validate_version(expected, self.name))
        return await anyio.to_thread.run_sync(self._write_sync, key, name, data, etag)

    async def create_if_not_exists(self, key: str, data: bytes) -> StorageVersion:
        """Store ``key`` only if no object has that name; return its ETag."""

        name = self._object_name(key)
        validate_data(data)
        return await anyio.to_thread.run_sync(self._create_sync, key, name, data)

    async def delete(self, key: str) -> None:
        """Remove ``key`` unconditionally; deleting an absent key succeeds (clean-up only)."""

        name = self._object_name(key)
        await anyio.to_thread.run_sync(self._delete_sync, key, name)

    async def aclose(self) -> None:
        """Close the HTTP connection pools of the clients this backend created."""

        if not self._owns_clients:
            return
        await anyio.to_thread.run_sync(self._close_sync)
        logger.info("S3 backend closed: bucket=%s prefix=%r", self.bucket, self.prefix)

    def _object_name(self, key: str) -> str:
        validate_key(key)
        name = self.prefix + key
        size = len(name.encode("utf-8"))
        if size > MAX_KEY_BYTES:
            raise InvalidKeyError(
                f"object name {name[:40]!r}... (prefix {self.prefix!r} + key) is {size} bytes "
                f"of UTF-8, more than the maximum of {MAX_KEY_BYTES}; use a shorter key or prefix"
            )
        return name

    # The *_sync methods run in worker threads. boto3 clients are safe to share between
    # threads, and nothing else here changes after __init__.

    def _read_sync(self, key: str, name: str) -> ReadResult | None:
        try:
            response = self._read_client.get_object(Bucket=self.bucket, Key=name)
            with response["Body"] as body:
                data = body.read()
        except ClientError as error:
            if _error_code(error) == "NoSuchKey":
                return None
            raise self._failed("read", key, error) from error
        except BotoCoreError as error:
            raise self._failed("read", key, error) from error

        etag = response.get("ETag")
        if not etag:
            raise StorageBackendError(
                f"GetObject of {name!r} in bucket {self.bucket!r} returned no ETag; osqueue "
                "needs ETags for conditional writes, so use a server that returns them",
                key=key,
            )
        return ReadResult(data, StorageVersion(self.name, etag))

    def _write_sync(self, key: str, name: str, data: bytes, etag: str) -> StorageVersion:
        try:
            response = self._write_client.put_object(
                Bucket=self.bucket, Key=name, Body=data, IfMatch=etag
            )
        except ClientError as error:
            raise self._write_rejected(key, error, etag) from error
        except BotoCoreError as error:
            raise self._write_transport_error(key, error) from error
        return self._version_of_put(key, response)

    def _create_sync(self, key: str, name: str, data: bytes) -> StorageVersion:
        try:
            response = self._write_client.put_object(
                Bucket=self.bucket, Key=name, Body=data, IfNoneMatch="*"
            )
        except ClientError as error:
            raise self._create_rejected(key, error) from error
        except BotoCoreError as error:
            raise self._write_transport_error(key, error) from error
        return self._version_of_put(key, response)

    def _delete_sync(self, key: str, name: str) -> None:
        try:
            self._read_client.delete_object(Bucket=self.bucket, Key=name)
        except (ClientError, BotoCoreError) as error:
            raise self._failed("delete", key, error) from error

    def _close_sync(self) -> None:
        for client in (self._read_client, self._write_client):
            client.close()

    def _version_of_put(self, key: str, response: dict[str, Any]) -> StorageVersion:
        etag = response.get("ETag")
        if not etag:
            # The write landed, but without its token the caller cannot continue from it.
            logger.warning("PutObject of %r returned no ETag", key)
            raise IndeterminateWriteError(
                key, "the server stored the object but returned no ETag; read it back"
            )
        return StorageVersion(self.name, etag)

    def _write_rejected(self, key: str, error: ClientError, etag: str) -> Exception:
        """Map a ClientError from a PutObject with If-Match to the error to raise."""

        code, status = _error_code(error), _status(error)
        if status == 412:
            return self._classify_precondition_failure(key, etag)
        if code == "NoSuchKey":
            logger.debug("write to %r found no object (HTTP 404 NoSuchKey)", key)
            return CASConflictError(key, ConflictReason.MISSING, "HTTP 404 NoSuchKey")
        return self._conditional_put_error(key, error)

    def _create_rejected(self, key: str, error: ClientError) -> Exception:
        """Map a ClientError from a PutObject with If-None-Match to the error to raise."""

        if _status(error) == 412:
            logger.debug("create of %r found an existing object (HTTP 412)", key)
            return CASConflictError(key, ConflictReason.EXISTS, "HTTP 412 PreconditionFailed")
        return self._conditional_put_error(key, error)

    def _conditional_put_error(self, key: str, error: ClientError) -> Exception:
        """Map the rejections that writes and creates share (409, 5xx, other 4xx)."""

        code, status = _error_code(error), _status(error)
        if code == "ConditionalRequestConflict":
            logger.info("conditional write to %r got HTTP 409 %s; not applied", key, code)
            return CASConflictError(key, ConflictReason.CONCURRENT_REQUEST, f"HTTP {status} {code}")
        if status is not None and status >= 500:
            logger.warning(
                "conditional write to %r got HTTP %s %s; outcome unknown", key, status, code
            )
            return IndeterminateWriteError(
                key, f"HTTP {status} {code}: the server may have applied the write"
            )
        return self._failed("write", key, error)

    def _classify_precondition_failure(self, key: str, etag: str) -> Exception:
        """Tell a stale ETag, a missing key and a server that rejects its own ETag apart.

        The 412 came from the only attempt, so the write was certainly not applied; the
        read only decides which error describes it.
        """

        try:
            current = self._read_sync(key, self.prefix + key)
        except StorageBackendError as error:
            logger.warning(
                "write to %r got HTTP 412 and the follow-up read failed: %s", key, error
            )
            if not error.retryable:
                # SeaweedFS returns 412 even for a missing bucket, and the read error
                # names the cause.
                return error
            return CASConflictError(key, ConflictReason.STALE_VERSION, f"HTTP 412; expected {etag}")

        if current is None:
            logger.debug("write to %r found no object (HTTP 412, key absent)", key)
            return CASConflictError(
                key, ConflictReason.MISSING, "HTTP 412 PreconditionFailed and the key is absent"
            )
        if current.version.value == etag:
            # NOTE: an A -> B -> A sequence by other writers between the 412 and this read
            # also ends here, because equal bytes give equal ETags; that is rare and the
            # next read-modify-write settles it.
            logger.error(
                "write to %r got HTTP 412 although the object still has ETag %s", key, etag
            )
            return StorageBackendError(
                f"the server rejected its own ETag {etag} for {key!r} in bucket "
                f"{self.bucket!r} (HTTP 412 while a fresh read returns the same ETag); this is "
                "likely an ETag quoting or proxy configuration problem, so stop retrying and "
                "check that If-Match reaches the server unchanged",
                key=key,
                retryable=False,
                status=412,
            )
        logger.debug(
            "write to %r is stale: expected %s, current %s", key, etag, current.version.value
        )
        return CASConflictError(key, ConflictReason.STALE_VERSION, f"HTTP 412; expected {etag}")

    def _write_transport_error(self, key: str, error: BotoCoreError) -> Exception:
        """Map a failure below HTTP (connect, send, receive) of a conditional PutObject."""

        if isinstance(error, _NOT_SENT_ERRORS):
            return self._failed("write", key, error)
        detail = redact_text(str(error))
        logger.warning(
            "conditional write to %r failed after sending: %s; outcome unknown", key, detail
        )
        return IndeterminateWriteError(
            key, f"{type(error).__name__}: {detail}; the server may have applied the write"
        )

    def _failed(
        self, operation: str, key: str, error: ClientError | BotoCoreError
    ) -> StorageBackendError:
        """Build the StorageBackendError for a request that certainly changed nothing.

        The message names the full object name (prefix and key). The error is logged at
        INFO only, because the caller receives it and decides whether to report it.
        """

        name = self.prefix + key
        if isinstance(error, ClientError):
            code, status = _error_code(error), _status(error)
            retries = error.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            retryable = status is not None and (status >= 500 or status in _RETRYABLE_4XX)
            message = (
                f"{operation} of {name!r} in bucket {self.bucket!r} failed: HTTP {status} {code}"
            )
            if code == _MISSING_BUCKET:
                message += "; create the bucket or fix the bucket name"
            elif status == 403:
                message += "; check the credentials and the bucket policy"
        else:
            status, retries = None, None
            retryable = not isinstance(error, (*_CREDENTIAL_ERRORS, ParamValidationError))
            message = (
                f"{operation} of {name!r} in bucket {self.bucket!r} failed: "
                f"{redact_text(str(error))}"
            )
            if isinstance(error, _CREDENTIAL_ERRORS):
                message += (
                    "; configure AWS credentials for this client (for a local server, set "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                )

        logger.info("%s (retryable=%s, SDK retries=%s)", message, retryable, retries)
        return StorageBackendError(message, key=key, retryable=retryable, status=status)


def _client_configs(
    client_config: Config | None, endpoint_url: str | None
) -> tuple[Config, Config]:
    """Return the botocore configs of the read client and the write client."""

    defaults = Config(retries=READ_RETRIES)
    if endpoint_url is not None:
        # Virtual-host addressing needs a DNS name bucket.host, which a host:port
        # endpoint seldom has.
        defaults = defaults.merge(Config(s3={"addressing_style": "path"}))
    read_config = defaults if client_config is None else defaults.merge(client_config)
    write_config = read_config.merge(Config(retries=WRITE_RETRIES))
    return read_config, write_config


def _warn_if_client_retries_writes(client: Any) -> None:
    config = getattr(getattr(client, "meta", None), "config", None)
    if config is None:
        return  # a test double without botocore metadata
    # botocore stores max_attempts as total_max_attempts; no key means its default of 3.
    retries = getattr(config, "retries", None) or {}
    if retries.get("total_max_attempts") != 1:
        logger.warning(
            "the S3 client passed to S3Backend allows SDK retries (%s); a retried conditional "
            "write can report a conflict for a write that landed. Build it with "
            "Config(retries=%r)",
            retries,
            WRITE_RETRIES,
        )


def _validate_bucket(bucket: object) -> str:
    if not isinstance(bucket, str) or not bucket or "/" in bucket:
        raise ConfigError(
            "bucket", f"must be a bucket name without '/', got {bucket!r}", "osqueue-state"
        )
    return bucket


def _validate_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise ConfigError("prefix", f"must be a str, got {type(prefix).__name__}", "queues/prod/")
    if len(prefix.encode("utf-8")) >= MAX_KEY_BYTES:
        raise ConfigError(
            "prefix",
            f"is {len(prefix.encode('utf-8'))} bytes, leaving no room for keys within "
            f"{MAX_KEY_BYTES} bytes",
            "queues/prod/",
        )
    return prefix


def _validate_etag(version: StorageVersion) -> str:
    if not isinstance(version.value, str) or not version.value:
        raise InvalidVersionError(
            f"invalid S3 version token: expected the ETag string the server returned, got "
            f"{version.value!r}; pass the StorageVersion returned by read() or write()"
        )
    return version.value


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int | None:
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None
