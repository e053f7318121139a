"""The storage interface every backend implements.

A backend stores objects (bytes) under string keys and offers three operations:

- ``read(key)`` returns the bytes and the version token from *one* response, or None when
  the key does not exist.
- ``write(key, data, expected)`` replaces the object only if its current version token is
  ``expected`` (compare-and-swap), and returns the new token.
- ``create_if_not_exists(key, data)`` stores the object only if the key does not exist.

Outcomes of a conditional write:

- success: the new ``StorageVersion``;
- ``CASConflictError``: certainly not applied (stale token, missing key, existing key, or a
  409 "concurrent request" that may be retried as is);
- ``IndeterminateWriteError``: maybe applied; the caller must read back to find out;
- ``StorageBackendError``: certainly not applied (or a failed read).

Version tokens are opaque. Callers may compare two tokens of one backend for equality and
must send back exactly the token they received. Backends reject a token minted by another
kind of backend with ``InvalidVersionError`` before sending anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from osqueue.errors import InvalidDataError, InvalidKeyError, InvalidVersionError

MAX_KEY_BYTES = 1024
"""S3 and GCS both limit object names to 1024 bytes of UTF-8."""


@dataclass(frozen=True, slots=True)
class StorageVersion:
    """An opaque version token.

    ``backend`` names the kind of backend that minted it (``"memory"``, ``"s3"``, ``"gcs"``
    or a third-party name); ``value`` is the raw token exactly as the server returned it (an
    S3 ETag including its quotes, a GCS generation as an int).
    """

    backend: str
    value: str | int

    def __repr__(self) -> str:
        return f"StorageVersion({self.backend}:{self.value!r})"


@dataclass(frozen=True, slots=True)
class ReadResult:
    """The bytes of an object and the version token of those very bytes."""

    data: bytes
    version: StorageVersion


@runtime_checkable
class StorageBackend(Protocol):
    """An object store with conditional writes. See the module docstring for the contract.

    Implementations must be safe to call from many tasks at once. Cancellation of a pending
    ``write`` or ``create_if_not_exists`` leaves its outcome unknown, as for
    ``IndeterminateWriteError``.
    """

    name: str
    """The kind of backend; equals ``StorageVersion.backend`` of every token it mints."""

    async def read(self, key: str) -> ReadResult | None: ...

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion: ...

    async def create_if_not_exists(self, key: str, data: bytes) -> StorageVersion: ...


@runtime_checkable
class SupportsDelete(Protocol):
    """A backend that can remove an object unconditionally (used for clean-up only)."""

    async def delete(self, key: str) -> None: ...


def validate_key(key: object) -> str:
    """Return ``key`` if it is a usable object key, else raise ``InvalidKeyError``."""

    if not isinstance(key, str):
        raise InvalidKeyError(
            f"object key must be a str, got {type(key).__name__} {key!r}; pass the key as text"
        )
    if not key:
        raise InvalidKeyError("object key is empty; use a name such as 'queue.json'")
    size = len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(
            f"object key {key[:40]!r}... is {size} bytes of UTF-8, more than the maximum of "
            f"{MAX_KEY_BYTES}; use a shorter key or prefix"
        )
    return key


def validate_data(data: object) -> bytes:
    """Return ``data`` if it is ``bytes``, else raise ``InvalidDataError``."""

    if not isinstance(data, bytes):
        if isinstance(data, bytearray | memoryview):
            fix = "convert it first, for example bytes(value)"
        else:
            fix = "encode text first, for example value.encode('utf-8')"
        raise InvalidDataError(f"object data must be bytes, got {type(data).__name__}; {fix}")
    return data


def validate_version(version: object, backend: str) -> StorageVersion:
    """Return ``version`` if ``backend`` minted it, else raise ``InvalidVersionError``."""

    if not isinstance(version, StorageVersion):
        raise InvalidVersionError(
            f"expected version must be a StorageVersion returned by read() or write(), "
            f"got {type(version).__name__} {version!r}"
        )
    if version.backend != backend:
        raise InvalidVersionError(
            f"version token {version!r} was minted by the {version.backend!r} backend and "
            f"cannot be used with the {backend!r} backend; read the object from this "
            "backend first"
        )
    return version
