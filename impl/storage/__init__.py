"""Object-store backends with compare-and-swap writes.

``MemoryBackend`` and ``ThrottledStorageBackend`` need nothing beyond osqueue itself.
``S3Backend`` needs the ``s3`` extra (boto3) and ``GCSBackend`` the ``gcs`` extra
(google-cloud-storage); they are imported on first use so a missing SDK only matters to
those who ask for that backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from osqueue.storage.base import (
    MAX_KEY_BYTES,
    ReadResult,
    StorageBackend,
    StorageVersion,
    SupportsDelete,
    validate_data,
    validate_key,
    validate_version,
)
from osqueue.storage.config import from_env
from osqueue.storage.memory import MemoryBackend
from osqueue.storage.throttled import ThrottledStorageBackend, ThrottleStats

if TYPE_CHECKING:
    from osqueue.storage.gcs import GCSBackend
    from osqueue.storage.s3 import S3Backend

__all__ = [
    "MAX_KEY_BYTES",
    "GCSBackend",
    "MemoryBackend",
    "ReadResult",
    "S3Backend",
    "StorageBackend",
    "StorageVersion",
    "SupportsDelete",
    "ThrottleStats",
    "ThrottledStorageBackend",
    "from_env",
    "validate_data",
    "validate_key",
    "validate_version",
]


def __getattr__(name: str) -> Any:
    if name == "S3Backend":
        from osqueue.storage.s3 import S3Backend

        return S3Backend
    if name == "GCSBackend":
        from osqueue.storage.gcs import GCSBackend

        return GCSBackend
    raise AttributeError(f"module 'osqueue.storage' has no attribute {name!r}")
