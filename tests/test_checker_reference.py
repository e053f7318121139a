"""The checker against published histories with known verdicts (tests/data/histories)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from osqueue.checker import (
    Verdict,
    cas_register_model,
    check_operations,
    kv_model,
    parse_history_file,
)

DATA = Path(__file__).parent / "data" / "histories"


def load_verdicts() -> list[dict[str, str]]:
    with open(DATA / "VERDICTS.tsv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


VERDICTS = load_verdicts()


def test_every_history_file_listed():
    listed = {row["path"] for row in VERDICTS}
    on_disk = {
        path.relative_to(DATA).as_posix()
        for folder in ("jepsen", "kv")
        for path in (DATA / folder).iterdir()
    }

    assert on_disk == listed
    assert len(listed) == 77


@pytest.mark.parametrize("row", VERDICTS, ids=[row["path"] for row in VERDICTS])
def test_reference_verdict(row):
    parsed = parse_history_file(DATA / row["path"])
    model = kv_model() if parsed.model == "kv" else cas_register_model()
    expected = Verdict.LINEARIZABLE if row["linearizable"] == "true" else Verdict.NOT_LINEARIZABLE

    result = check_operations(parsed.operations, model, timeout=60)

    assert len(parsed.operations) == int(row["operations"])
    assert result.verdict is expected


def test_empty_etcd_log_linearizable():
    parsed = parse_history_file(DATA / "jepsen" / "etcd_095.log")
    result = check_operations(parsed.operations, cas_register_model())

    assert parsed.operations == []
    assert result.verdict is Verdict.LINEARIZABLE


def test_violation_reports_point_into_history():
    parsed = parse_history_file(DATA / "kv" / "c10-bad.txt")
    result = check_operations(parsed.operations, kv_model())
    failing = [part for part in result.partitions if part.verdict is Verdict.NOT_LINEARIZABLE]

    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert failing
    assert result.violating
    assert set(result.violating) <= set(failing[0].operations)
    assert set(result.longest_linearization) <= set(failing[0].operations)
    assert not set(result.violating) & set(result.longest_linearization)
