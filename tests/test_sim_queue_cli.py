"""The queue-level mode of ``osqueue sim`` (``--scenario NAME``), run through the osqueue app."""

from __future__ import annotations

import pytest

pytest.importorskip("trio")

from osqueue.cli import app
from osqueue.sim.queue_scenarios import FaultEvent, FaultSchedule
from typer.testing import CliRunner


@pytest.fixture
def invoke():
    runner = CliRunner()

    def run(*arguments: str):
        return runner.invoke(app, ["sim", *arguments])

    return run


def plain(output: str) -> str:
    """Return ``output`` without the box drawing and line breaks of rich's error panel."""

    return " ".join(output.replace("│", " ").split())


def test_passing_seed_exits_zero(invoke, tmp_path) -> None:
    result = invoke("--scenario", "default", "--seed", "2", "--out", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output
    assert "acked/s" in result.output
    assert (tmp_path / "default-seed-2" / "queue-report.html").is_file()


def test_sweep_shows_summary(invoke) -> None:
    result = invoke("--scenario", "flaky-storage", "--seeds", "1..3", "--jobs", "1")

    assert result.exit_code == 0, result.output
    assert "3/3" in result.output
    assert "runs/minute" in result.output


def test_reference_flaw_exits_one_with_replay(invoke) -> None:
    result = invoke("--scenario", "flaky-storage", "--seed", "1", "--reference", "reapply")

    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output
    assert "applied-twice" in result.output
    assert "osqueue sim --scenario flaky-storage --seed 1 --reference reapply" in (
        result.output)


def test_schedule_file_replays(invoke, tmp_path) -> None:
    path = tmp_path / "schedule.json"
    FaultSchedule((FaultEvent(1.0, "storage_drop_responses", 0, 3.0),)).dump(path)

    result = invoke("--scenario", "default", "--seed", "1", "--schedule", str(path),
                    "--reference", "reapply")

    assert result.exit_code == 1, result.output
    assert f"--schedule {path}" in result.output.replace("\n", "")


def test_shrink_writes_schedule(invoke, tmp_path) -> None:
    result = invoke("--scenario", "flaky-storage", "--seed", "1", "--reference", "reapply",
                    "--shrink", "--shrink-examples", "20", "--out", str(tmp_path))

    assert result.exit_code == 1, result.output
    assert (tmp_path / "shrunk-schedule.json").is_file()
    assert "shrunk schedule" in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--scenario", "chaos"), "unknown scenario 'chaos'"),
        (("--scenario", "default", "--seed", "1", "--seeds", "1..2"), "cannot be combined"),
        (("--scenario", "default", "--seeds", "5..1"), "is empty"),
        (("--scenario", "default", "--reference", "sloppy"), "unknown flaw 'sloppy'"),
        (("--scenario", "default", "--check-timeout", "0"), "wall seconds > 0"),
        (("--scenario", "default", "--shrink-examples", "0"), "must be >= 1"),
        (("--scenario", "default", "--schedule", "/nonexistent/schedule.json"),
         "cannot read fault schedule"),
    ],
)
def test_invalid_options_exit_two(invoke, arguments, message) -> None:
    result = invoke(*arguments)

    assert result.exit_code == 2, result.output
    assert message in plain(result.output)


@pytest.mark.parametrize(
    "arguments",
    [
        ("--clients", "3"),
        ("--ops", "50"),
        ("--keys", "2"),
        ("--drop-request", "0.1"),
        ("--drop-response", "0.1"),
        ("--late", "0.1"),
        ("--error-rate", "0.1"),
        ("--timeout", "2"),
        ("--rate-limit-per-second", "1"),
        ("--token-policy", "content-hash"),
        ("--reads-per-minute", "60"),
        ("--writes-per-minute", "60"),
    ],
)
def test_storage_option_with_scenario_rejected(invoke, arguments) -> None:
    result = invoke("--scenario", "default", "--seed", "1", *arguments)
    output = plain(result.output)

    assert result.exit_code == 2, output
    assert f"{arguments[0]} belongs to the storage-level simulation" in output
    assert "PASSED" not in output


@pytest.mark.parametrize(
    "arguments",
    [
        ("--schedule", "schedule.json"),
        ("--reference", "reapply"),
        ("--shrink",),
        ("--shrink-examples", "5"),
    ],
)
def test_queue_option_without_scenario_rejected(invoke, arguments) -> None:
    result = invoke("--seed", "1", *arguments)
    output = plain(result.output)

    assert result.exit_code == 2, output
    assert f"{arguments[0]} needs --scenario" in output
    assert "PASSED" not in output


def test_check_timeout_default_per_mode() -> None:
    from osqueue.sim import cli, queue_sweep, runner

    assert cli.DEFAULT_CHECK_TIMEOUT == runner.DEFAULT_CHECK_TIMEOUT
    assert cli.DEFAULT_QUEUE_CHECK_TIMEOUT == queue_sweep.DEFAULT_CHECK_TIMEOUT


def test_non_default_check_timeout_in_replay(invoke) -> None:
    result = invoke("--scenario", "flaky-storage", "--seed", "1", "--reference", "reapply",
                    "--check-timeout", "12")

    assert result.exit_code == 1, result.output
    assert "--reference reapply --check-timeout 12.0" in result.output.replace("\n", "")


def test_sim_queue_command_removed(invoke) -> None:
    result = CliRunner().invoke(app, ["sim-queue", "--scenario", "default"])

    assert result.exit_code == 2, result.output
    assert "No such command" in plain(result.output)


def test_reference_flaw_writes_violation_report(invoke, tmp_path) -> None:
    result = invoke("--scenario", "flaky-storage", "--seed", "1", "--reference", "reapply",
                    "--out", str(tmp_path))

    assert result.exit_code == 1, result.output
    report = tmp_path / "flaky-storage-seed-1" / "violations.html"
    assert report.is_file()
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page
    for name in ("applied-twice", "claim-token"):
        assert f'<span class="property">{name}</span>' in page
    # Every violation gets its own section with a timeline.
    assert page.count("<section") == page.count("<svg")
    assert "violated a property" in result.output
    # Standalone: nothing is loaded from another address.
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page


def test_passing_run_writes_no_violation_report(invoke, tmp_path) -> None:
    result = invoke("--scenario", "default", "--seed", "2", "--out", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert not (tmp_path / "default-seed-2" / "violations.html").exists()


def test_epoch_violation_report_marks_commits(invoke, tmp_path) -> None:
    result = invoke("--scenario", "failover", "--seed", "4", "--reference", "reregister",
                    "--out", str(tmp_path))

    assert result.exit_code == 1, result.output
    page = (tmp_path / "failover-seed-4" / "violations.html").read_text(encoding="utf-8")
    assert '<span class="property">epochs</span>' in page
    # The commits of both engines are drawn as red ticks on the commit lane.
    assert page.count('stroke="#c5221f" stroke-width="3"') >= 2
