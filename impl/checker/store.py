"""The CAS object store model (``osqueue.spec.cas.ObjectStoreSpec``) and its histories.

The model follows the rules of ``ObjectStoreSpec``: a write succeeds only when the key
exists and has the expected token, a create only when the key is absent, and a rejected
write or create changes nothing. It differs in one respect: tokens are taken from the
history, never minted, because real tokens are opaque.

Tokens of writes whose completion was never observed are unknown. Under
``TokenPolicy.CONTENT_HASH`` such a write's token is ``content_token(data)``, so histories
must record every token in that form (a quoted S3 ETag must be converted). Under
``TokenPolicy.UNIQUE`` it is a placeholder, and the first later operation that shows the
token binds it: a read of those bytes returns it, or a successful write presents it as the
expected token. A token that some successful write or create in the history returned can
never be bound to another write's placeholder, since unique tokens name one write each.

Operation encoding (built by ``operations_from_store_history``):

- inputs ``("read", key)``,
  ``("write", key, data, expected, expected_is_minted, number, content_token)`` and
  ``("create", key, data, number, content_token)``. ``number`` names the operation's
  placeholder token and ``content_token`` is its token under the content-hash policy.
- outputs ``("ok", data, token, token_is_minted)`` or ``("absent",)`` for a read, and
  ``("ok", token)`` or ``("conflict",)`` for a write or create; ``UNKNOWN`` when the
  completion was not observed.

The state is a sorted tuple of ``(key, (data, token))`` pairs of the keys that exist.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from osqueue.checker.models import describe_key_part, partition_by_key
from osqueue.checker.search import check_operations
from osqueue.checker.types import UNKNOWN, CheckResult, Model, Operation
from osqueue.spec.cas import TokenPolicy, content_token
from osqueue.spec.history import OpKind, Outcome, StoreOperation

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PendingToken:
    """The not yet known token of the write or create numbered ``operation``."""

    operation: Any

    def __repr__(self) -> str:
        return f"<token of op {self.operation}>"


def _lookup(state: tuple, key: str) -> tuple | None:
    for item_key, stored in state:
        if item_key == key:
            return stored
    return None


def _store(state: tuple, key: str, stored: tuple) -> tuple:
    items = [item for item in state if item[0] != key]
    items.append((key, stored))
    items.sort(key=lambda item: item[0])
    return tuple(items)


def _holds(stored: tuple, expected: str, expected_is_minted: bool) -> bool:
    """True when ``stored`` may hold token ``expected``; a pending token may be bound to it."""

    token = stored[1]
    if type(token) is PendingToken:
        return not expected_is_minted
    return token == expected


class _ObjectStoreSteps:
    """The ``step`` function of the object store model under one token policy."""

    def __init__(self, policy: TokenPolicy) -> None:
        self.policy = policy

    def unknown_token(self, number: Any, token_by_content: str) -> object:
        if self.policy is TokenPolicy.CONTENT_HASH:
            return token_by_content
        return PendingToken(number)

    def __call__(self, state: tuple, input: tuple, output: Any) -> tuple[bool, tuple]:
        kind = input[0]
        if kind == "read":
            return self._read(state, input, output)
        if kind == "write":
            return self._write(state, input, output)
        if kind == "create":
            return self._create(state, input, output)
        raise ValueError(
            f"unknown object store operation {input!r}; expected read, write or create"
        )

    def _read(self, state: tuple, input: tuple, output: Any) -> tuple[bool, tuple]:
        if output is UNKNOWN:
            return True, state
        stored = _lookup(state, input[1])
        if output[0] == "absent":
            return stored is None, state
        if stored is None:
            return False, state

        _, data, token, token_is_minted = output
        if data is not None and stored[0] != data:
            return False, state
        current = stored[1]
        if type(current) is PendingToken:
            if token_is_minted:
                return False, state
            return True, _store(state, input[1], (stored[0], token))
        return current == token, state

    def _write(self, state: tuple, input: tuple, output: Any) -> tuple[bool, tuple]:
        _, key, data, expected, expected_is_minted, number, token_by_content = input
        stored = _lookup(state, key)
        if output is UNKNOWN:
            if stored is not None and _holds(stored, expected, expected_is_minted):
                token = self.unknown_token(number, token_by_content)
                return True, _store(state, key, (data, token))
            return True, state
        if output[0] == "conflict":
            # A pending token may differ from ``expected``, so a conflict is possible then.
            if stored is None or type(stored[1]) is PendingToken:
                return True, state
            return stored[1] != expected, state
        if stored is None or not _holds(stored, expected, expected_is_minted):
            return False, state
        return True, _store(state, key, (data, output[1]))

    def _create(self, state: tuple, input: tuple, output: Any) -> tuple[bool, tuple]:
        _, key, data, number, token_by_content = input
        stored = _lookup(state, key)
        if output is UNKNOWN:
            if stored is None:
                token = self.unknown_token(number, token_by_content)
                return True, _store(state, key, (data, token))
            return True, state
        if output[0] == "conflict":
            return stored is not None, state
        if stored is not None:
            return False, state
        return True, _store(state, key, (data, output[1]))


def _short_bytes(data: bytes | None) -> str:
    if data is None:
        return "?"
    if len(data) <= 24:
        return repr(data)
    return f"{data[:20]!r}... ({len(data)} bytes)"


def _describe_store_operation(input: tuple, output: Any) -> str:
    kind, key = input[0], input[1]
    if kind == "read":
        call = f"read({key!r})"
    elif kind == "write":
        call = f"write({key!r}, {_short_bytes(input[2])}, expected={input[3]})"
    else:
        call = f"create({key!r}, {_short_bytes(input[2])})"

    if output is UNKNOWN:
        return f"{call} -> ?"
    if output[0] == "ok" and kind == "read":
        return f"{call} -> {_short_bytes(output[1])} token={output[2]}"
    if output[0] == "ok":
        return f"{call} -> ok token={output[1]}"
    return f"{call} -> {output[0]}"


def _describe_store_state(state: tuple) -> str:
    if not state:
        return "{}"
    return (
        "{"
        + ", ".join(
            f"{key!r}: {_short_bytes(stored[0])} token={stored[1]!r}" for key, stored in state
        )
        + "}"
    )


def object_store_model(policy: TokenPolicy | str = TokenPolicy.UNIQUE) -> Model:
    """Return the CAS object store model under ``policy``, split by key.

    ``policy`` is a ``TokenPolicy`` or its value (``"unique"`` or ``"content-hash"``).
    Histories for it come from ``operations_from_store_history``.
    """

    if not isinstance(policy, TokenPolicy):
        try:
            policy = TokenPolicy(policy)
        except ValueError:
            choices = ", ".join(item.value for item in TokenPolicy)
            raise ValueError(f"unknown token policy {policy!r}; use one of {choices}") from None
    return Model(
        name=f"object-store ({policy.value} tokens)",
        init=tuple,
        step=_ObjectStoreSteps(policy),
        partition=partition_by_key,
        describe_part=describe_key_part,
        describe_operation=_describe_store_operation,
        describe_state=_describe_store_state,
    )


def _minted_tokens(history: Iterable[StoreOperation]) -> set[str]:
    return {
        op.token
        for op in history
        if op.kind is not OpKind.READ and op.outcome is Outcome.OK and op.token is not None
    }


def _encode(op: StoreOperation, minted: set[str]) -> tuple[tuple, Any]:
    """Return the (input, output) pair of ``op``; see the module docstring."""

    indeterminate = op.outcome is Outcome.INDETERMINATE
    if op.kind is OpKind.READ:
        input: tuple = ("read", op.key)
        if indeterminate:
            return input, UNKNOWN
        if op.outcome is Outcome.ABSENT:
            return input, ("absent",)
        if op.outcome is not Outcome.OK or op.token is None:
            raise ValueError(
                f"read operation {op.op_id} has outcome {op.outcome.value!r} and token "
                f"{op.token!r}; a read must be ok with a 'token', absent, failed or indeterminate"
            )
        return input, ("ok", op.data, op.token, op.token in minted)

    if op.data is None:
        raise ValueError(
            f"{op.kind.value} operation {op.op_id} has no data; record the bytes it sent "
            "in 'data_b64'"
        )
    if op.kind is OpKind.WRITE:
        if op.expected is None:
            raise ValueError(
                f"write operation {op.op_id} has no expected token; record the token it "
                "presented in 'expected'"
            )
        input = (
            "write",
            op.key,
            op.data,
            op.expected,
            op.expected in minted,
            op.op_id,
            content_token(op.data),
        )
    else:
        input = ("create", op.key, op.data, op.op_id, content_token(op.data))

    if indeterminate:
        return input, UNKNOWN
    if op.outcome is Outcome.CONFLICT:
        return input, ("conflict",)
    if op.outcome is not Outcome.OK or op.token is None:
        raise ValueError(
            f"{op.kind.value} operation {op.op_id} has outcome {op.outcome.value!r} and token "
            f"{op.token!r}; a write or create must be ok with a 'token', conflict, failed or "
            "indeterminate"
        )
    return input, ("ok", op.token)


def validate_store_operation(op: StoreOperation) -> None:
    """Raise ValueError, naming the record field to fix, when ``op`` cannot be checked.

    Operations with outcome ``FAILED`` pass unchecked, because the checker leaves them out.
    """

    if op.outcome is Outcome.FAILED:
        return
    _encode(op, set())
    if op.outcome is not Outcome.INDETERMINATE and op.completed_at is None:
        raise ValueError(
            f"operation {op.op_id} has outcome {op.outcome.value!r} but no completion "
            "time; set 'complete' (completed_at) or mark the outcome indeterminate"
        )


def operations_from_store_history(history: Sequence[StoreOperation]) -> list[Operation]:
    """Convert object store operations to checker operations for ``object_store_model``.

    Operations with outcome ``FAILED`` are left out: they certainly took no effect and
    returned nothing, so they constrain nothing. An indeterminate operation gets no return
    time, even when ``completed_at`` is set. ``Operation.op_id`` keeps ``StoreOperation.op_id``.
    """

    minted = _minted_tokens(history)
    operations: list[Operation] = []
    skipped = 0
    for op in history:
        if op.outcome is Outcome.FAILED:
            skipped += 1
            continue
        validate_store_operation(op)
        input, output = _encode(op, minted)
        indeterminate = op.outcome is Outcome.INDETERMINATE
        operations.append(
            Operation(
                client_id=op.client,
                input=input,
                output=output,
                call=op.invoked_at,
                return_=None if indeterminate else op.completed_at,
                op_id=op.op_id,
            )
        )
    if skipped:
        logger.debug("left out %d failed operations of %d", skipped, len(history))
    return operations


def check_store_history(
    history: Sequence[StoreOperation],
    policy: TokenPolicy | str = TokenPolicy.UNIQUE,
    *,
    timeout: float | None = None,
    max_steps: int | None = None,
    max_states: int | None = None,
) -> CheckResult:
    """Check an object store history for linearizability against ``ObjectStoreSpec``.

    The budget arguments work as in ``check_operations``. Operation numbers in the result
    index ``operations_from_store_history(history)``, whose ``op_id`` is the
    ``StoreOperation.op_id``.
    """

    operations = operations_from_store_history(history)
    return check_operations(
        operations,
        object_store_model(policy),
        timeout=timeout,
        max_steps=max_steps,
        max_states=max_states,
    )
