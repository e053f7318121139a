"""Checking simulated histories: a correct store passes, the lying store is caught."""

from __future__ import annotations

import dataclasses

import pytest
from osqueue.sim.faults import FaultKind
from osqueue.sim.runner import (
    DEFAULT_FAULTS,
    SimConfig,
    check_run,
    read_history,
    simulate,
    write_outputs,
)
from osqueue.sim.workload import WorkloadConfig
from osqueue.spec.cas import TokenPolicy
from osqueue.spec.history import Outcome


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("policy", list(TokenPolicy))
def test_lying_store_caught_at_defaults(seed, policy):
    faults = dataclasses.replace(DEFAULT_FAULTS, lying=True)
    run = simulate(SimConfig(seed=seed, policy=policy, faults=faults))
    outcome = check_run(run)
    assert run.faults_injected[FaultKind.PRECONDITION_IGNORED.value] > 0
    assert not outcome.passed
    assert outcome.violations
    assert outcome.verdict == "not linearizable"


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("policy", list(TokenPolicy))
def test_correct_store_passes_at_defaults(seed, policy):
    run = simulate(SimConfig(seed=seed, policy=policy))
    outcome = check_run(run)
    assert outcome.violations == []
    assert outcome.verdict == "linearizable"
    assert outcome.passed


def test_heavy_faults_still_linearizable():
    faults = dataclasses.replace(
        DEFAULT_FAULTS,
        drop_request=0.1,
        drop_response=0.1,
        applied_late=0.1,
        error_rate=0.1,
        write_rate_limit_per_second=1.0,
    )
    config = SimConfig(seed=9, faults=faults, workload=WorkloadConfig(clients=6, operations=600))
    run = simulate(config)
    outcome = check_run(run)
    assert outcome.passed, outcome.violations[:3]
    for kind in FaultKind:
        if kind not in (FaultKind.PRECONDITION_IGNORED, FaultKind.TIMEOUT):
            assert run.faults_injected[kind.value] > 0, kind


def test_defaults_inject_drops_and_errors():
    run = simulate(SimConfig(seed=1, workload=WorkloadConfig(operations=1000)))
    faults = run.faults_injected
    assert faults["drop_request"] + faults["drop_response"] + faults["applied_late"] > 0
    assert faults["error_500"] + faults["error_503"] + faults["error_429"] > 0
    outcomes = {operation.outcome for operation in run.history}
    assert Outcome.INDETERMINATE in outcomes
    assert Outcome.FAILED in outcomes
    assert Outcome.CONFLICT in outcomes


def test_operation_budget_is_exact():
    run = simulate(SimConfig(seed=2, workload=WorkloadConfig(clients=3, operations=100)))
    assert len(run.history) == 100
    per_client = {}
    for operation in run.history:
        per_client[operation.client] = per_client.get(operation.client, 0) + 1
    assert per_client == {"c0": 34, "c1": 33, "c2": 33}


def test_throttled_clients_run_slower():
    plain = simulate(SimConfig(seed=3, workload=WorkloadConfig(operations=120)))
    workload = WorkloadConfig(operations=120, reads_per_minute=30.0, writes_per_minute=30.0)
    throttled = simulate(SimConfig(seed=3, workload=workload))
    assert len(throttled.history) == 120
    # 30 operations per client at 30 reads and 30 writes a minute take at least 30 s.
    assert throttled.virtual_duration > 30.0
    assert throttled.virtual_duration > 2 * plain.virtual_duration
    assert check_run(throttled).passed


def test_history_file_round_trips(tmp_path):
    run = simulate(SimConfig(seed=6, workload=WorkloadConfig(operations=80)))
    outcome = check_run(run)
    written = write_outputs(run, outcome, tmp_path)
    header, operations = read_history(written[0])
    assert header["seed"] == 6
    assert header["model"] == "object-store"
    assert header["policy"] == "unique"
    assert operations == run.history


def test_history_file_parsed_by_checker(tmp_path):
    from osqueue.checker import check_operations, object_store_model, parse_history_file

    run = simulate(SimConfig(seed=6, policy=TokenPolicy.CONTENT_HASH))
    written = write_outputs(run, check_run(run), tmp_path)
    parsed = parse_history_file(written[0])
    assert parsed.model == "object-store"
    assert parsed.policy is TokenPolicy.CONTENT_HASH
    result = check_operations(parsed.operations, object_store_model(parsed.policy))
    assert result.passed


def test_unknown_verdict_is_failure():
    from osqueue.checker import CheckResult, Verdict
    from osqueue.sim.runner import CheckOutcome

    unknown = CheckResult(Verdict.UNKNOWN, 1.0, (), (), budget_exhausted=True)
    outcome = CheckOutcome(violations=[], linearizability=unknown)
    assert outcome.verdict == "unknown"
    assert not outcome.passed


def test_missing_checker_result_is_failure():
    from osqueue.sim.runner import CheckOutcome

    outcome = CheckOutcome(violations=[], linearizability=None, linearizability_error="absent")
    assert outcome.verdict == "not checked"
    assert not outcome.passed


def test_content_hash_rewrite_same_bytes_passes():
    # With content-hash tokens a write of A over A keeps the token, so a later write that
    # presents it is correct. This run contains such writes (A -> A, then a write from A).
    workload = WorkloadConfig(clients=8, operations=2000)
    run = simulate(SimConfig(seed=2, policy=TokenPolicy.CONTENT_HASH, workload=workload))
    same_bytes = [
        operation for operation in run.history
        if operation.outcome is Outcome.OK and operation.expected is not None
        and operation.expected == operation.token
    ]
    assert same_bytes
    assert check_run(run).passed
