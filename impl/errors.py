"""Errors raised by osqueue.

Every error carries a stable ``tag`` (a short string that never changes between releases),
so services can send it over the wire and clients can match on it without importing the
class. ``is_osqueue_error`` recognises any of them.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar


class OsqueueError(Exception):
    """Base class of every error osqueue raises on purpose."""

    tag: ClassVar[str] = "OsqueueError"


def is_osqueue_error(value: object) -> bool:
    """Return True when ``value`` is an exception raised by osqueue itself."""

    return isinstance(value, OsqueueError)


class ConflictReason(enum.Enum):
    """Why a conditional write did not happen.

    Every reason means the same for correctness: nothing was stored. They differ in what a
    caller should do next.
    """

    STALE_VERSION = "stale_version"
    """The object exists but its current version token is not the expected one (S3 412,
    GCS 412). Read again before retrying."""

    MISSING = "missing"
    """A write with an expected version found no object (S3 404 NoSuchKey on AWS and moto,
    412 on SeaweedFS and Ceph)."""

    EXISTS = "exists"
    """A create-if-not-exists found an object already there."""

    CONCURRENT_REQUEST = "concurrent_request"
    """The service rejected the request because another conditional write to the same key
    was in progress (S3 409 ConditionalRequestConflict). Not applied; the same request may be
    retried, and no other writer is known to have won."""


class CASConflictError(OsqueueError):
    """A compare-and-swap did not happen because its precondition did not hold.

    The write was *not* applied. ``reason`` gives the cause and ``key`` names the object.
    """

    tag: ClassVar[str] = "CASConflictError"

    def __init__(self, key: str, reason: ConflictReason, detail: str = "") -> None:
        self.key = key
        self.reason = reason
        self.detail = detail
        message = f"conditional write to {key!r} was not applied: {reason.value}"
        if detail:
            message = f"{message} ({detail})"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.reason, self.detail))

    @property
    def retry_same_request(self) -> bool:
        """True when the same request may be sent again without reading first (409)."""

        return self.reason is ConflictReason.CONCURRENT_REQUEST


class StorageBackendError(OsqueueError):
    """A storage request failed and was certainly not applied, or was a read.

    ``retryable`` is True for transient failures (5xx before the write was sent, 429, 503
    SlowDown, connection refused). ``status`` is the HTTP status where there was one.
    """

    tag: ClassVar[str] = "StorageBackendError"

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        retryable: bool = False,
        status: int | None = None,
    ) -> None:
        self.key = key
        self.retryable = retryable
        self.status = status
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments need a helper so the error survives pickling between
        # processes (sweeps run seeds in worker processes).
        return (
            _rebuild_storage_error,
            (type(self), str(self), self.key, self.retryable, self.status),
        )


def _rebuild_storage_error(
    cls: type[StorageBackendError], message: str, key: str | None, retryable: bool, status: int | None
) -> StorageBackendError:
    return cls(message, key=key, retryable=retryable, status=status)


class IndeterminateWriteError(OsqueueError):
    """A write was sent but its outcome is unknown: it may or may not have been applied.

    Raised for time-outs and reset connections after the request was sent, 5xx responses to a
    write, and a precondition failure on a retry that the SDK made on its own. The caller
    settles it by reading the object back (for ``queue.json``, by looking for its commit id).
    """

    tag: ClassVar[str] = "IndeterminateWriteError"

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        self.detail = detail
        super().__init__(f"outcome of the write to {key!r} is unknown: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.detail))


class ConfigError(OsqueueError, ValueError):
    """A configuration value is missing or invalid. The message names it and a valid example."""

    tag: ClassVar[str] = "ConfigError"

    def __init__(self, name: str, problem: str, example: str) -> None:
        self.name = name
        self.problem = problem
        self.example = example
        super().__init__(f"{name}: {problem}; for example {name}={example}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.problem, self.example))


class InvalidKeyError(OsqueueError, ValueError):
    """An object key is empty, too long or not a string."""

    tag: ClassVar[str] = "InvalidKeyError"


class InvalidDataError(OsqueueError, TypeError):
    """Object data is not ``bytes``."""

    tag: ClassVar[str] = "InvalidDataError"


class InvalidVersionError(OsqueueError, TypeError):
    """A version token is not a ``StorageVersion`` or came from another kind of backend."""

    tag: ClassVar[str] = "InvalidVersionError"


def error_to_dict(error: BaseException) -> dict[str, Any]:
    """Return the wire form ``{"_tag": ..., "message": ...}`` of an error."""

    tag = error.tag if isinstance(error, OsqueueError) else type(error).__name__
    return {"_tag": tag, "message": str(error)}
