"""Sequential models the checker tests histories against: a CAS register and a key-value store.

Inputs and outputs are plain tuples and values so that ``step`` stays cheap; the parsers in
``osqueue.checker.parsers`` build them. The CAS object store model lives in
``osqueue.checker.store``.

CAS register (state: the value, None before the first write)
    inputs ``("read",)``, ``("write", value)``, ``("cas", expected, new)``. A read outputs
    the value read. A write outputs True (applied) or False (certainly not applied). A cas
    outputs True (swapped) or False (the compare did not match at its linearization point).

Key-value store (state: a sorted tuple of (key, value) pairs; a missing key reads "")
    inputs ``("get", key)``, ``("put", key, value)``, ``("append", key, value)``. A get
    outputs the string read; a put or append outputs True or False as a write does.

Any output may be ``UNKNOWN``: then every result is accepted, and a cas or write of unknown
outcome takes effect whenever its precondition holds (leaving it out is the search's job).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from osqueue.checker.types import UNKNOWN, Model, Operation


def partition_by_key(operations: Sequence[Operation]) -> list[list[Operation]]:
    """Split a history into one part per key, the key being ``input[1]``, in key order."""

    parts: dict[Any, list[Operation]] = {}
    for op in operations:
        parts.setdefault(op.input[1], []).append(op)
    return [parts[key] for key in sorted(parts, key=repr)]


def describe_key_part(first: Operation) -> str:
    """Name the part of a history split by ``partition_by_key`` that ``first`` belongs to."""

    return f"key {first.input[1]!r}"


def _register_step(state: Any, input: tuple, output: Any) -> tuple[bool, Any]:
    kind = input[0]
    if kind == "read":
        return (output is UNKNOWN or output == state), state
    if kind == "cas":
        if output is True:
            return state == input[1], input[2]
        if output is False:
            return state != input[1], state
        return True, (input[2] if state == input[1] else state)
    if kind == "write":
        if output is False:
            return True, state
        return True, input[1]
    raise ValueError(f"unknown register operation {input!r}; expected read, write or cas")


def _format_value(value: Any) -> str:
    return "nil" if value is None else str(value)


def _write_suffix(output: Any) -> str:
    if output is UNKNOWN:
        return " ?"
    if output is False:
        return " failed"
    return ""


def _describe_register(input: tuple, output: Any) -> str:
    kind = input[0]
    if kind == "read":
        return f"read() -> {'?' if output is UNKNOWN else _format_value(output)}"
    if kind == "write":
        return f"write({_format_value(input[1])}){_write_suffix(output)}"
    if output is UNKNOWN:
        result = "?"
    else:
        result = "ok" if output else "failed"
    return f"cas({_format_value(input[1])}, {_format_value(input[2])}) -> {result}"


def cas_register_model() -> Model:
    """Return the model of one register with read, write and compare-and-set."""

    return Model(
        name="cas-register",
        init=lambda: None,
        step=_register_step,
        describe_operation=_describe_register,
        describe_state=_format_value,
    )


def _kv_get(state: tuple, key: Any) -> str:
    for item_key, value in state:
        if item_key == key:
            return value
    return ""


def _kv_set(state: tuple, key: Any, value: str) -> tuple:
    # An empty string reads the same as a missing key, so it is stored as missing: equal
    # observations then give equal states, which the memo can merge.
    if not state or (len(state) == 1 and state[0][0] == key):
        return ((key, value),) if value else ()
    items = [item for item in state if item[0] != key]
    if value:
        items.append((key, value))
        items.sort(key=repr)
    return tuple(items)


def _kv_step(state: tuple, input: tuple, output: Any) -> tuple[bool, tuple]:
    kind = input[0]
    if kind == "get":
        return (output is UNKNOWN or output == _kv_get(state, input[1])), state
    if output is False:
        return True, state
    if kind == "put":
        return True, _kv_set(state, input[1], input[2])
    if kind == "append":
        return True, _kv_set(state, input[1], _kv_get(state, input[1]) + input[2])
    raise ValueError(f"unknown key-value operation {input!r}; expected get, put or append")


def _describe_kv(input: tuple, output: Any) -> str:
    kind, key = input[0], input[1]
    if kind == "get":
        return f"get({key!r}) -> {'?' if output is UNKNOWN else repr(output)}"
    return f"{kind}({key!r}, {input[2]!r}){_write_suffix(output)}"


def _describe_kv_state(state: tuple) -> str:
    return "{" + ", ".join(f"{key!r}: {value!r}" for key, value in state) + "}"


def kv_model() -> Model:
    """Return the model of a string key-value store with get, put and append, split by key."""

    return Model(
        name="kv",
        init=tuple,
        step=_kv_step,
        partition=partition_by_key,
        describe_part=describe_key_part,
        describe_operation=_describe_kv,
        describe_state=_describe_kv_state,
    )
