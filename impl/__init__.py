"""osqueue: a job queue whose whole state is one JSON object changed only by compare-and-swap."""

from osqueue.errors import (
    CASConflictError,
    ConfigError,
    ConflictReason,
    IndeterminateWriteError,
    OsqueueError,
    StorageBackendError,
    is_osqueue_error,
)

__version__ = "0.1.0"

__all__ = [
    "CASConflictError",
    "ConfigError",
    "ConflictReason",
    "IndeterminateWriteError",
    "OsqueueError",
    "StorageBackendError",
    "__version__",
    "is_osqueue_error",
]
