"""Reader for osqueue JSON-lines histories (``--format jsonl``).

The first line may be a header naming the model and, for object-store histories, the token
policy. Every record must fit that model, or the model of the first record when there is
no header: a record that does not fit is an error, never skipped. The format is described
in docs/history-format.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Any

from osqueue.checker.store import operations_from_store_history, validate_store_operation
from osqueue.checker.types import (
    HISTORY_DOCS,
    MODELS,
    UNKNOWN,
    HistoryFormatError,
    Operation,
    ParsedHistory,
)
from osqueue.spec.cas import TokenPolicy
from osqueue.spec.history import OpKind, Outcome, StoreOperation

HEADER_FORMAT = "osqueue-history"
HEADER_VERSION = 1
"""The only version of the JSON-lines header this reader accepts."""
_STORE_FIELDS = ("id", "client", "op", "key", "invoke", "outcome")
_GENERIC_FIELDS = ("client", "f", "type", "call")
_REGISTER_FUNCTIONS = ("read", "write", "cas")
_KV_FUNCTIONS = ("get", "put", "append")
_MODEL_FIELDS = {
    "object-store": "id, client, op, key, invoke, complete and outcome, plus data_b64, "
    "expected and token where they apply",
    "cas-register": "client, f (read, write or cas), type, call and return, plus value or "
    "result where they apply",
    "kv": "client, f (get, put or append), key, type, call and return, plus value or result "
    "where they apply",
}


@dataclass(slots=True)
class _JsonlState:
    """Reader state: the model of the file, what set it, and the line of each operation id."""

    model: str | None = None
    model_origin: str = ""
    header_where: str = ""
    op_id_lines: dict[int, int] = field(default_factory=dict)


def parse_jsonl(lines: list[str], source: str) -> ParsedHistory:
    """Parse the lines of a JSON-lines history; ``source`` names it in error messages."""

    header: dict[str, Any] = {}
    state = _JsonlState()
    store_records: list[StoreOperation] = []
    operations: list[Operation] = []
    records = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        record = _json_object(line, where)

        if record.get("format") == HEADER_FORMAT:
            if header or records:
                raise HistoryFormatError(f"{where}: the header must be the first line")
            header = record
            state.header_where = where
            state.model = _header_model(record, where)
            state.model_origin = f"the header ({where})"
            continue

        records += 1
        _check_record_model(record, where, number, state)
        if state.model == "object-store":
            store_records.append(_store_record(record, where, number, state.op_id_lines))
        else:
            operations.append(_generic_record(record, where, state.model))

    model = state.model or "cas-register"
    policy = _header_policy(header, model, state.header_where, source)
    if model != "object-store":
        return ParsedHistory(operations, model, "jsonl", header=header, records=records)

    try:
        store_operations = operations_from_store_history(store_records)
    except ValueError as error:
        raise HistoryFormatError(f"{source}: {error}; see {HISTORY_DOCS}") from None
    return ParsedHistory(
        store_operations,
        "object-store",
        "jsonl",
        policy=policy,
        store_history=store_records,
        header=header,
        records=records,
    )


def _json_object(line: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise HistoryFormatError(
            f"{where}: invalid JSON ({error.msg}); each line must be one JSON object"
        ) from None
    if not isinstance(record, dict):
        raise HistoryFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _header_model(header: dict[str, Any], where: str) -> str | None:
    """Validate the header's version, model and policy; return its model, None when unset."""

    version = header.get("version", HEADER_VERSION)
    if type(version) is not int or version != HEADER_VERSION:
        raise HistoryFormatError(
            f"{where}: unsupported header version {version!r}; this checker reads version "
            f"{HEADER_VERSION} (see {HISTORY_DOCS})"
        )

    model = header.get("model")
    if model is not None and model not in MODELS:
        raise HistoryFormatError(
            f"{where}: unknown model {model!r} in the header; use one of {', '.join(MODELS)}"
        )

    policy = header.get("policy")
    if policy is not None and policy not in {item.value for item in TokenPolicy}:
        choices = ", ".join(item.value for item in TokenPolicy)
        raise HistoryFormatError(
            f"{where}: unknown token policy {policy!r} in the header; use one of {choices}"
        )
    return model


def _header_policy(
    header: dict[str, Any], model: str, header_where: str, source: str
) -> TokenPolicy | None:
    """Return the header's token policy (default unique) for an object-store history.

    A policy in the header of another model's history is an error: it would be ignored.
    """

    if header.get("policy") is None:
        return TokenPolicy.UNIQUE if model == "object-store" else None
    if model != "object-store":
        raise HistoryFormatError(
            f"{header_where or source}: the header sets policy {header['policy']!r}, but a "
            f"token policy applies only to object-store histories and this one is {model}; "
            "remove 'policy' from the header"
        )
    return TokenPolicy(header["policy"])


def _record_model(record: dict[str, Any], where: str, expected: str | None) -> str:
    """Return the model that ``record``'s fields are written for."""

    if "op" in record or "outcome" in record:
        return "object-store"
    if "f" not in record:
        if expected is not None:
            raise HistoryFormatError(
                f"{where}: the record does not fit model {expected}, which expects the fields "
                f"{_MODEL_FIELDS[expected]} (see {HISTORY_DOCS})"
            )
        raise HistoryFormatError(
            f"{where}: the record has neither 'op' (an object store record) nor 'f' (a "
            f"register or key-value record); see {HISTORY_DOCS}"
        )

    function = record["f"]
    if function in _REGISTER_FUNCTIONS:
        return "cas-register"
    if function in _KV_FUNCTIONS:
        return "kv"
    raise HistoryFormatError(
        f"{where}: unknown operation 'f': {function!r}; expected read, write or cas "
        f"(cas-register) or get, put or append (kv)"
    )


def _check_record_model(
    record: dict[str, Any], where: str, number: int, state: _JsonlState
) -> None:
    """Fix the model with the first record, and reject records that do not fit it."""

    found = _record_model(record, where, state.model)
    if state.model is None:
        state.model = found
        state.model_origin = f"the first record (line {number})"
        return
    if found != state.model:
        raise HistoryFormatError(
            f"{where}: this record is written for model {found}, but {state.model_origin} "
            f"sets model {state.model}, which expects the fields "
            f"{_MODEL_FIELDS[state.model]} (see {HISTORY_DOCS}); one file holds records of "
            "one model"
        )


def _require_fields(record: dict[str, Any], names: tuple[str, ...], where: str) -> None:
    missing = [name for name in names if name not in record]
    if missing:
        listed = ", ".join(repr(name) for name in missing)
        plural = "s" if len(missing) > 1 else ""
        raise HistoryFormatError(
            f"{where}: missing field{plural} {listed}; this record needs {', '.join(names)} "
            f"(see {HISTORY_DOCS})"
        )


def _time(record: dict[str, Any], name: str, where: str) -> float:
    value = record[name]
    if type(value) not in (int, float):
        raise HistoryFormatError(f"{where}: {name!r} must be a number, got {value!r}")
    try:
        time = float(value)
    except OverflowError:
        time = math.inf
    if not math.isfinite(time):
        raise HistoryFormatError(f"{where}: {name!r} is {value!r}; times must be finite numbers")
    return time


def _completion_time(record: dict[str, Any], call_name: str, name: str, where: str) -> float:
    completed = _time(record, name, where)
    if completed < record[call_name]:
        raise HistoryFormatError(
            f"{where}: {name!r} {record[name]} comes before {call_name!r} {record[call_name]}; an "
            "operation completes at or after its invocation"
        )
    return completed


def _client(record: dict[str, Any], where: str) -> Any:
    client = record["client"]
    if type(client) not in (str, int):
        raise HistoryFormatError(f"{where}: 'client' must be a string or integer, got {client!r}")
    return client


def _optional_string(record: dict[str, Any], name: str, where: str) -> str | None:
    value = record.get(name)
    if value is not None and not isinstance(value, str):
        raise HistoryFormatError(f"{where}: {name!r} must be a string or null, got {value!r}")
    return value


def _enum_value(enum_type: Any, value: Any, name: str, where: str) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(item.value for item in enum_type)
        raise HistoryFormatError(
            f"{where}: unknown {name!r} {value!r}; use one of {choices}"
        ) from None


def _store_data(record: dict[str, Any], where: str) -> bytes | None:
    encoded = record.get("data_b64")
    if encoded is None:
        return None
    if not isinstance(encoded, str):
        raise HistoryFormatError(f"{where}: 'data_b64' must be a base64 string, got {encoded!r}")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as error:
        raise HistoryFormatError(
            f"{where}: 'data_b64' is not valid base64 ({error}); encode the bytes with "
            "standard base64 (A-Z, a-z, 0-9, +, / and = padding)"
        ) from None


def _store_record(
    record: dict[str, Any], where: str, number: int, op_id_lines: dict[int, int]
) -> StoreOperation:
    """Build the ``StoreOperation`` of one record of ``StoreOperation.to_record()`` form."""

    _require_fields(record, _STORE_FIELDS, where)
    op_id = record["id"]
    if type(op_id) is not int:
        raise HistoryFormatError(f"{where}: 'id' must be an integer, got {op_id!r}")
    if op_id in op_id_lines:
        # Ids name the placeholder tokens of indeterminate writes, so they must be unique.
        raise HistoryFormatError(
            f"{where}: duplicate 'id' {op_id}, first used on line {op_id_lines[op_id]}; give "
            "every operation its own id"
        )
    op_id_lines[op_id] = number
    key = record["key"]
    if not isinstance(key, str):
        raise HistoryFormatError(f"{where}: 'key' must be a string, got {key!r}")

    invoked_at = _time(record, "invoke", where)
    completed_at = None
    if record.get("complete") is not None:
        completed_at = _completion_time(record, "invoke", "complete", where)
    operation = StoreOperation(
        op_id=op_id,
        client=str(_client(record, where)),
        kind=_enum_value(OpKind, record["op"], "op", where),
        key=key,
        invoked_at=invoked_at,
        completed_at=completed_at,
        outcome=_enum_value(Outcome, record["outcome"], "outcome", where),
        data=_store_data(record, where),
        expected=_optional_string(record, "expected", where),
        token=_optional_string(record, "token", where),
    )
    try:
        validate_store_operation(operation)
    except ValueError as error:
        raise HistoryFormatError(f"{where}: {error}") from None
    return operation


def _scalar(record: dict[str, Any], name: str, where: str) -> Any:
    """Return ``record[name]``, which must be a JSON null, boolean, finite number or string."""

    value = record[name]
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float and math.isfinite(value):
        return value
    raise HistoryFormatError(
        f"{where}: {name!r} must be null, a boolean, a finite number or a string, got {value!r}"
    )


def _generic_input(record: dict[str, Any], where: str, model: str | None) -> tuple:
    function = record["f"]
    if model == "kv":
        _require_fields(record, ("key",), where)
        key = record["key"]
        if type(key) not in (str, int):
            raise HistoryFormatError(f"{where}: 'key' must be a string or integer, got {key!r}")
        if function == "get":
            return ("get", key)
        _require_fields(record, ("value",), where)
        if not isinstance(record["value"], str):
            raise HistoryFormatError(
                f"{where}: 'value' of {function} must be a string, got {record['value']!r}"
            )
        return (function, key, record["value"])

    if function == "read":
        return ("read",)
    _require_fields(record, ("value",), where)
    if function == "write":
        return ("write", _scalar(record, "value", where))
    value = record["value"]
    if not (isinstance(value, list) and len(value) == 2):
        raise HistoryFormatError(f"{where}: 'value' of cas must be [expected, new], got {value!r}")
    pair = {"expected": value[0], "new": value[1]}
    return ("cas", _scalar(pair, "expected", where), _scalar(pair, "new", where))


def _generic_output(record: dict[str, Any], where: str, kind: str) -> Any:
    function = record["f"]
    if function not in ("read", "get"):
        return kind == "ok"
    if kind == "fail":
        return UNKNOWN
    _require_fields(record, ("result",), where)
    result = _scalar(record, "result", where)
    if function == "get":
        if result is None:
            return ""
        if not isinstance(result, str):
            raise HistoryFormatError(
                f"{where}: 'result' of get must be a string or null, got {result!r}"
            )
    return result


def _generic_record(record: dict[str, Any], where: str, model: str | None) -> Operation:
    """Build the operation of a register or key-value record; ``model`` is its model."""

    _require_fields(record, _GENERIC_FIELDS, where)
    kind = record["type"]
    if kind not in ("ok", "fail", "info"):
        raise HistoryFormatError(f"{where}: unknown type {kind!r}; expected ok, fail or info")
    client = _client(record, where)
    call = _time(record, "call", where)
    input = _generic_input(record, where, model)

    if kind == "info":
        return Operation(client, input, UNKNOWN, call, None)
    if record.get("return") is None:
        raise HistoryFormatError(
            f"{where}: a completed operation (type {kind!r}) needs a 'return' time"
        )
    returned = _completion_time(record, "call", "return", where)
    return Operation(client, input, _generic_output(record, where, kind), call, returned)
