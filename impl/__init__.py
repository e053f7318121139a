"""osqueue: a job queue whose whole state is one JSON object changed only by compare-and-swap."""

from osqueue.election import ElectionError, LeaseHeldError, NotLeaderError
from osqueue.engine import (
    CommitFailedError,
    CommitIndeterminateError,
    EngineConfig,
    EngineOverloadedError,
    EngineStats,
    EngineStoppedError,
    GroupCommitEngine,
    StateMissingError,
    StateTooLargeError,
)
from osqueue.errors import (
    CASConflictError,
    ConfigError,
    ConflictReason,
    IndeterminateWriteError,
    OsqueueError,
    StorageBackendError,
    is_osqueue_error,
)
from osqueue.state import QueueState, StateDecodeError, decode_state, encode_state

__version__ = "0.1.0"

__all__ = [
    "CASConflictError",
    "CommitFailedError",
    "CommitIndeterminateError",
    "ConfigError",
    "ConflictReason",
    "ElectionError",
    "EngineConfig",
    "EngineOverloadedError",
    "EngineStats",
    "EngineStoppedError",
    "GroupCommitEngine",
    "IndeterminateWriteError",
    "LeaseHeldError",
    "NotLeaderError",
    "OsqueueError",
    "QueueState",
    "StateDecodeError",
    "StateMissingError",
    "StateTooLargeError",
    "StorageBackendError",
    "__version__",
    "decode_state",
    "encode_state",
    "is_osqueue_error",
]
