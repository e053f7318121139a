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


# -- option validation --------------------------------------------------------------------


def plain_output(result) -> str:
    """Return the output without rich's box characters and line wrapping."""

    text = result.output
    for character in "│╭╮╰╯─":
        text = text.replace(character, " ")
    return " ".join(text.split())


@pytest.fixture
def no_simulation(monkeypatch):
    """Fail the test if any seed starts to simulate."""

    from osqueue.sim import runner as runner_module
    from osqueue.sim import sweep as sweep_module

    def reject_simulation(config, **kwargs):
        raise AssertionError(f"seed {config.seed} was simulated despite invalid options")

    monkeypatch.setattr(runner_module, "simulate", reject_simulation)
    monkeypatch.setattr(sweep_module, "simulate", reject_simulation)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--timeout", "nan"), ["--timeout", "got nan", "86400"]),
        (("--timeout", "1e308"), ["--timeout", "got 1e+308", "one day"]),
        (("--timeout", "0"), ["--timeout", "got 0.0"]),
        (("--check-timeout", "0"), ["--check-timeout", "got 0.0"]),
        (("--check-timeout", "-5"), ["--check-timeout", "got -5.0"]),
        (("--check-timeout", "inf"), ["--check-timeout", "got inf"]),
        (("--reads-per-minute", "-5"), ["--reads-per-minute", "got -5.0"]),
        (("--writes-per-minute", "0"), ["--writes-per-minute", "got 0.0"]),
        (("--rate-limit-per-second", "nan"), ["--rate-limit-per-second", "got nan"]),
        (("--late", "1.5"), ["--late", "probability", "got 1.5"]),
        (("--drop-request", "-0.1"), ["--drop-request", "probability", "got -0.1"]),
        (("--drop-response", "nan"), ["--drop-response", "probability", "got nan"]),
        (("--error-rate", "2"), ["--error-rate", "probability", "got 2.0"]),
        (("--drop-request", "0.6", "--late", "0.5"), ["--late", "at most 1", "1.12"]),
        (("--seed", "1", "--seeds", "1..3"), ["--seed 1 and --seeds 1..3 cannot be combined"]),
        (("--seed", "-1"), ["--seed", "must be >= 0", "got -1"]),
        (("--seeds", "-3..2"), ["--seeds", "'-3..2'", "negative seed"]),
    ],
)
def test_invalid_option_rejected_before_run(no_simulation, args, expected):
    result = runner.invoke(app, ["sim", "--ops", "50", *args])
    output = plain_output(result)

    assert result.exit_code == 2, output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    for text in expected:
        assert text in output
    for python_name in ("applied_late", "reads_per_minute", "writes_per_minute"):
        assert python_name not in output


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("--check-timeout", "0"), "--check-timeout"),
        (("--reads-per-minute", "-5"), "--reads-per-minute"),
        (("--timeout", "nan"), "--timeout"),
    ],
)
def test_sweep_rejects_invalid_option_before_start(no_simulation, args, option):
    result = runner.invoke(app, ["sim", "--seeds", "1..2", "--jobs", "1", *args])
    output = plain_output(result)

    assert result.exit_code == 2, output
    assert f"Invalid value for {option}" in output
    assert "crashed" not in output
    assert "replay" not in output


def test_default_check_timeout_matches_runner():
    from osqueue.sim import cli as cli_module
    from osqueue.sim import runner as runner_module

    assert cli_module.DEFAULT_CHECK_TIMEOUT == runner_module.DEFAULT_CHECK_TIMEOUT


def test_fault_config_rejects_unusable_timeout():
    from osqueue.sim.faults import MAX_TIMEOUT, FaultConfig

    for timeout in (float("nan"), float("inf"), 1e308, MAX_TIMEOUT * 2, 0.0, -1.0):
        with pytest.raises(ValueError, match="timeout must be > 0"):
            FaultConfig(timeout=timeout)
    assert FaultConfig(timeout=MAX_TIMEOUT).timeout == MAX_TIMEOUT


def test_fault_config_rejects_nan_rate_limit():
    from osqueue.sim.faults import FaultConfig

    for limit in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="write_rate_limit_per_second"):
            FaultConfig(write_rate_limit_per_second=limit)


def test_sim_config_rejects_negative_seed_and_bad_rates():
    from osqueue.sim.runner import SimConfig
    from osqueue.sim.workload import WorkloadConfig

    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        SimConfig(seed=-1)
    with pytest.raises(ValueError, match="reads_per_minute"):
        SimConfig(workload=WorkloadConfig(reads_per_minute=-5.0))
    with pytest.raises(ValueError, match="writes_per_minute"):
        SimConfig(workload=WorkloadConfig(writes_per_minute=float("nan")))


def test_sweep_rejects_bad_check_timeout(no_simulation):
    from osqueue.sim.runner import SimConfig
    from osqueue.sim.sweep import sweep

    with pytest.raises(ValueError, match="check_timeout"):
        sweep(SimConfig(), range(1, 3), jobs=1, out=None, check_timeout=0.0)


def test_seed_zero_runs():
    result = invoke("--seed", "0", "--ops", "50")
    assert result.exit_code == 0, result.output
    assert "PASSED seed 0" in result.output


# -- replay commands -----------------------------------------------------------------------


def non_default_config(lying: bool):
    from osqueue.sim.faults import FaultConfig
    from osqueue.sim.runner import SimConfig
    from osqueue.sim.workload import WorkloadConfig
    from osqueue.spec.cas import TokenPolicy

    return SimConfig(
        seed=3,
        policy=TokenPolicy.CONTENT_HASH,
        faults=FaultConfig(
            drop_request=0.05,
            drop_response=0.01,
            applied_late=0.1,
            error_rate=0.1,
            timeout=0.5,
            write_rate_limit_per_second=2.0,
            lying=lying,
        ),
        workload=WorkloadConfig(
            clients=3, operations=120, keys=2, reads_per_minute=600.0, writes_per_minute=300.0
        ),
    )


@pytest.mark.parametrize("lying", [False, True])
def test_replay_of_non_default_config_reproduces(tmp_path, lying):
    from osqueue.sim.runner import HISTORY_FILE, check_run, simulate, write_outputs
    from osqueue.sim.sweep import replay_command

    config = non_default_config(lying)
    run = simulate(config)
    outcome = check_run(run, timeout=30.0)
    write_outputs(run, outcome, tmp_path / "first")

    command = replay_command(config, str(tmp_path / "replay"), check_timeout=30.0)
    replay = shlex.split(command)
    for option in ("--check-timeout", "--reads-per-minute", "--writes-per-minute",
                   "--rate-limit-per-second", "--token-policy", "--timeout"):
        assert option in replay
    assert ("--lying" in replay) == lying
    result = invoke(*replay[2:])

    assert result.exit_code == (0 if outcome.passed else 1), result.output
    assert f"linearizability {outcome.verdict} in" in plain_output(result)
    first = (tmp_path / "first" / HISTORY_FILE).read_bytes()
    assert first == (tmp_path / "replay" / HISTORY_FILE).read_bytes()


def test_printed_replay_reproduces_failing_run(tmp_path):
    args = ["--seed", "4", "--clients", "3", "--ops", "120", "--keys", "2", "--late", "0.1",
            "--error-rate", "0.1", "--timeout", "0.5", "--token-policy", "content-hash",
            "--reads-per-minute", "600", "--check-timeout", "30", "--lying"]
    first = invoke(*args, "--out", str(tmp_path / "first"))
    assert first.exit_code == 1, first.output

    lines = [line.strip() for line in first.output.splitlines()]
    commands = [line for line in lines if line.startswith("osqueue sim --seed 4 ")]
    assert len(commands) == 1, first.output
    replay = shlex.split(commands[0])
    assert replay[replay.index("--check-timeout") + 1] == "30.0"
    replay[replay.index("--out") + 1] = str(tmp_path / "replay")
    second = invoke(*replay[2:])

    assert second.exit_code == 1, second.output
    assert "not linearizable" in second.output
    first_bytes = (tmp_path / "first" / "history.jsonl").read_bytes()
    assert first_bytes == (tmp_path / "replay" / "history.jsonl").read_bytes()


def test_sweep_replay_includes_check_timeout():
    result = invoke("--seeds", "1..2", "--jobs", "1", "--lying", "--ops", "100",
                    "--check-timeout", "25")
    assert result.exit_code == 1, result.output
    for seed in (1, 2):
        assert f"osqueue sim --seed {seed} " in result.output
    assert result.output.count("--check-timeout 25.0") == 2


def test_replay_command_rejects_fields_without_option():
    import dataclasses

    from osqueue.sim.faults import DEFAULT_FAULTS, Latency
    from osqueue.sim.runner import SimConfig
    from osqueue.sim.sweep import replay_command

    faults = dataclasses.replace(DEFAULT_FAULTS, write_latency=Latency.constant(0.1))
    with pytest.raises(ValueError, match="faults.write_latency"):
        replay_command(SimConfig(faults=faults))
