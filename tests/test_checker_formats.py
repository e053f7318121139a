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
from osqueue.spec.cas import TokenPolicy

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
        ('{"id": 0, "op": "read", "outcome": "ok"}\n', "missing fields 'client', 'key', 'invoke'"),
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


# --- JSON lines validation -----------------------------------------------------------------

HEADER = {"format": "osqueue-history", "version": 1}
WRITE = {"client": "a", "f": "write", "value": 1, "type": "ok", "call": 0, "return": 1}
CREATE = {
    "id": 0,
    "client": "a",
    "op": "create",
    "key": "q",
    "invoke": 0.0,
    "complete": 1.0,
    "outcome": "ok",
    "data_b64": "YQ==",
    "token": "t1",
}


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def test_header_model_mismatch_rejected():
    text = jsonl({**HEADER, "model": "object-store"}, WRITE)

    with pytest.raises(HistoryFormatError) as raised:
        parse_history_text(text, source="h.jsonl")

    message = str(raised.value)
    assert message.startswith("h.jsonl:2: this record is written for model cas-register")
    assert "the header (h.jsonl:1) sets model object-store" in message
    assert "id, client, op, key, invoke, complete and outcome" in message


def test_first_record_fixes_model():
    text = jsonl(WRITE, CREATE)

    with pytest.raises(
        HistoryFormatError, match=r"<text>:2: this record is written for model object-store"
    ):
        parse_history_text(text)


def test_register_record_under_kv_header_rejected():
    with pytest.raises(
        HistoryFormatError, match=r":2: this record is written for model cas-register.*model kv"
    ):
        parse_history_text(jsonl({**HEADER, "model": "kv"}, WRITE))


@pytest.mark.parametrize(
    ("records", "fragment"),
    [
        ([{**WRITE, "call": float("nan")}], "'call' is nan; times must be finite"),
        ([{**WRITE, "call": 10**400}], "times must be finite"),
        ([{**WRITE, "call": True}], "'call' must be a number"),
        ([{**WRITE, "call": 5, "return": 1}], "'return' 1 comes before 'call' 5"),
        ([{**CREATE, "invoke": 2.0}], "'complete' 1.0 comes before 'invoke' 2.0"),
        ([{**HEADER, "version": 2}, WRITE], "unsupported header version 2; this checker reads"),
        ([{**HEADER, "version": "1"}, WRITE], "unsupported header version '1'"),
        ([{**HEADER, "model": "queue"}, WRITE], "unknown model 'queue' in the header"),
        ([{**HEADER, "policy": "zzz"}, CREATE], "unknown token policy 'zzz' in the header"),
        ([{**HEADER, "policy": "unique"}, WRITE], "policy applies only to object-store"),
        ([{**CREATE, "data_b64": "not base64!"}], "'data_b64' is not valid base64"),
        ([{**CREATE, "data_b64": 7}], "'data_b64' must be a base64 string"),
        ([{**CREATE, "outcome": "done"}], "unknown 'outcome' 'done'; use one of ok, absent"),
        ([{**CREATE, "op": "delete"}], "unknown 'op' 'delete'; use one of read, write, create"),
        ([{**CREATE, "id": "zero"}], "'id' must be an integer"),
        ([CREATE, {**CREATE, "invoke": 2.0, "complete": 3.0}], "duplicate 'id' 0, first used on"),
        ([{k: v for k, v in CREATE.items() if k != "token"}], "must be ok with a 'token'"),
        ([{k: v for k, v in CREATE.items() if k != "data_b64"}], "record the bytes it sent in"),
        ([{**CREATE, "complete": None}], "set 'complete'"),
        ([{k: v for k, v in WRITE.items() if k != "call"}], "missing field 'call'; this record"),
        ([{"client": "a", "type": "ok"}], "has neither 'op' (an object store record) nor 'f'"),
        ([{**WRITE, "f": "inc"}], "unknown operation 'f': 'inc'"),
        ([{**WRITE, "value": [1]}], "'value' must be null, a boolean"),
        ([{**WRITE, "f": "cas", "value": [1]}], "'value' of cas must be [expected, new]"),
        ([{**WRITE, "client": ["a"]}], "'client' must be a string or integer"),
        ([{"client": "a", "f": "read", "type": "ok", "call": 0, "return": 1}], "missing field"),
        ([{**WRITE, "f": "put", "key": "k", "value": 3}], "'value' of put must be a string"),
        ([{**WRITE, "f": "get"}], "missing field 'key'"),
    ],
)
def test_invalid_jsonl_record_rejected(records, fragment):
    with pytest.raises(HistoryFormatError) as raised:
        parse_history_text(jsonl(*records))

    assert fragment in str(raised.value)
    assert "KeyError" not in str(raised.value)


def test_missing_fields_all_named():
    with pytest.raises(HistoryFormatError) as raised:
        parse_history_text(jsonl({"id": 0, "op": "read", "outcome": "ok"}))

    message = str(raised.value)
    assert "missing fields 'client', 'key', 'invoke'" in message
    assert "docs/history-format.md" in message


def test_jsonl_records_counted():
    store = parse_history_text(jsonl({**HEADER, "model": "object-store"}, CREATE))
    failed = parse_history_text(jsonl({**CREATE, "outcome": "failed"}))
    register = parse_history_text(jsonl(HEADER, WRITE, {**WRITE, "call": 2, "return": 3}))

    assert store.records == 1
    assert len(store.operations) == 1
    assert failed.records == 1
    assert failed.operations == []
    assert register.records == 2


def test_header_null_policy_reads_unique():
    parsed = parse_history_text(jsonl({**HEADER, "policy": None}, CREATE))

    assert parsed.policy is TokenPolicy.UNIQUE


def test_header_policy_read():
    parsed = parse_history_text(jsonl({**HEADER, "policy": "content-hash"}, CREATE))

    assert parsed.model == "object-store"
    assert parsed.policy is TokenPolicy.CONTENT_HASH


# --- files and formats -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("run.jsonl", "jsonl"), ("run.JSON", "jsonl"), ("etcd.log", "jepsen"), ("x", "jepsen")],
)
def test_empty_file_format_by_extension(tmp_path, name, expected):
    path = tmp_path / name
    path.write_text("\n", encoding="utf-8")
    parsed = parse_history_file(path)

    assert parsed.format == expected
    assert parsed.records == 0
    assert parsed.operations == []


def test_binary_file_rejected(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_bytes(b'{"a": 1}\n\xc3\x28')

    with pytest.raises(HistoryFormatError, match=r"not UTF-8 text \(byte 0xc3 at offset 9\)"):
        parse_history_file(path)


def test_directory_rejected(tmp_path):
    with pytest.raises(HistoryFormatError, match="is a directory"):
        parse_history_file(tmp_path)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{:process 0, :type :invoke, :f :get, :value nil}", "missing :key"),
        ('{:process 0, :type :invoke, :f :put, :key "1", :value 3}', "must be a string or nil"),
    ],
)
def test_invalid_kv_line_rejected(line, fragment):
    with pytest.raises(HistoryFormatError, match=fragment):
        parse_history_text(line + "\n", "kv")


def test_kv_get_result_must_be_string():
    text = (
        '{:process 0, :type :invoke, :f :get, :key "1", :value nil}\n'
        '{:process 0, :type :ok, :f :get, :key "1", :value 5}\n'
    )

    with pytest.raises(
        HistoryFormatError, match="invalid get result 5; a get returns a string or nil"
    ):
        parse_history_text(text)
