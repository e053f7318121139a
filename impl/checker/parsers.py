"""Readers for history files: osqueue JSON lines, Jepsen etcd logs and Jepsen key-value EDN logs.

Each reader returns a ``ParsedHistory``: checker operations plus the name of the model the
file was written for. The JSON-lines reader lives in ``osqueue.checker.jsonl``. The formats
are described in docs/history-format.md.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from osqueue.checker.jsonl import HEADER_FORMAT, HEADER_VERSION, parse_jsonl
from osqueue.checker.types import (
    HISTORY_DOCS,
    MODELS,
    UNKNOWN,
    HistoryFormatError,
    Operation,
    ParsedHistory,
)

logger = logging.getLogger(__name__)

__all__ = [
    "EXTENSION_FORMATS",
    "FORMATS",
    "HEADER_FORMAT",
    "HEADER_VERSION",
    "MODELS",
    "HistoryFormatError",
    "ParsedHistory",
    "detect_format",
    "parse_history_file",
    "parse_history_text",
]

FORMATS = ("auto", "jsonl", "jepsen", "kv")
EXTENSION_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".log": "jepsen"}
"""Formats of empty files by file name extension; a non-empty file is detected by content."""


def parse_history_file(path: str | Path, format: str = "auto") -> ParsedHistory:
    """Read the history in ``path``; ``format`` is one of ``FORMATS``."""

    path = Path(path)
    if format not in FORMATS:
        raise HistoryFormatError(
            f"unknown history format {format!r}; use one of {', '.join(FORMATS)}"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HistoryFormatError(f"history file {str(path)!r} not found; check the path") from None
    except IsADirectoryError:
        raise HistoryFormatError(
            f"{str(path)!r} is a directory; pass the path of a history file"
        ) from None
    except OSError as error:
        raise HistoryFormatError(
            f"cannot read history file {str(path)!r}: {error.strerror or error}"
        ) from None

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HistoryFormatError(
            f"{str(path)!r} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
            f"{error.start}); a history file is a text file, see {HISTORY_DOCS}"
        ) from None
    return parse_history_text(text, format, source=str(path))


def parse_history_text(text: str, format: str = "auto", *, source: str = "<text>") -> ParsedHistory:
    """Parse a history held in ``text``; ``source`` names it in error messages.

    With ``format="auto"``, the extension of ``source`` decides the format of an empty text.
    """

    if format == "auto":
        format = detect_format(text, source)
        logger.debug("detected format %s for %s", format, source)
    lines = text.splitlines()
    if format == "jsonl":
        return parse_jsonl(lines, source)
    if format == "jepsen":
        return _parse_jepsen(lines, source)
    if format == "kv":
        return _parse_kv(lines, source)
    raise HistoryFormatError(f"unknown history format {format!r}; use one of {', '.join(FORMATS)}")


def detect_format(text: str, source: str | None = None) -> str:
    """Guess the format from the first non-empty line.

    A text without records has no content to go by, so the extension of the file name
    ``source`` decides (``EXTENSION_FORMATS``), and anything else reads as a Jepsen log.
    """

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
    if source is not None:
        return EXTENSION_FORMATS.get(Path(source).suffix.lower(), "jepsen")
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
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise HistoryFormatError(
                f"{where}: invalid string {text[:80]}; strings use JSON-style escapes"
            ) from None
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
    operations = pending.finish()
    return ParsedHistory(operations, "cas-register", "jepsen", records=_count_records(lines))


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
        if value is not None and not isinstance(value, str):
            raise HistoryFormatError(
                f"{where}: the value of {function} must be a string or nil, got {value!r}"
            )
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
            if "key" not in record:
                raise HistoryFormatError(
                    f"{where}: missing :key; every key-value operation names its key, see "
                    f"{HISTORY_DOCS}"
                )
            input = _kv_input(function, record["key"], value, where)
            pending.invoke(process, input, number, number)
        elif kind == "info":
            pending.complete(process, UNKNOWN, None, number)
        elif kind in ("ok", "fail"):
            if function == "get" and kind == "fail":
                output = UNKNOWN
            elif function == "get":
                if value is not None and not isinstance(value, str):
                    raise HistoryFormatError(
                        f"{where}: invalid get result {value!r}; a get returns a string or nil"
                    )
                output = "" if value is None else value
            else:
                output = kind == "ok"
            pending.complete(process, output, number, number)
        else:
            raise HistoryFormatError(
                f"{where}: unknown :type :{kind}; expected invoke, ok, fail or info"
            )
    return ParsedHistory(pending.finish(), "kv", "kv", records=_count_records(lines))


def _count_records(lines: list[str]) -> int:
    return sum(1 for line in lines if line.strip())
