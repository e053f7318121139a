"""The ``osqueue sim`` command: output files, exit codes, sweeps and replay commands."""

from __future__ import annotations

import json
import shlex

import pytest
from osqueue.cli import app
from typer.testing import CliRunner

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["sim", *args], catch_exceptions=False)


def test_single_seed_passes_and_writes_history(tmp_path):
    result = invoke("--seed", "1", "--ops", "150", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "PASSED seed 1" in result.output
    assert "linearizable" in result.output
    assert "faults injected" in result.output
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "osqueue-history"
    assert header["seed"] == 1
    assert len(lines) == 151


def test_lying_store_exits_one_with_replay(tmp_path):
    result = invoke("--seed", "1", "--lying", "--out", str(tmp_path))
    assert result.exit_code == 1, result.output
    assert "not linearizable" in result.output
    assert "FAILED seed 1" in result.output
    assert "--lying" in result.output
    assert (tmp_path / "history.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--token-policy", "sha1"), "unknown token policy"),
        (("--seeds", "9..3"), "is empty"),
        (("--seeds", "1-3"), "invalid seed range"),
        (("--drop-request", "2"), "probability"),
        (("--clients", "0"), "clients"),
    ],
)
def test_invalid_options_exit_two(args, message):
    result = runner.invoke(app, ["sim", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_sweep_in_parallel_passes(tmp_path):
    result = invoke("--seeds", "1..4", "--jobs", "2", "--ops", "150", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "4 seeds, 600 operations" in result.output
    assert "PASSED all 4 seeds" in result.output
    assert list(tmp_path.iterdir()) == []


def test_sweep_lists_failing_seeds_with_replay(tmp_path):
    result = invoke(
        "--seeds", "1..3", "--jobs", "2", "--lying", "--ops", "150", "--out", str(tmp_path)
    )
    assert result.exit_code == 1, result.output
    assert "FAILED 3 of 3 seeds" in result.output
    for seed in (1, 2, 3):
        assert (tmp_path / f"seed-{seed}" / "history.jsonl").exists()
        assert f"osqueue sim --seed {seed} " in result.output
        assert f"--out {tmp_path / f'seed-{seed}'}" in result.output


def test_replay_command_reproduces_history(tmp_path):
    from osqueue.sim.runner import SimConfig
    from osqueue.sim.sweep import replay_command
    from osqueue.sim.workload import WorkloadConfig

    config = SimConfig(seed=8, workload=WorkloadConfig(operations=120))
    first = tmp_path / "first"
    assert invoke("--seed", "8", "--ops", "120", "--out", str(first)).exit_code == 0

    replay = shlex.split(replay_command(config, str(tmp_path / "second")))
    assert replay[:2] == ["osqueue", "sim"]
    assert invoke(*replay[2:]).exit_code == 0
    first_bytes = (first / "history.jsonl").read_bytes()
    assert first_bytes == (tmp_path / "second" / "history.jsonl").read_bytes()


def test_sweep_reports_crashed_seed(monkeypatch):
    from osqueue.sim import sweep as sweep_module

    def crash(config):
        raise RuntimeError(f"simulated crash of seed {config.seed}")

    monkeypatch.setattr(sweep_module, "simulate", crash)
    result = invoke("--seeds", "4..5", "--jobs", "1")
    assert result.exit_code == 1, result.output
    assert "crashed: RuntimeError" in result.output
    assert "osqueue sim --seed 5 " in result.output
