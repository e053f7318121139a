"""The ``osqueue sim-queue`` command, run through a Typer app that registers only it."""

from __future__ import annotations

import pytest

pytest.importorskip("trio")

import typer
from osqueue.sim.queue_cli import register
from osqueue.sim.queue_scenarios import FaultEvent, FaultSchedule
from typer.testing import CliRunner


@pytest.fixture
def invoke():
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A callback makes sim-queue a subcommand, as in the osqueue app."""

    register(app)
    runner = CliRunner()

    def run(*arguments: str):
        return runner.invoke(app, ["sim-queue", *arguments])

    return run


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
    assert "osqueue sim-queue --scenario flaky-storage --seed 1 --reference reapply" in (
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
        (("--seed", "1", "--seeds", "1..2"), "cannot be combined"),
        (("--seeds", "5..1"), "is empty"),
        (("--reference", "sloppy"), "unknown flaw 'sloppy'"),
        (("--check-timeout", "0"), "wall seconds > 0"),
        (("--schedule", "/nonexistent/schedule.json"), "cannot read fault schedule"),
    ],
)
def test_invalid_options_exit_two(invoke, arguments, message) -> None:
    result = invoke(*arguments)

    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.replace("│", " ").split())
