"""Histories of object-store operations and the guarantees they must show.

A history is a list of ``StoreOperation`` records, each an invocation with its completion as
the client observed it. An operation whose completion was never observed (time-out, reset
connection, dropped response, a 5xx after the request was sent, a 412 on a retry the SDK
made by itself) has outcome ``INDETERMINATE``: it may have taken effect at any time after
its invocation, or never.

The predicates below are the guarantees the storage documentation promises, each stated
over a recorded history and each sound for both token policies (they never report a
violation that a correct store could produce). They explain failures by name; the complete
verdict is linearizability against ``ObjectStoreSpec``, which the checker decides.

``read-your-writes``
    After a client's write or create succeeded, that client's later reads of the key return
    the token it wrote or a token written after it.
``atomic-cas``
    A write succeeds only if the key held the expected token: a successful write never
    presents a token the key was never seen to hold, nor one that a completed successful
    write had already replaced (unless, under content hashes, the same bytes came back).
``conflict-detection``
    A conflict is reported only when the precondition really failed: a write that presents
    a token the key still holds, with no other write of that token in flight, must succeed.
``no-lost-update``
    Two successful writes never replace the same version: under unique tokens at most one
    successful write presents each expected token; under content hashes at most as many as
    there were times the key came to hold that token.
"""

from __future__ import annotations

import base64
import enum
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from osqueue.spec.cas import TokenPolicy, content_token

GUARANTEES = ("read-your-writes", "atomic-cas", "conflict-detection", "no-lost-update")


class OpKind(enum.Enum):
    READ = "read"
    WRITE = "write"
    CREATE = "create"


class Outcome(enum.Enum):
    """What the client observed when the operation completed."""

    OK = "ok"
    ABSENT = "absent"
    """A read found no object."""
    CONFLICT = "conflict"
    """A conditional write or create was rejected: certainly not applied."""
    FAILED = "failed"
    """The request certainly did not take effect: a 503 on a read, a request rejected before
    it was sent, or S3's 409 ConditionalRequestConflict. A 409 is recorded here and not as
    ``CONFLICT``, because it carries no information about the key's version."""
    INDETERMINATE = "indeterminate"
    """The client never learned the outcome."""


@dataclass(frozen=True, slots=True)
class StoreOperation:
    """One operation in a history.

    Times are seconds on one clock (virtual time in the simulator). ``completed_at`` is None
    when the completion was never observed. ``token`` is the token returned by a successful
    operation: the token read, or the token a write or create minted.
    """

    op_id: int
    client: str
    kind: OpKind
    key: str
    invoked_at: float
    completed_at: float | None
    outcome: Outcome
    data: bytes | None = None
    """Bytes written by a write or create, or bytes returned by a successful read."""
    expected: str | None = None
    token: str | None = None

    @property
    def may_have_written(self) -> bool:
        return self.kind is not OpKind.READ and self.outcome in (Outcome.OK, Outcome.INDETERMINATE)

    def completed_before(self, other: StoreOperation) -> bool:
        """True when this operation completed before ``other`` was invoked (real-time order)."""

        return self.completed_at is not None and self.completed_at < other.invoked_at

    def to_record(self) -> dict[str, Any]:
        """Return a JSON-ready dict; bytes are base64 so every value round-trips exactly."""

        record: dict[str, Any] = {
            "id": self.op_id,
            "client": self.client,
            "op": self.kind.value,
            "key": self.key,
            "invoke": self.invoked_at,
            "complete": self.completed_at,
            "outcome": self.outcome.value,
        }
        if self.data is not None:
            record["data_b64"] = base64.b64encode(self.data).decode("ascii")
        if self.expected is not None:
            record["expected"] = self.expected
        if self.token is not None:
            record["token"] = self.token
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> StoreOperation:
        data = record.get("data_b64")
        return cls(
            op_id=int(record["id"]),
            client=str(record["client"]),
            kind=OpKind(record["op"]),
            key=str(record["key"]),
            invoked_at=float(record["invoke"]),
            completed_at=None if record.get("complete") is None else float(record["complete"]),
            outcome=Outcome(record["outcome"]),
            data=None if data is None else base64.b64decode(data),
            expected=record.get("expected"),
            token=record.get("token"),
        )


@dataclass(frozen=True, slots=True)
class Violation:
    """A guarantee that a history breaks, with the operations that show it."""

    guarantee: str
    message: str
    op_ids: tuple[int, ...] = field(default=())


def check_history(
    history: Sequence[StoreOperation], policy: TokenPolicy
) -> list[Violation]:
    """Return every violation of the four guarantees in ``history``, in a stable order."""

    violations: list[Violation] = []
    violations += check_read_your_writes(history, policy)
    violations += check_atomic_cas(history, policy)
    violations += check_conflict_detection(history, policy)
    violations += check_no_lost_update(history, policy)
    return violations


def _by_key(history: Iterable[StoreOperation]) -> dict[str, list[StoreOperation]]:
    groups: dict[str, list[StoreOperation]] = defaultdict(list)
    for op in history:
        groups[op.key].append(op)
    return groups


def _produced_token(op: StoreOperation, policy: TokenPolicy) -> str | None:
    """Return the token ``op`` gave the key if it wrote and the token is known."""

    if not op.may_have_written:
        return None
    if op.outcome is Outcome.OK:
        return op.token
    if policy is TokenPolicy.CONTENT_HASH and op.data is not None:
        return content_token(op.data)
    return None


def check_read_your_writes(
    history: Sequence[StoreOperation], policy: TokenPolicy
) -> list[Violation]:
    violations: list[Violation] = []
    for key, ops in sorted(_by_key(history).items()):
        successors = _successor_tokens(ops, policy)
        for write in ops:
            if not (write.may_have_written and write.outcome is Outcome.OK and write.token):
                continue
            allowed = _reachable(write.token, successors)
            for read in ops:
                if read.kind is not OpKind.READ or read.client != write.client:
                    continue
                if not write.completed_before(read):
                    continue
                if read.outcome is Outcome.ABSENT:
                    violations.append(Violation(
                        "read-your-writes",
                        f"client {read.client} wrote {key!r} (token {write.token}) and then "
                        "read it as absent",
                        (write.op_id, read.op_id),
                    ))
                elif read.outcome is Outcome.OK and read.token not in allowed and None not in allowed:
                    producer = _producer_of(ops, read.token, policy)
                    violations.append(Violation(
                        "read-your-writes",
                        f"client {read.client} wrote {key!r} (token {write.token}) and then "
                        f"read token {read.token}, which does not follow from token "
                        f"{write.token} through any chain of writes that each presented the "
                        "previous token"
                        + ("" if producer is None else f" (op {producer.op_id} produced it)"),
                        _op_ids(write, producer, read),
                    ))
    return violations


def _producer_of(
    ops: Sequence[StoreOperation], token: str | None, policy: TokenPolicy
) -> StoreOperation | None:
    """Return the first operation that gave the key ``token``, or None if none is known."""

    if token is None:
        return None
    for op in ops:
        if op.kind in (OpKind.WRITE, OpKind.CREATE) and _produced_token(op, policy) == token:
            return op
    return None


def _op_ids(*ops: StoreOperation | None) -> tuple[int, ...]:
    """Return the ids of ``ops`` in ascending (history) order, without None and repeats."""

    return tuple(sorted({op.op_id for op in ops if op is not None}))


def _successor_tokens(
    ops: Sequence[StoreOperation], policy: TokenPolicy
) -> dict[str, set[str | None]]:
    """Map each token to the tokens that writes presenting it produced (None: unknown)."""

    successors: dict[str, set[str | None]] = defaultdict(set)
    for op in ops:
        if op.kind is OpKind.WRITE and op.may_have_written and op.expected is not None:
            successors[op.expected].add(_produced_token(op, policy))
    return successors


def _reachable(start: str, successors: dict[str, set[str | None]]) -> set[str | None]:
    seen: set[str | None] = {start}
    frontier = [start]
    while frontier:
        token = frontier.pop()
        for following in successors.get(token, ()):
            if following not in seen:
                seen.add(following)
                if following is not None:
                    frontier.append(following)
    return seen


def check_atomic_cas(
    history: Sequence[StoreOperation], policy: TokenPolicy
) -> list[Violation]:
    violations: list[Violation] = []
    for key, ops in sorted(_by_key(history).items()):
        observed = _observations(ops, policy)
        writers = [op for op in ops if op.may_have_written]
        for op in ops:
            if op.outcome is not Outcome.OK:
                continue
            if op.kind is OpKind.WRITE:
                violations += _check_successful_write(key, op, observed, writers, policy)
            elif op.kind is OpKind.CREATE:
                violations += _check_successful_create(key, op, writers)
    return violations


def _observations(
    ops: Sequence[StoreOperation], policy: TokenPolicy
) -> dict[str | None, list[StoreOperation]]:
    """Map each token to the operations that showed the key holding it or gave it to it."""

    observed: dict[str | None, list[StoreOperation]] = defaultdict(list)
    for op in ops:
        if op.kind is OpKind.READ and op.outcome is Outcome.OK:
            observed[op.token].append(op)
        elif op.may_have_written:
            observed[_produced_token(op, policy)].append(op)
    return observed


def _check_successful_write(
    key: str,
    write: StoreOperation,
    observed: dict[str | None, list[StoreOperation]],
    writers: Sequence[StoreOperation],
    policy: TokenPolicy,
) -> list[Violation]:
    sources = [
        op for op in observed.get(write.expected, ())
        if op is not write and not write.completed_before(op)
    ]
    unknown_writes = [op for op in observed.get(None, ()) if not write.completed_before(op)]
    if not sources and not unknown_writes:
        return [Violation(
            "atomic-cas",
            f"write to {key!r} succeeded with expected token {write.expected}, which the key "
            "was never seen to hold",
            (write.op_id,),
        )]

    for replacer in writers:
        if replacer is write or replacer.kind is not OpKind.WRITE:
            continue
        if replacer.outcome is not Outcome.OK or replacer.expected != write.expected:
            continue
        if not replacer.completed_before(write):
            continue
        if policy is TokenPolicy.CONTENT_HASH and replacer.token == write.expected:
            # The replacer stored the same bytes again, so the key still has that token.
            continue
        if policy is TokenPolicy.CONTENT_HASH and _token_restored(
            write.expected, replacer, write, observed
        ):
            continue
        return [Violation(
            "atomic-cas",
            f"write to {key!r} succeeded with expected token {write.expected}, but write "
            f"{replacer.op_id} had already replaced that version before it was invoked",
            (replacer.op_id, write.op_id),
        )]
    return []


def _token_restored(
    token: str | None,
    replacer: StoreOperation,
    write: StoreOperation,
    observed: dict[str | None, list[StoreOperation]],
) -> bool:
    """True when some write may have stored ``token`` again between ``replacer`` and ``write``."""

    for op in [*observed.get(token, ()), *observed.get(None, ())]:
        restored_in_between = (
            op.may_have_written
            and op is not replacer
            and not write.completed_before(op)
            and not op.completed_before(replacer)
        )
        if restored_in_between:
            return True
    return False


def _check_successful_create(
    key: str, create: StoreOperation, writers: Sequence[StoreOperation]
) -> list[Violation]:
    for other in writers:
        if other is create or other.outcome is not Outcome.OK:
            continue
        if other.completed_before(create):
            return [Violation(
                "atomic-cas",
                f"create of {key!r} succeeded although operation {other.op_id} had stored "
                "the object before it was invoked",
                (other.op_id, create.op_id),
            )]
    return []


def check_conflict_detection(
    history: Sequence[StoreOperation], policy: TokenPolicy
) -> list[Violation]:
    violations: list[Violation] = []
    for key, ops in sorted(_by_key(history).items()):
        for op in ops:
            if op.outcome is not Outcome.CONFLICT:
                continue
            if op.kind is OpKind.WRITE and not _write_conflict_justified(op, ops, policy):
                violations.append(Violation(
                    "conflict-detection",
                    f"write to {key!r} with expected token {op.expected} was rejected as a "
                    "conflict, but the key held that token and no other write replaced it",
                    (op.op_id,),
                ))
            if op.kind is OpKind.CREATE and not _create_conflict_justified(op, ops):
                violations.append(Violation(
                    "conflict-detection",
                    f"create of {key!r} was rejected as a conflict, but no operation had "
                    "stored the object",
                    (op.op_id,),
                ))
    return violations


def _write_conflict_justified(
    write: StoreOperation, ops: Sequence[StoreOperation], policy: TokenPolicy
) -> bool:
    """A conflict is justified unless the key provably held the expected token throughout.

    Only a write presenting token T can move the key away from T, because the store has no
    unconditional writes. So if T was observed before the write was invoked and no other
    write presenting T may have taken effect before the write completed, the key held T.
    """

    held_before = any(
        op is not write
        and op.completed_before(write)
        and (
            (op.kind is OpKind.READ and op.outcome is Outcome.OK and op.token == write.expected)
            or (op.may_have_written and _produced_token(op, policy) == write.expected)
        )
        for op in ops
    )
    if not held_before:
        return True

    return any(
        op is not write
        and op.kind is OpKind.WRITE
        and op.may_have_written
        and op.expected == write.expected
        and not write.completed_before(op)
        for op in ops
    )


def _create_conflict_justified(create: StoreOperation, ops: Sequence[StoreOperation]) -> bool:
    return any(
        op is not create
        and (op.may_have_written or (op.kind is OpKind.READ and op.outcome is Outcome.OK))
        and not create.completed_before(op)
        for op in ops
    )


def check_no_lost_update(
    history: Sequence[StoreOperation], policy: TokenPolicy
) -> list[Violation]:
    violations: list[Violation] = []
    for key, ops in sorted(_by_key(history).items()):
        winners: dict[str, list[StoreOperation]] = defaultdict(list)
        for op in ops:
            if op.kind is OpKind.WRITE and op.outcome is Outcome.OK and op.expected is not None:
                winners[op.expected].append(op)

        for expected, writes in sorted(winners.items()):
            allowed = 1
            if policy is TokenPolicy.CONTENT_HASH:
                allowed = sum(
                    1 for op in ops if op.may_have_written and _produced_token(op, policy) == expected
                )
            if len(writes) > max(allowed, 1):
                ids = tuple(op.op_id for op in writes)
                violations.append(Violation(
                    "no-lost-update",
                    f"{len(writes)} successful writes to {key!r} replaced the version with "
                    f"token {expected}, which the key held at most {max(allowed, 1)} time(s)",
                    ids,
                ))
    return violations
