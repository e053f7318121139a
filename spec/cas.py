"""Executable model of a compare-and-swap object store.

The model is pure and deterministic: every operation takes a ``StoreState`` and returns a
new one together with the result, and nothing here performs I/O or reads a clock. It is the
source of truth that the conformance suite, the simulator and the linearizability checker
compare real backends against.

Keys name objects; each object holds bytes and a version token. Three operations exist:

``read(key)``
    returns the object's bytes and token, or ``ABSENT``.
``write(key, data, expected)``
    replaces the bytes only if the object exists and its token equals ``expected``;
    otherwise returns ``Conflict``. A write never creates an object.
``create_if_not_exists(key, data)``
    stores the object only if the key is absent; otherwise returns ``Conflict``.

Version-token policies
----------------------

``TokenPolicy.UNIQUE``
    Every successful write mints a token never used before for that key (a counter in the
    memory backend, the generation number in GCS). A token identifies one write, so a
    history in which two successful writes of one key present the same expected token is
    never allowed (that would be a lost update).

``TokenPolicy.CONTENT_HASH``
    The token is a hash of the bytes (the ETag of a single-part S3 upload is the MD5 of the
    body). Identical bytes give identical tokens, so after A -> B -> A a writer still
    holding A's token succeeds (the ABA problem). Histories under this policy may show two
    successful writes with the same expected token, but only when the bytes with that token
    were stored again in between. Writers that need to rule out ABA must make their bytes
    unique, as ``queue.json`` does with its commit sequence number.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final


class TokenPolicy(enum.Enum):
    """How a store mints version tokens. See the module docstring."""

    UNIQUE = "unique"
    CONTENT_HASH = "content-hash"


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()
"""The result of reading a key that holds no object."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    """The bytes of one object and its current version token."""

    data: bytes
    token: str


@dataclass(frozen=True, slots=True)
class Written:
    """A conditional write or create that took effect, with the token it minted."""

    token: str


class ConflictKind(enum.Enum):
    """Why the model rejected a conditional write."""

    STALE = "stale"
    MISSING = "missing"
    EXISTS = "exists"


@dataclass(frozen=True, slots=True)
class Conflict:
    """A conditional write or create that did not take effect."""

    kind: ConflictKind


WriteResult = Written | Conflict


@dataclass(frozen=True, slots=True)
class StoreState:
    """An immutable snapshot of the whole store.

    ``writes`` counts successful writes and creates; the unique-token policy mints tokens
    from it, so tokens never repeat across keys either.
    """

    objects: Mapping[str, StoredObject] = field(default_factory=lambda: MappingProxyType({}))
    writes: int = 0

    def get(self, key: str) -> StoredObject | None:
        return self.objects.get(key)

    def with_object(self, key: str, stored: StoredObject) -> StoreState:
        objects = dict(self.objects)
        objects[key] = stored
        return StoreState(MappingProxyType(objects), self.writes + 1)


def content_token(data: bytes) -> str:
    """Return the content-hash token of ``data``: the hex MD5, as in a single-part S3 ETag."""

    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class ObjectStoreSpec:
    """The CAS object store under one token policy."""

    policy: TokenPolicy = TokenPolicy.UNIQUE

    def initial(self) -> StoreState:
        return StoreState()

    def mint(self, state: StoreState, data: bytes) -> str:
        """Return the token a successful write of ``data`` in ``state`` receives."""

        if self.policy is TokenPolicy.CONTENT_HASH:
            return content_token(data)
        return f"v{state.writes + 1}"

    def read(self, state: StoreState, key: str) -> StoredObject | _Absent:
        stored = state.get(key)
        return ABSENT if stored is None else stored

    def write(
        self, state: StoreState, key: str, data: bytes, expected: str
    ) -> tuple[StoreState, WriteResult]:
        current = state.get(key)
        if current is None:
            return state, Conflict(ConflictKind.MISSING)
        if current.token != expected:
            return state, Conflict(ConflictKind.STALE)
        return self._store(state, key, data)

    def create_if_not_exists(
        self, state: StoreState, key: str, data: bytes
    ) -> tuple[StoreState, WriteResult]:
        if state.get(key) is not None:
            return state, Conflict(ConflictKind.EXISTS)
        return self._store(state, key, data)

    def _store(self, state: StoreState, key: str, data: bytes) -> tuple[StoreState, Written]:
        token = self.mint(state, data)
        return state.with_object(key, StoredObject(data, token)), Written(token)
