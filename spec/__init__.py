"""Executable models of osqueue's semantics, with no I/O: the source of truth for tests.

This package imports nothing from ``osqueue`` outside ``osqueue.spec``.
"""

from osqueue.spec.cas import (
    ABSENT,
    Conflict,
    ConflictKind,
    ObjectStoreSpec,
    StoredObject,
    StoreState,
    TokenPolicy,
    Written,
    content_token,
)
from osqueue.spec.history import (
    GUARANTEES,
    OpKind,
    Outcome,
    StoreOperation,
    Violation,
    check_history,
)

__all__ = [
    "ABSENT",
    "GUARANTEES",
    "Conflict",
    "ConflictKind",
    "ObjectStoreSpec",
    "OpKind",
    "Outcome",
    "StoreOperation",
    "StoreState",
    "StoredObject",
    "TokenPolicy",
    "Violation",
    "Written",
    "check_history",
    "content_token",
]
