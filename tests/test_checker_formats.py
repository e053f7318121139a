"""Tests of the history file readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from osqueue.checker import (
    UNKNOWN,
    HistoryFormatError,
    Operation,
    Verdict,
    cas_register_model,
    check_operations,
    detect_format,
    kv_model,
    parse_history_file,
    parse_history_text,
)

DATA = Path(__file__).parent / "data" / "histories"

JEPSEN_LOG = """\
INFO  jepsen.util - 0\t:invoke\t:write\t3
INFO  jepsen.util - 1\t:invoke\t:cas\t[3 4]
INFO  jepsen.util - 0\t:ok\t:write\t3
INFO  jepsen.util - 2\t:invoke\t:read\tnil
INFO  jepsen.util - 2\t:fail\t:read\t:timed-out
INFO  jepsen.util - 1\t:info\t:cas\t:timed-out
INFO  jepsen.util - 3\t:invoke\t:cas\t[1 2]
INFO  jepsen.util - 3\t:fail\t:cas\t[1 2]
INFO  jepsen.util - 4\t:invoke\t:write\t0
"""


def test_jepsen_log_operations():
    parsed = parse_history_text(JEPSEN_LOG)

    assert parsed.format == "jepsen"
    assert parsed.model == "cas-register"
    assert parsed.operations == [
        Operation(0, ("write", 3), True, 1, 3),
        Operation(1, ("cas", 3, 4), UNKNOWN, 2, None),
        Operation(2, ("read",), UNKNOWN, 4, 5),
        Operation(3, ("cas", 1, 2), False, 7, 8),
        Operation(4, ("write", 0), UNKNOWN, 9, None),
    ]


def test_jepsen_reference_file_shape():
    parsed = parse_history_file(DATA / "jepsen" / "etcd_000.log")
    kinds = {op.input[0] for op in parsed.operations}

    assert kinds == {"read", "write", "cas"}
    assert len(parsed.operations) == 85
    assert any(op.return_ is None for op in parsed.operations)


def test_kv_log_operations():
    text = (
        '{:process 0, :type :invoke, :f :append, :key "1", :value "x 0 0 y"}\n'
        '{:process 1, :type :invoke, :f :get, :key "1", :value nil}\n'
        '{:process 0, :type :ok, :f :append, :key "1", :value "x 0 0 y"}\n'
        '{:process 1, :type :ok, :f :get, :key "1", :value "x 0 0 y"}\n'
        '{:process 2, :type :invoke, :f :put, :key "2", :value "z"}\n'
    )
    parsed = parse_history_text(text)

    assert parsed.format == "kv"
    assert parsed.model == "kv"
    assert parsed.operations == [
        Operation(0, ("append", "1", "x 0 0 y"), True, 1, 3),
        Operation(1, ("get", "1"), "x 0 0 y", 2, 4),
        Operation(2, ("put", "2", "z"), UNKNOWN, 5, None),
    ]


def test_generic_jsonl_register():
    records = [
        {"format": "osqueue-history", "version": 1, "model": "cas-register"},
        {"client": "a", "f": "write", "value": 1, "type": "ok", "call": 0, "return": 1},
        {"client": "b", "f": "cas", "value": [1, 2], "type": "info", "call": 2, "return": None},
        {"client": "c", "f": "read", "type": "ok", "result": 2, "call": 3, "return": 4},
        {"client": "c", "f": "read", "type": "fail", "call": 5, "return": 6},
    ]
    parsed = parse_history_text("\n".join(json.dumps(record) for record in records))

    assert parsed.format == "jsonl"
    assert parsed.model == "cas-register"
    assert parsed.header["version"] == 1
    assert parsed.operations[1] == Operation("b", ("cas", 1, 2), UNKNOWN, 2.0, None)
    assert parsed.operations[3].output is UNKNOWN
    assert check_operations(parsed.operations, cas_register_model()).verdict is Verdict.LINEARIZABLE


def test_generic_jsonl_kv_without_header():
    records = [
        {
            "client": 1,
            "f": "append",
            "key": "k",
            "value": "a",
            "type": "ok",
            "call": 0,
            "return": 1,
        },
        {"client": 2, "f": "get", "key": "k", "type": "ok", "result": "b", "call": 2, "return": 3},
    ]
    parsed = parse_history_text("\n".join(json.dumps(record) for record in records))

    assert parsed.model == "kv"
    assert check_operations(parsed.operations, kv_model()).verdict is Verdict.NOT_LINEARIZABLE


@pytest.mark.parametrize(
    ("first_line", "expected"),
    [
        ('{:process 0, :type :invoke, :f :get, :key "1", :value nil}', "kv"),
        ('{"id": 0, "client": "c", "op": "read"}', "jsonl"),
        ("INFO  jepsen.util - 4\t:invoke\t:read\tnil", "jepsen"),
        ("", "jepsen"),
    ],
)
def test_format_detected(first_line, expected):
    assert detect_format(first_line + "\n") == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("hello world\n", "cannot tell the format"),
        ("INFO  jepsen.util - 0\t:ok\t:read\t1\n", "never invoked"),
        (
            "INFO  jepsen.util - 0\t:invoke\t:read\tnil\n" * 2,
            "still open",
        ),
        ("INFO  jepsen.util - 0\t:invoke\t:inc\tnil\n", "unknown register operation"),
        ('{"client": "a", "f": "read"\n', "invalid JSON"),
        ('{"client": "a", "f": "read", "type": "ok", "call": 0}\n', "needs a 'return' time"),
        ('{"id": 0, "op": "read", "outcome": "ok"}\n', "invalid object store record"),
    ],
)
def test_invalid_input_rejected(text, fragment):
    with pytest.raises(HistoryFormatError, match=fragment):
        parse_history_text(text)


def test_missing_file_rejected(tmp_path):
    with pytest.raises(HistoryFormatError, match="not found"):
        parse_history_file(tmp_path / "missing.jsonl")


def test_unknown_format_rejected(tmp_path):
    with pytest.raises(HistoryFormatError, match="unknown history format"):
        parse_history_file(tmp_path / "x", format="csv")
