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
