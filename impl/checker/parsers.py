"""Readers for history files: osqueue JSON lines, Jepsen etcd logs and Jepsen key-value EDN logs.

Each reader returns a ``ParsedHistory``: checker operations plus the name of the model the
file was written for. The formats are described in docs/history-format.md.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osqueue.checker.store import operations_from_store_history
from osqueue.checker.types import UNKNOWN, Operation
from osqueue.spec.cas import TokenPolicy
from osqueue.spec.history import StoreOperation

logger = logging.getLogger(__name__)

FORMATS = ("auto", "jsonl", "jepsen", "kv")
MODELS = ("cas-register", "kv", "object-store")
HEADER_FORMAT = "osqueue-history"


class HistoryFormatError(ValueError):
    """A history file could not be parsed; the message names the file, line and fix."""


@dataclass(slots=True)
class ParsedHistory:
    """Operations read from one file and the model they are meant for.

    ``store_history`` contains the original records when the file is an object store history
    (``model == "object-store"``), and ``policy`` its token policy from the header.
    """

    operations: list[Operation]
    model: str
    format: str
    policy: TokenPolicy | None = None
    store_history: list[StoreOperation] | None = None
    header: dict[str, Any] = field(default_factory=dict)


def parse_history_file(path: str | Path, format: str = "auto") -> ParsedHistory:
    """Read the history in ``path``; ``format`` is one of ``FORMATS``."""

    path = Path(path)
    if format not in FORMATS:
        raise HistoryFormatError(
            f"unknown history format {format!r}; use one of {', '.join(FORMATS)}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HistoryFormatError(f"history file {str(path)!r} not found; check the path") from None
    return parse_history_text(text, format, source=str(path))


def parse_history_text(text: str, format: str = "auto", *, source: str = "<text>") -> ParsedHistory:
    """Parse a history held in ``text``; ``source`` names it in error messages."""

    if format == "auto":
        format = detect_format(text)
        logger.debug("detected format %s for %s", format, source)
    lines = text.splitlines()
    if format == "jsonl":
        return _parse_jsonl(lines, source)
    if format == "jepsen":
        return _parse_jepsen(lines, source)
    if format == "kv":
        return _parse_kv(lines, source)
    raise HistoryFormatError(f"unknown history format {format!r}; use one of {', '.join(FORMATS)}")


def detect_format(text: str) -> str:
    """Guess the format from the first non-empty line; an empty text reads as a Jepsen log."""

    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("{:"):
            return "kv"
        if stripped.startswith("{"):
            return "jsonl"
        if _JEPSEN_LINE.match(stripped):
            return "jepsen"
        raise HistoryFormatError(
            f"cannot tell the format of the line {stripped[:80]!r}; pass --format jsonl, "
            "jepsen or kv"
        )
    return "jepsen"


class _OpenOperations:
    """Pairs invocations with completions per process and builds the operations."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.open: dict[Any, tuple[int, Any, float]] = {}
        self.operations: list[Operation] = []
        self.slots: list[Operation | None] = []

    def invoke(self, process: Any, input: Any, time: float, line: int) -> None:
        if process in self.open:
            raise HistoryFormatError(
                f"{self.source}:{line}: process {process} invokes an operation while its "
                "previous one is still open; each process may have one open operation"
            )
        self.open[process] = (len(self.slots), input, time)
        self.slots.append(None)

    def complete(self, process: Any, output: Any, time: float | None, line: int) -> Any:
        """Close ``process``'s open operation; ``time`` None marks it indeterminate."""

        if process not in self.open:
            raise HistoryFormatError(
                f"{self.source}:{line}: process {process} completes an operation it never "
                "invoked; every completion needs an earlier invocation by the same process"
            )
        slot, input, call = self.open.pop(process)
        self.slots[slot] = Operation(
            process, input, UNKNOWN if time is None else output, call, time
        )
        return input

    def input_of(self, process: Any, line: int) -> Any:
        if process not in self.open:
            raise HistoryFormatError(
                f"{self.source}:{line}: process {process} completes an operation it never "
                "invoked; every completion needs an earlier invocation by the same process"
            )
        return self.open[process][1]

    def finish(self) -> list[Operation]:
        """Return the operations in invocation order; unfinished ones are indeterminate."""

        for process, (slot, input, call) in list(self.open.items()):
            self.slots[slot] = Operation(process, input, UNKNOWN, call, None)
        self.open.clear()
        return [op for op in self.slots if op is not None]


# --- Jepsen etcd logs -----------------------------------------------------------------

_JEPSEN_LINE = re.compile(r"^.*?(\S+)\s+:(invoke|ok|fail|info)\s+:(\S+)\s*(.*)$")


def _parse_edn_value(text: str, where: str) -> Any:
    text = text.strip()
    if text == "nil" or text == "":
        return None
    if text.startswith(":"):
        return text
    if text.startswith("[") and text.endswith("]"):
        return [_parse_edn_value(part, where) for part in text[1:-1].split()]
    if text.startswith('"') and text.endswith('"'):
        return json.loads(text)
    try:
        return int(text)
    except ValueError:
        raise HistoryFormatError(
            f"{where}: cannot read the value {text!r}; expected nil, an integer, a string, "
            "a keyword or a vector"
        ) from None


def _register_input(function: str, value: Any, where: str) -> tuple:
    if function == "read":
        return ("read",)
    if function == "write":
        return ("write", value)
    if function == "cas":
        if not (isinstance(value, list) and len(value) == 2):
            raise HistoryFormatError(f"{where}: cas needs a value [expected new], got {value!r}")
        return ("cas", value[0], value[1])
    raise HistoryFormatError(
        f"{where}: unknown register operation {function!r}; expected read, write or cas"
    )


def _register_output(function: str, kind: str, value: Any) -> Any:
    """Return the output of a completed register operation of type ``kind`` (ok or fail)."""

    if function == "read":
        return value if kind == "ok" else UNKNOWN
    return kind == "ok"


def _parse_jepsen(lines: list[str], source: str) -> ParsedHistory:
    pending = _OpenOperations(source)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        match = _JEPSEN_LINE.match(line.strip())
        if match is None:
            raise HistoryFormatError(
                f"{where}: expected '<process> :<type> :<f> <value>', got {line.strip()[:80]!r}"
            )
        process_text, kind, function, value_text = match.groups()
        process = int(process_text) if process_text.lstrip("-").isdigit() else process_text
        value = _parse_edn_value(value_text, where)

        if kind == "invoke":
            pending.invoke(process, _register_input(function, value, where), number, number)
        elif kind == "info":
            pending.complete(process, UNKNOWN, None, number)
        else:
            input = pending.input_of(process, number)
            pending.complete(process, _register_output(input[0], kind, value), number, number)
    return ParsedHistory(pending.finish(), "cas-register", "jepsen")


# --- Jepsen key-value EDN logs ----------------------------------------------------------

_EDN_PAIR = re.compile(r':([\w-]+)\s+(nil|"(?:[^"\\]|\\.)*"|:[\w-]+|-?\d+)')


def _parse_edn_map(line: str, where: str) -> dict[str, Any]:
    stripped = line.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        raise HistoryFormatError(
            f"{where}: expected an EDN map {{:process ...}}, got {stripped[:80]!r}"
        )
    record: dict[str, Any] = {}
    for name, raw in _EDN_PAIR.findall(stripped):
        record[name] = _parse_edn_value(raw, where)
    for name in ("process", "type", "f"):
        if name not in record:
            raise HistoryFormatError(
                f"{where}: the map has no :{name}; every line needs :process, :type and :f"
            )
    return record


def _kv_input(function: str, key: Any, value: Any, where: str) -> tuple:
    if function == "get":
        return ("get", key)
    if function in ("put", "append"):
        return (function, key, "" if value is None else value)
    raise HistoryFormatError(
        f"{where}: unknown key-value operation {function!r}; expected get, put or append"
    )


def _parse_kv(lines: list[str], source: str) -> ParsedHistory:
    pending = _OpenOperations(source)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        record = _parse_edn_map(line, where)
        process, kind = record["process"], str(record["type"]).lstrip(":")
        function = str(record["f"]).lstrip(":")
        value = record.get("value")

        if kind == "invoke":
            pending.invoke(
                process, _kv_input(function, record.get("key"), value, where), number, number
            )
        elif kind == "info":
            pending.complete(process, UNKNOWN, None, number)
        elif kind in ("ok", "fail"):
            if function == "get" and kind == "fail":
                output = UNKNOWN
            elif function == "get":
                output = "" if value is None else value
            else:
                output = kind == "ok"
            pending.complete(process, output, number, number)
        else:
            raise HistoryFormatError(
                f"{where}: unknown :type :{kind}; expected invoke, ok, fail or info"
            )
    return ParsedHistory(pending.finish(), "kv", "kv")


# --- osqueue JSON lines --------------------------------------------------------------------


def _parse_jsonl(lines: list[str], source: str) -> ParsedHistory:
    header: dict[str, Any] = {}
    store_records: list[StoreOperation] = []
    operations: list[Operation] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise HistoryFormatError(
                f"{where}: invalid JSON ({error.msg}); each line must be one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise HistoryFormatError(
                f"{where}: expected a JSON object, got {type(record).__name__}"
            )

        if record.get("format") == HEADER_FORMAT:
            if header or store_records or operations:
                raise HistoryFormatError(f"{where}: the header must be the first line")
            header = record
        elif "outcome" in record:
            store_records.append(_store_record(record, where))
        else:
            operations.append(_generic_record(record, where))

    if store_records and operations:
        raise HistoryFormatError(
            f"{source}: mixes object store records (with 'outcome') and generic records "
            "(with 'f'); write one kind per file"
        )
    if store_records or header.get("model") == "object-store":
        policy = TokenPolicy(header.get("policy", TokenPolicy.UNIQUE.value))
        return ParsedHistory(
            operations_from_store_history(store_records),
            "object-store",
            "jsonl",
            policy=policy,
            store_history=store_records,
            header=header,
        )
    model = header.get("model") or _generic_model(operations, source)
    return ParsedHistory(operations, model, "jsonl", header=header)


def _store_record(record: dict[str, Any], where: str) -> StoreOperation:
    try:
        return StoreOperation.from_record(record)
    except (KeyError, ValueError, TypeError) as error:
        raise HistoryFormatError(
            f"{where}: invalid object store record ({type(error).__name__}: {error}); "
            "expected the fields of StoreOperation.to_record()"
        ) from None


def _generic_record(record: dict[str, Any], where: str) -> Operation:
    for name in ("client", "f", "type", "call"):
        if name not in record:
            raise HistoryFormatError(
                f"{where}: the record has no {name!r} field; see docs/history-format.md"
            )
    function, kind = record["f"], record["type"]
    if kind not in ("ok", "fail", "info"):
        raise HistoryFormatError(f"{where}: unknown type {kind!r}; expected ok, fail or info")

    value = record.get("value")
    if function in ("get", "put", "append"):
        input = _kv_input(function, record.get("key"), value, where)
    else:
        input = _register_input(function, value, where)

    returned = record.get("return")
    if kind == "info":
        return Operation(record["client"], input, UNKNOWN, float(record["call"]), None)
    if returned is None:
        raise HistoryFormatError(
            f"{where}: a completed operation (type {kind!r}) needs a 'return' time"
        )
    if function in ("read", "get"):
        output = record.get("result") if kind == "ok" else UNKNOWN
        if function == "get" and output is None:
            output = ""
    else:
        output = kind == "ok"
    return Operation(record["client"], input, output, float(record["call"]), float(returned))


def _generic_model(operations: list[Operation], source: str) -> str:
    kinds = {op.input[0] for op in operations}
    if kinds <= {"read", "write", "cas"}:
        return "cas-register"
    if kinds <= {"get", "put", "append"}:
        return "kv"
    raise HistoryFormatError(
        f"{source}: mixes register operations (read, write, cas) with key-value operations "
        "(get, put, append); write one model per file"
    )
