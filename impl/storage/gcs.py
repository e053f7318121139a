"""Google Cloud Storage backend: compare-and-swap on object generations.

Every object version in GCS has a generation, an int64 that the server sends as a decimal
string. A conditional upload with ``ifGenerationMatch=N`` replaces the object only if its
live generation is ``N``, and ``ifGenerationMatch=0`` stores it only if no live object
exists. A request whose precondition fails gets HTTP 412 and changes nothing.

The blocking google-cloud-storage client runs in worker threads (``anyio.to_thread``), so
the backend works under asyncio and trio.
"""

from __future__ import annotations

import http.client
import logging
import os
from typing import NoReturn

import anyio
import requests
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption
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
from urllib3.exceptions import NewConnectionError

logger = logging.getLogger(__name__)

EMULATOR_ENV_VAR = "STORAGE_EMULATOR_HOST"
"""The variable google-cloud-storage reads for an emulator URL (scheme included)."""

_CONTENT_TYPE = "application/octet-stream"

_MAX_SNAPSHOT_ATTEMPTS = 5
"""Attempts of the three-request read used when downloads lack a generation header."""

_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
"""Statuses after which a read is retried (the set google-cloud-storage retries)."""

_NOT_APPLIED_STATUS = frozenset({429, 503})
"""Statuses returned for a write that was not applied, so the caller may resend it.

NOTE: GCS documents 429 and 503 as retryable, not as a promise that the write was not
applied. osqueue assumes both are returned before the write takes effect, as for the
other backends.
"""


_TRANSIENT_ERRORS = (
    ConnectionError,
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    http.client.HTTPException,
    auth_exceptions.TransportError,
    DataCorruption,
)
"""Errors without an HTTP status after which a read may be sent again."""

_REQUEST_ERRORS = (
    *_TRANSIENT_ERRORS,
    api_exceptions.GoogleAPICallError,
    api_exceptions.RetryError,
    auth_exceptions.GoogleAuthError,
    requests.RequestException,
)
"""Errors a request can end with. Any other exception is a bug and propagates unchanged."""


def _is_transient(error: BaseException) -> bool:
    """Return True for errors after which a read may be sent again."""

    if isinstance(error, api_exceptions.GoogleAPICallError):
        return error.code in _RETRYABLE_STATUS
    return isinstance(error, _TRANSIENT_ERRORS)


def _connection_not_opened(error: BaseException) -> bool:
    """Return True if ``error`` shows that no connection was opened, so nothing was sent."""

    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    cause: BaseException | None = error
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, NewConnectionError):
            return True
        # requests keeps the urllib3 error in args[0] (a MaxRetryError whose .reason is
        # the NewConnectionError) rather than in __cause__.
        reason = getattr(cause, "reason", None)
        if isinstance(reason, NewConnectionError):
            return True
        nested = cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else None
        cause = cause.__cause__ or cause.__context__ or nested
        seen += 1
    return False


def _make_client(project: str | None, endpoint_url: str | None) -> storage.Client:
    """Build a client: anonymous against an emulator, default credentials otherwise."""

    endpoint = endpoint_url or os.environ.get(EMULATOR_ENV_VAR)
    if endpoint:
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                "endpoint_url",
                f"{endpoint!r} has no scheme",
                "http://127.0.0.1:4443",
            )
        return storage.Client(
            project=project or "osqueue-emulator",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint.rstrip("/")},
        )
    return storage.Client(project=project)


def _redacted(url: str | None) -> str | None:
    return None if url is None else redact_url(url)


class GCSBackend:
    """A ``StorageBackend`` on one GCS bucket; version tokens are object generations.

    Object names are ``prefix + key``. Tokens are ``StorageVersion("gcs", generation)``
    with the generation as a Python ``int``. GCS sends generations as int64 values in
    decimal strings; they may exceed 2**53, so they are never converted to float.

    ``read`` takes the bytes and the generation from one media download (the generation
    comes from its ``x-goog-generation`` response header), so they always belong together.

    Retry policy:

    - Reads are retried by google-cloud-storage with a ``Retry`` built here. It retries
      408, 429, 500, 502, 503, 504, connection errors and time-outs for at most
      ``read_retry_deadline`` seconds, and logs each retry with the key. A retried download
      pins the generation of its first response, so bytes and generation still match.
    - Conditional uploads (``write`` and ``create_if_not_exists``) are sent once with
      ``retry=None``. google-cloud-storage 3.x retries uploads by default, and 2.x did so
      whenever ``ifGenerationMatch`` was set. If the first attempt landed, the resend gets
      a 412, and a write that succeeded would look like a conflict. The caller retries
      instead, after reading back when the outcome is unknown.
    - Upload errors map as follows. 412: ``CASConflictError`` (``STALE_VERSION`` or
      ``MISSING`` for ``write``, ``EXISTS`` for create). 404 on ``write``:
      ``CASConflictError(MISSING)``. 429 and 503: ``StorageBackendError(retryable=True)``.
      No connection opened (refused, connect time-out): ``StorageBackendError``
      (retryable). Any other 5xx, a 408, a read time-out or a connection lost after
      sending: ``IndeterminateWriteError``. Other 4xx: ``StorageBackendError``.

    ``timeout`` is the per-request HTTP timeout in seconds. When ``client`` is None, an
    ``endpoint_url`` or the ``STORAGE_EMULATOR_HOST`` variable selects an emulator with an
    anonymous client; otherwise the client uses Application Default Credentials.
    ``aclose`` closes only a client the backend built itself.
    """

    name = "gcs"

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        client: storage.Client | None = None,
        project: str | None = None,
        endpoint_url: str | None = None,
        timeout: float = 60.0,
        read_retry_deadline: float = 120.0,
    ) -> None:
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise ConfigError("bucket", f"{bucket!r} is not a bucket name", "my-queue-bucket")
        if not isinstance(prefix, str):
            raise ConfigError("prefix", f"{prefix!r} is not a str", "queues/prod/")
        if len(prefix.encode("utf-8")) >= MAX_KEY_BYTES:
            raise ConfigError(
                "prefix",
                f"is {len(prefix.encode('utf-8'))} bytes of UTF-8, so no key fits in the "
                f"GCS object name limit of {MAX_KEY_BYTES} bytes",
                "q/",
            )
        if timeout <= 0 or read_retry_deadline <= 0:
            raise ConfigError(
                "timeout",
                f"timeout={timeout} and read_retry_deadline={read_retry_deadline} "
                "must both be positive seconds",
                "60.0",
            )

        self.bucket_name = bucket
        self.prefix = prefix
        self._timeout = timeout
        self._read_retry_deadline = read_retry_deadline
        self._owns_client = client is None
        self._warned_missing_generation = False
        # NOTE: all worker threads share this client and its requests session. requests
        # does not document Session as thread-safe, and the tests only run 8 concurrent writes.
        self._client = client if client is not None else _make_client(project, endpoint_url)
        self._bucket = self._client.bucket(bucket)
        logger.debug(
            "GCS backend ready: bucket=%s prefix=%r endpoint=%s",
            bucket,
            prefix,
            _redacted(getattr(self._client, "api_endpoint", None)),
        )

    def __repr__(self) -> str:
        return f"GCSBackend(bucket={self.bucket_name!r}, prefix={self.prefix!r})"

    # -- public operations -------------------------------------------------------------

    async def read(self, key: str) -> ReadResult | None:
        name = self._object_name(key)
        return await anyio.to_thread.run_sync(self._read_sync, key, name)

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion:
        name = self._object_name(key)
        validate_data(data)
        generation = self._expected_generation(expected)
        return await anyio.to_thread.run_sync(self._write_sync, key, name, data, generation)

    async def create_if_not_exists(self, key: str, data: bytes) -> StorageVersion:
        name = self._object_name(key)
        validate_data(data)
        # ifGenerationMatch=0 means "only if no live object exists". It is passed as 0
        # explicitly, never dropped as a false value.
        return await anyio.to_thread.run_sync(self._write_sync, key, name, data, 0)

    async def delete(self, key: str) -> None:
        """Remove the object unconditionally; a missing object is not an error."""

        name = self._object_name(key)
        await anyio.to_thread.run_sync(self._delete_sync, key, name)

    async def aclose(self) -> None:
        """Close the HTTP session of a client this backend built; a passed client stays open."""

        if self._owns_client:
            # Client.close exists in google-cloud-storage 3.17 (tested); where it is
            # missing, closing the client's requests session releases the same sockets.
            close = getattr(self._client, "close", None) or self._client._http.close
            await anyio.to_thread.run_sync(close)
            logger.debug("GCS backend closed: bucket=%s prefix=%r", self.bucket_name, self.prefix)

    # -- input checks --------------------------------------------------------------------

    def _object_name(self, key: str) -> str:
        validate_key(key)
        name = self.prefix + key
        size = len(name.encode("utf-8"))
        if size > MAX_KEY_BYTES:
            raise InvalidKeyError(
                f"object name {name[:40]!r}... (prefix {self.prefix!r} + key) is {size} bytes "
                f"of UTF-8, more than the GCS maximum of {MAX_KEY_BYTES}; use a shorter key "
                "or prefix"
            )
        if "\r" in name or "\n" in name:
            raise InvalidKeyError(
                f"object name {name!r} contains a carriage return or line feed, which GCS "
                "rejects; remove them from the key"
            )
        return name

    def _expected_generation(self, expected: StorageVersion) -> int:
        validate_version(expected, self.name)
        value = expected.value
        # bool is an int subclass but never a generation.
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidVersionError(
                f"version token {expected!r} does not hold a positive int generation; pass "
                "the token returned by read(), write() or create_if_not_exists()"
            )
        return value

    # -- blocking work, run in worker threads ----------------------------------------------

    def _read_sync(self, key: str, name: str) -> ReadResult | None:
        blob = self._bucket.blob(name)
        try:
            # raw_download returns the stored bytes without gunzipping them. The library
            # checks them against the x-goog-hash header when the server sends one.
            data = blob.download_as_bytes(
                raw_download=True, timeout=self._timeout, retry=self._read_retry(key)
            )
        except api_exceptions.NotFound:
            return None
        except Exception as error:  # noqa: BLE001 - mapped and re-raised below
            self._raise_read_error(key, error)

        generation = blob.generation
        if generation is None:
            return self._read_without_generation_header(key, name)
        return ReadResult(data, StorageVersion(self.name, generation))

    def _read_without_generation_header(self, key: str, name: str) -> ReadResult | None:
        """Read bytes and generation from a server whose downloads lack ``x-goog-generation``.

        GCS always sends the header; some emulators do not. The fallback reads the metadata,
        downloads that generation, and reads the metadata again. Because generations are
        unique per write, equal generations before and after prove the bytes belong to that
        generation; otherwise a writer came between and the read starts over.
        """

        if not self._warned_missing_generation:
            self._warned_missing_generation = True
            logger.warning(
                "server at %s sends no x-goog-generation header on downloads; reads of "
                "bucket %s take four requests each (the download, then metadata, a download "
                "of that generation and metadata again)",
                _redacted(self._client._connection.API_BASE_URL),
                self.bucket_name,
            )

        for attempt in range(1, _MAX_SNAPSHOT_ATTEMPTS + 1):
            before = self._metadata_generation(key, name)
            if before is None:
                return None
            blob = self._bucket.blob(name, generation=before)
            try:
                data = blob.download_as_bytes(
                    raw_download=True, timeout=self._timeout, retry=self._read_retry(key)
                )
            except api_exceptions.NotFound:
                data = None
            except Exception as error:  # noqa: BLE001 - mapped and re-raised below
                self._raise_read_error(key, error)
            if data is not None and self._metadata_generation(key, name) == before:
                return ReadResult(data, StorageVersion(self.name, before))
            logger.info("read of %r raced with a write (attempt %d); reading again", key, attempt)

        raise StorageBackendError(
            f"read of {key!r} could not get bytes and generation of one version in "
            f"{_MAX_SNAPSHOT_ATTEMPTS} attempts because writers kept replacing it; retry later",
            key=key,
            retryable=True,
        )

    def _metadata_generation(self, key: str, name: str) -> int | None:
        blob = self._bucket.blob(name)
        try:
            blob.reload(timeout=self._timeout, retry=self._read_retry(key))
        except api_exceptions.NotFound:
            return None
        except Exception as error:  # noqa: BLE001 - mapped and re-raised below
            self._raise_read_error(key, error)
        if blob.generation is None:
            raise StorageBackendError(
                f"metadata of {key!r} has no generation, so it has no version token; use a "
                "server that implements GCS object generations",
                key=key,
            )
        return int(blob.generation)

    def _write_sync(self, key: str, name: str, data: bytes, generation: int) -> StorageVersion:
        operation = "create" if generation == 0 else "write"
        blob = self._bucket.blob(name)
        try:
            blob.upload_from_string(
                data,
                content_type=_CONTENT_TYPE,
                if_generation_match=generation,
                timeout=self._timeout,
                retry=None,
            )
        except Exception as error:  # noqa: BLE001 - mapped and re-raised below
            self._raise_write_error(key, name, operation, generation, error)

        new_generation = blob.generation
        if new_generation is None:
            # The upload was applied but the response lacks the token.
            raise IndeterminateWriteError(key, "upload response has no generation")
        logger.debug("%s of %r stored generation %d", operation, key, new_generation)
        return StorageVersion(self.name, new_generation)

    def _delete_sync(self, key: str, name: str) -> None:
        try:
            self._bucket.blob(name).delete(timeout=self._timeout, retry=self._read_retry(key))
        except api_exceptions.NotFound:
            return
        except Exception as error:  # noqa: BLE001 - mapped and re-raised below
            self._raise_read_error(key, error, operation="delete")
        logger.debug("deleted %r", key)

    def _read_retry(self, key: str) -> Retry:
        def log_retry(error: Exception) -> None:
            logger.info("retrying request for %r after %s: %s", key, type(error).__name__, error)

        return Retry(
            predicate=_is_transient,
            initial=0.2,
            maximum=10.0,
            multiplier=2.0,
            timeout=self._read_retry_deadline,
            on_error=log_retry,
        )

    # -- error mapping -------------------------------------------------------------------

    def _raise_read_error(
        self, key: str, error: BaseException, operation: str = "read"
    ) -> NoReturn:
        status = (
            getattr(error, "code", None)
            if isinstance(error, api_exceptions.GoogleAPICallError)
            else None
        )
        if not isinstance(error, _REQUEST_ERRORS):
            raise error
        retryable = _is_transient(error) or isinstance(error, api_exceptions.RetryError)
        detail = redact_text(str(error))
        # INFO, not WARNING: the caller receives the error and decides whether to report it.
        logger.info("%s of %r failed: %s: %s", operation, key, type(error).__name__, detail)
        raise StorageBackendError(
            f"{operation} of {self.prefix + key!r} in bucket {self.bucket_name!r} failed: "
            f"{type(error).__name__}: {detail}",
            key=key,
            retryable=retryable,
            status=status if isinstance(status, int) else None,
        ) from error

    def _raise_write_error(
        self, key: str, name: str, operation: str, generation: int, error: BaseException
    ) -> NoReturn:
        if isinstance(error, api_exceptions.GoogleAPICallError):
            self._raise_write_status(key, name, operation, generation, error)

        if _connection_not_opened(error):
            detail = redact_text(str(error))
            logger.info("%s of %r not sent, no connection: %s", operation, key, detail)
            raise StorageBackendError(
                f"{operation} of {name!r} in bucket {self.bucket_name!r} was not sent because "
                f"no connection could be opened: {detail}; retry later",
                key=key,
                retryable=True,
            ) from error

        if isinstance(error, auth_exceptions.TransportError | auth_exceptions.RefreshError):
            # Credentials are refreshed before the upload request is sent.
            logger.info("%s of %r not sent, credential refresh failed", operation, key)
            raise StorageBackendError(
                f"{operation} of {name!r} was not sent because fetching credentials failed: "
                f"{type(error).__name__}",
                key=key,
                retryable=isinstance(error, auth_exceptions.TransportError),
            ) from error

        if _is_transient(error):
            detail = redact_text(str(error))
            logger.warning("%s of %r has an unknown outcome: %s", operation, key, detail)
            raise IndeterminateWriteError(key, f"{type(error).__name__}: {detail}") from error

        raise error

    def _raise_write_status(
        self,
        key: str,
        name: str,
        operation: str,
        generation: int,
        error: api_exceptions.GoogleAPICallError,
    ) -> NoReturn:
        status = error.code
        if status == 412 and operation == "create":
            logger.debug("create of %r rejected: object exists", key)
            raise CASConflictError(key, ConflictReason.EXISTS, "412 ifGenerationMatch=0") from error
        if status == 412:
            reason, detail = self._classify_stale(key, name, generation)
            logger.debug("write of %r rejected: %s", key, detail)
            raise CASConflictError(key, reason, detail) from error
        if status == 404 and operation == "write":
            logger.debug("write of %r rejected: object not found", key)
            raise CASConflictError(key, ConflictReason.MISSING, "404") from error

        if isinstance(status, int) and status in _NOT_APPLIED_STATUS:
            logger.warning(
                "%s of %r failed with HTTP %d and was not applied", operation, key, status
            )
            raise StorageBackendError(
                f"{operation} of {key!r} was rejected with {status} and not applied; retry "
                "after a back-off",
                key=key,
                retryable=True,
                status=status,
            ) from error
        if isinstance(status, int) and (status >= 500 or status == 408):
            logger.warning("%s of %r failed with HTTP %d, outcome unknown", operation, key, status)
            raise IndeterminateWriteError(key, f"HTTP {status}: {error.message}") from error

        logger.info("%s of %r failed with %s: %s", operation, key, status, error.message)
        hint = "check that the bucket exists" if status == 404 else "check bucket and permissions"
        raise StorageBackendError(
            f"{operation} of {name!r} in bucket {self.bucket_name!r} failed with HTTP {status}: "
            f"{error.message}; {hint}",
            key=key,
            retryable=False,
            status=status if isinstance(status, int) else None,
        ) from error

    def _classify_stale(self, key: str, name: str, generation: int) -> tuple[ConflictReason, str]:
        """Tell a missing object from a stale generation after a 412 on ``write``.

        GCS returns 412 in both cases, so this sends one metadata request. The reason is
        advice for the caller: any conflict means the write was not applied, and the object
        may change again before the caller acts.
        """

        try:
            current = self._bucket.get_blob(
                name, timeout=self._timeout, retry=self._read_retry(key)
            )
        except Exception as lookup_error:  # noqa: BLE001 - the conflict stands either way
            logger.info("lookup of %r after a 412 failed: %s", key, lookup_error)
            return ConflictReason.STALE_VERSION, f"412, expected generation {generation}"
        if current is None:
            return ConflictReason.MISSING, f"412, no live object, expected generation {generation}"
        return (
            ConflictReason.STALE_VERSION,
            f"412, expected generation {generation}, current {current.generation}",
        )
