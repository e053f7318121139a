"""Tests of ``osqueue check`` and the HTML report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import pytest
import typer
from osqueue.checker import (
    UNKNOWN,
    Operation,
    Verdict,
    cas_register_model,
    check_operations,
    render_html,
    summarize,
)
from osqueue.checker.cli import register
from typer.testing import CliRunner

DATA = Path(__file__).parent / "data" / "histories"


@pytest.fixture
def run():
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test application holding only the check command."""

    register(app)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, ["check", *map(str, args)])

    return invoke


def test_osqueue_check_command_installed():
    command = [sys.executable, "-c", "from osqueue.cli import main; main()", "check"]
    passed = subprocess.run(
        [*command, str(DATA / "jepsen" / "etcd_031.log")], check=False, capture_output=True
    )
    failed = subprocess.run(
        [*command, str(DATA / "jepsen" / "etcd_000.log")], check=False, capture_output=True
    )

    assert passed.returncode == 0
    assert failed.returncode == 1


def test_cli_linearizable_exit_zero(run):
    result = run(DATA / "jepsen" / "etcd_031.log")

    assert result.exit_code == 0, result.output
    assert "linearizable" in result.output
    assert "checked in" in result.output


def test_cli_violation_exit_one(run, tmp_path):
    report = tmp_path / "report.html"
    result = run(DATA / "kv" / "c01-bad.txt", "--html", report)

    assert result.exit_code == 1, result.output
    assert "not linearizable" in result.output
    assert str(report) in result.output
    assert report.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_cli_violation_summary_without_html(run):
    result = run(DATA / "jepsen" / "etcd_000.log", "--format", "jepsen", "--model", "cas-register")

    assert result.exit_code == 1, result.output
    assert "longest linearization found" in result.output
    assert "cannot be linearized next" in result.output


def test_cli_budget_unknown_not_a_pass(run, tmp_path):
    report = tmp_path / "unknown.html"
    result = run(DATA / "jepsen" / "etcd_002.log", "--max-steps", "50", "--html", report)

    assert result.exit_code == 3, result.output
    assert "unknown" in result.output
    assert "budget ran out" in report.read_text(encoding="utf-8")


def test_cli_empty_history_linearizable(run):
    assert run(DATA / "jepsen" / "etcd_095.log").exit_code == 0


def test_cli_model_mismatch_rejected(run):
    result = run(DATA / "jepsen" / "etcd_000.log", "--model", "kv")

    assert result.exit_code == 2
    assert "--model cas-register" in result.output


def test_cli_missing_file_rejected(run, tmp_path):
    result = run(tmp_path / "none.log")

    assert result.exit_code == 2
    assert "not found" in result.output


def test_cli_object_store_jsonl(run, tmp_path):
    records = [
        {
            "id": 0,
            "client": "a",
            "op": "create",
            "key": "q",
            "invoke": 0.0,
            "complete": 1.0,
            "outcome": "ok",
            "data_b64": "YQ==",
            "token": "t1",
        },
        {
            "id": 1,
            "client": "b",
            "op": "read",
            "key": "q",
            "invoke": 2.0,
            "complete": 3.0,
            "outcome": "ok",
            "data_b64": "YQ==",
            "token": "t1",
        },
    ]
    path = tmp_path / "store.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in records), encoding="utf-8")

    result = run(path, "--policy", "unique")

    assert result.exit_code == 0, result.output
    assert "object-store" in result.output


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes.extend(attrs)


def violation_page() -> tuple[str, list[Operation]]:
    ops = [
        Operation("a", ("write", 1), True, 0, 1),
        Operation("b", ("write", 2), UNKNOWN, 0.5, None),
        Operation("c", ("read",), 3, 2, 3),
        Operation("d", ("read",), "<script>", 2.5, 4),
    ]
    model = cas_register_model()
    result = check_operations(ops, model)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    return render_html(result, ops, model), ops


def test_html_report_standalone():
    page, _ = violation_page()
    collector = TagCollector()
    collector.feed(page)

    assert "script" not in collector.tags
    assert "link" not in collector.tags
    assert "img" not in collector.tags
    assert not [name for name, _ in collector.attributes if name in ("src", "href")]
    assert re.findall(r"https?://[^\"]+", page) == ["http://www.w3.org/2000/svg"]


def test_html_report_marks_violation():
    page, _ = violation_page()
    svg = re.search(r"<svg.*?</svg>", page, re.DOTALL).group(0)
    root = ElementTree.fromstring(svg)
    namespace = "{http://www.w3.org/2000/svg}"
    fills = [rect.get("fill") for rect in root.iter(f"{namespace}rect")]

    assert "#e53935" in fills
    assert "&lt;script&gt;" in page
    assert "not linearizable" in page


def test_summary_lists_violation():
    ops = [Operation("a", ("write", 1), True, 0, 1), Operation("b", ("read",), 2, 2, 3)]
    model = cas_register_model()
    text = summarize(check_operations(ops, model), ops, model)

    assert text.startswith("not linearizable")
    assert "1. #0 client a: write(1)" in text
    assert "#1 client b: read() -> 2" in text


# --- input errors: one line, exit status 2, never a traceback ------------------------------

REGISTER_RECORD = {"client": "a", "f": "write", "value": 1, "type": "ok", "call": 0, "return": 1}
CREATE_RECORD = {
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


def header(**fields) -> dict:
    return {"format": "osqueue-history", "version": 1, **fields}


def write_jsonl(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def flat(output: str) -> str:
    """Return ``output`` without rich panel borders and line wrapping, for substring checks."""

    return " ".join(re.sub("[\u2500-\u257f]", " ", output).split())


def assert_rejected(result, *fragments: str) -> None:
    text = flat(result.output)

    assert result.exit_code == 2, result.output
    assert type(result.exception) is SystemExit, repr(result.exception)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in text, result.output


def test_cli_header_model_mismatch_not_a_pass(run, tmp_path):
    path = write_jsonl(tmp_path / "h.jsonl", header(model="object-store"), REGISTER_RECORD)
    result = run(path)

    assert_rejected(result, "h.jsonl:2:", "model object-store", "id, client, op, key, invoke")
    assert "linearizable" not in result.output


def test_cli_records_without_operations_rejected(run, tmp_path):
    failed = {**CREATE_RECORD, "outcome": "failed"}
    path = write_jsonl(tmp_path / "failed.jsonl", header(model="object-store"), failed)

    assert_rejected(run(path), "1 record(s) but no operation to check", "'failed'")


@pytest.mark.parametrize(
    ("name", "records", "fragments"),
    [
        (
            "before.jsonl",
            [{**REGISTER_RECORD, "call": 5, "return": 1}],
            ["before.jsonl:1:", "'return' 1 comes before 'call' 5"],
        ),
        ("text.jsonl", [{**REGISTER_RECORD, "call": "x"}], ["'call' must be a number, got 'x'"]),
        (
            "kv.jsonl",
            [header(model="kv"), REGISTER_RECORD],
            [
                "kv.jsonl:2:",
                "written for model cas-register",
                "sets model kv",
                "f (get, put or append)",
            ],
        ),
        (
            "policy.jsonl",
            [header(policy="zzz"), CREATE_RECORD],
            ["policy.jsonl:1:", "unknown token policy 'zzz'", "unique, content-hash"],
        ),
        (
            "token.jsonl",
            [{key: value for key, value in CREATE_RECORD.items() if key != "token"}],
            ["token.jsonl:1:", "create operation 0", "'token'"],
        ),
    ],
)
def test_cli_invalid_record_one_line_error(run, tmp_path, name, records, fragments):
    assert_rejected(run(write_jsonl(tmp_path / name, *records)), *fragments)


def test_cli_binary_file_rejected(run, tmp_path):
    path = tmp_path / "binary.log"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\xd0\xff\xfe")

    assert_rejected(run(path), "is not UTF-8 text", "byte 0xd0 at offset 8")


def test_cli_directory_rejected(run, tmp_path):
    assert_rejected(run(tmp_path), "is a directory", "pass the path of a history file")


def test_osqueue_binary_file_no_traceback(tmp_path):
    path = tmp_path / "binary.log"
    path.write_bytes(b"\xff\xfe\x00\x01")
    command = [sys.executable, "-c", "from osqueue.cli import main; main()", "check", str(path)]
    completed = subprocess.run(command, check=False, capture_output=True, text=True)

    assert completed.returncode == 2
    assert "Traceback" not in completed.stdout + completed.stderr
    assert "is not UTF-8 text" in completed.stdout


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("nan", "invalid timeout 'nan'"),
        ("inf", "invalid timeout 'inf'"),
        ("-1", "invalid timeout '-1'"),
        ("abc", "invalid timeout 'abc'"),
    ],
)
def test_cli_invalid_timeout_rejected(run, value, fragment):
    result = run(DATA / "jepsen" / "etcd_031.log", "--timeout", value)

    assert_rejected(result, fragment, "number of seconds")


def test_cli_invalid_max_steps_repeats_value(run):
    result = run(DATA / "jepsen" / "etcd_031.log", "--max-steps", "many")

    assert_rejected(result, "invalid value 'many'", "at least 1")


@pytest.mark.parametrize(
    ("html", "fragment"),
    [
        ("missing-dir/report.html", "does not exist"),
        (".", "is a directory"),
        ("", "the report path is empty"),
    ],
)
def test_cli_html_path_checked_first(run, tmp_path, html, fragment):
    target = str(tmp_path / html) if html not in ("", ".") else html
    result = run(DATA / "jepsen" / "etcd_000.log", "--html", target)

    assert_rejected(result, fragment, "--html")
    assert "linearizable" not in result.output


# --- invalid values rejected -------------------------------------------------------------


def test_cli_nan_time_rejected(run, tmp_path):
    path = tmp_path / "nan.jsonl"
    path.write_text(
        '{"client": "a", "f": "write", "value": 1, "type": "ok", "call": NaN, "return": 1}\n',
        encoding="utf-8",
    )

    assert_rejected(run(path), "nan.jsonl:1:", "'call' is nan", "finite")


def test_cli_unsupported_version_rejected(run, tmp_path):
    path = write_jsonl(tmp_path / "v2.jsonl", {**header(), "version": 2}, REGISTER_RECORD)

    assert_rejected(run(path), "unsupported header version 2", "reads version 1")


def test_cli_policy_on_register_rejected(run):
    result = run(DATA / "jepsen" / "etcd_031.log", "--policy", "content-hash")

    assert_rejected(result, "applies only to object-store", "cas-register", "remove --policy")


def test_cli_policy_override_warns(run, tmp_path):
    path = write_jsonl(
        tmp_path / "store.jsonl", header(model="object-store", policy="content-hash"), CREATE_RECORD
    )
    overridden = run(path, "--policy", "unique")
    same = run(path, "--policy", "content-hash")

    assert overridden.exit_code == 0, overridden.output
    assert "warning: --policy unique overrides the policy content-hash" in flat(overridden.output)
    assert "unique tokens" in overridden.output
    assert same.exit_code == 0, same.output
    assert "warning" not in same.output


# --- messages name the field and the fix ---------------------------------------------------


def test_cli_bad_base64_names_field(run, tmp_path):
    path = write_jsonl(tmp_path / "b64.jsonl", {**CREATE_RECORD, "data_b64": "YQ=!"})

    assert_rejected(run(path), "b64.jsonl:1:", "'data_b64' is not valid base64")


def test_cli_missing_field_names_field(run, tmp_path):
    record = {key: value for key, value in CREATE_RECORD.items() if key != "key"}
    result = run(write_jsonl(tmp_path / "nokey.jsonl", record))

    assert_rejected(result, "missing field 'key'", "docs/history-format.md")
    assert "KeyError" not in result.output


# --- output --------------------------------------------------------------------------------


def test_cli_empty_jsonl_says_empty(run, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    result = run(path)

    assert result.exit_code == 0, result.output
    assert "empty history" in result.output
    assert "format jsonl" in result.output


def test_cli_html_still_prints_violation(run, tmp_path):
    result = run(DATA / "jepsen" / "etcd_000.log", "--html", tmp_path / "report.html")

    assert result.exit_code == 1, result.output
    assert "cannot be linearized next" in result.output
    assert "report written to" in result.output


def test_cli_summary_printed_once(run):
    result = run(DATA / "jepsen" / "etcd_000.log")

    assert result.exit_code == 1, result.output
    assert result.output.count("search steps") == 1
    assert result.output.startswith("not linearizable")
    assert "(cas-register, 85 operations" not in result.output


def test_cli_reports_explain_parts(run, tmp_path):
    report = tmp_path / "report.html"
    result = run(DATA / "kv" / "c10-bad.txt", "--html", report)
    page = report.read_text(encoding="utf-8")
    shown_parts = len(re.findall(r"^part \d+ \(key '\d'\): ", result.output, re.MULTILINE))

    assert result.exit_code == 1, result.output
    assert "split into 10 parts: independent sub-histories" in flat(result.output)
    assert f"{10 - shown_parts} linearizable part(s) are not shown" in flat(result.output)
    assert f"{10 - shown_parts} linearizable part(s) are not shown" in page
    assert "Part 0 (key &#x27;0&#x27;)" in page
