"""The queue simulation: every scenario passes its properties, and the checks can fail.

The negative controls (a lying store, the two reference flaws of the TypeScript engine)
prove that the properties catch what they claim to catch.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

pytest.importorskip("trio")

from osqueue.checker import UNKNOWN
from osqueue.sim import queue_model
from osqueue.sim.queue_checks import check_queue_run
from osqueue.sim.queue_scenarios import (
    SCENARIOS,
    FaultEvent,
    FaultSchedule,
    scenario_variants,
    schedule_for_seed,
)
from osqueue.sim.queue_sweep import replay_command, run_queue_seed
from osqueue.sim.queue_world import QueueRunConfig, simulate_queue
from osqueue.spec import queue as spec

ALL_VARIANTS = [variant.name for name in SCENARIOS for variant in scenario_variants(name)]
SEEDS_PER_VARIANT = (1, 2)


@pytest.mark.parametrize("seed", SEEDS_PER_VARIANT)
@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_scenario_properties_hold(name: str, seed: int) -> None:
    (variant,) = scenario_variants(name)
    summary = run_queue_seed(variant, seed)

    assert summary.passed, (summary.violated, summary.messages, summary.replay)
    assert summary.queue_verdict == "linearizable"
    assert summary.store_verdict == "linearizable"
    assert summary.acknowledged > 0
    assert summary.commits > 0


def test_faults_are_injected() -> None:
    (variant,) = scenario_variants("flaky-storage")
    summary = run_queue_seed(variant, 3)

    assert summary.faults_by_kind.get("drop_response", 0) > 0
    assert summary.faults_by_kind.get("drop_request", 0) > 0
    assert summary.faults > 5


def test_same_seed_same_run() -> None:
    (variant,) = scenario_variants("failover")
    config = QueueRunConfig(variant, 5, schedule_for_seed(variant, 5))

    first = simulate_queue(config)
    second = simulate_queue(config)

    assert [op.describe() for op in first.ops] == [op.describe() for op in second.ops]
    assert [commit.state for commit in first.commits] == [
        commit.state for commit in second.commits]


def test_lying_store_is_caught() -> None:
    (variant,) = scenario_variants("contention/direct")
    summary = run_queue_seed(variant, 1, lying=True)

    assert not summary.passed
    assert "store-linearizable" in summary.violated


def test_contention_compares_three_modes() -> None:
    modes = [variant.mode for variant in scenario_variants("contention")]

    assert modes == ["direct", "client-batch", "brokered"]


def test_failing_seed_writes_replayable_files(tmp_path) -> None:
    (variant,) = scenario_variants("flaky-storage")
    summary = run_queue_seed(variant, 1, flaws=frozenset({"reapply"}), out=tmp_path)

    assert not summary.passed
    directory = tmp_path / "flaky-storage-seed-1"
    assert summary.output == str(directory)
    for name in ("schedule.json", "queue-history.jsonl", "store-history.jsonl",
                 "violations.txt", "queue-report.html", "store-report.html"):
        assert (directory / name).is_file(), name
    assert "<html" in (directory / "queue-report.html").read_text(encoding="utf-8")
    assert summary.replay == (
        "osqueue sim --scenario flaky-storage --seed 1 --reference reapply")
    assert summary.replay in (directory / "violations.txt").read_text(encoding="utf-8")


def test_explicit_schedule_in_replay_command(tmp_path) -> None:
    (variant,) = scenario_variants("default")
    schedule = FaultSchedule((FaultEvent(2.0, "broker_crash", 0, 1.0),))
    path = tmp_path / "schedule.json"
    schedule.dump(path)

    summary = run_queue_seed(variant, 1, schedule=schedule, schedule_file=path)

    assert summary.passed, summary.messages
    assert summary.replay == replay_command("default", 1, schedule_file=path)
    assert "--schedule" in summary.replay


# -- schedules ------------------------------------------------------------------------------


def test_schedule_round_trip(tmp_path) -> None:
    schedule = FaultSchedule((
        FaultEvent(5.0, "broker_skew", 1, 0.0, -2.5),
        FaultEvent(1.0, "worker_stall", 2, 6.0),
    ))
    path = tmp_path / "schedule.json"
    schedule.dump(path)

    loaded = FaultSchedule.load(path)

    assert loaded == schedule
    assert [event.at for event in loaded.events] == [1.0, 5.0]


def test_schedule_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown fault event kind 'meteor'"):
        FaultEvent(1.0, "meteor")


def test_schedule_file_without_events_list(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([1, 2]), encoding="utf-8")

    with pytest.raises(ValueError, match="'events' list"):
        FaultSchedule.load(path)


def test_seed_draws_schedule_deterministically() -> None:
    (variant,) = scenario_variants("failover")

    assert schedule_for_seed(variant, 9) == schedule_for_seed(variant, 9)
    assert schedule_for_seed(variant, 9) != schedule_for_seed(variant, 10)
    assert len(schedule_for_seed(variant, 9).events) == variant.events_per_run


def test_unknown_scenario_names_valid_ones() -> None:
    with pytest.raises(ValueError, match="default, contention, failover"):
        scenario_variants("chaos")
    with pytest.raises(ValueError, match="contention/direct"):
        scenario_variants("contention/sharded")


# -- queue model ----------------------------------------------------------------------------


def _claimed(job_id: str, token: int, attempt: int = 1, job_type: str = "email",
             tag: str | None = None) -> tuple:
    return ("claimed", job_id, job_type, tag or job_id, attempt, 3, token)


def _enqueued_state(*tags: str) -> tuple:
    state = queue_model.initial_state()
    for tag in tags:
        ok, state = queue_model.step(state, ("enqueue", (("email", tag, 3),)),
                                     ("enqueued", (f"job-{tag[-1]}",)))
        assert ok
    return state


def test_model_accepts_fifo_claim() -> None:
    state = _enqueued_state("t1", "t2")

    ok, state = queue_model.step(state, ("claim", None), _claimed("job-1", 1, tag="t1"))

    assert ok


def test_model_rejects_claim_skipping_waiting_job() -> None:
    state = _enqueued_state("t1", "t2")

    ok, _ = queue_model.step(state, ("claim", None), _claimed("job-2", 1, tag="t2"))

    assert not ok


def test_model_rejects_token_out_of_order() -> None:
    state = _enqueued_state("t1")

    ok, _ = queue_model.step(state, ("claim", None), _claimed("job-1", 2, tag="t1"))

    assert not ok


def test_model_rejects_second_holder() -> None:
    state = _enqueued_state("t1", "t2")
    ok, state = queue_model.step(state, ("claim", None), _claimed("job-1", 1, tag="t1"))
    assert ok

    # job-1 may have expired, but then the claim is its second attempt, not its first.
    ok, _ = queue_model.step(state, ("claim", None), _claimed("job-1", 2, attempt=1, tag="t1"))

    assert not ok


def test_model_stale_claim_releases_job() -> None:
    state = _enqueued_state("t1")
    ok, state = queue_model.step(state, ("claim", None), _claimed("job-1", 1, tag="t1"))
    assert ok

    ok, state = queue_model.step(state, ("complete", "job-1", 1), ("rejected", "stale_claim"))
    assert ok
    ok, _ = queue_model.step(state, ("complete", "job-1", 1), ("ack",))

    assert not ok


def test_model_unknown_claim_counts_a_token() -> None:
    state = _enqueued_state("t1", "t2")

    ok, state = queue_model.step(state, ("claim", None), UNKNOWN)
    assert ok
    ok, _ = queue_model.step(state, ("claim", None), _claimed("job-2", 2, tag="t2"))

    assert ok


def test_model_rejects_duplicate_enqueue_ids() -> None:
    state = _enqueued_state("t1")

    ok, _ = queue_model.step(state, ("enqueue", (("email", "t2", 3),)), ("enqueued", ("job-1",)))

    assert not ok


def test_model_inputs_from_mutations() -> None:
    enqueue = spec.Enqueue.one("email", {"tag": "p0-1"})

    assert queue_model.encode_input(enqueue) == ("enqueue", (("email", "p0-1", 3),))
    assert queue_model.encode_input(spec.Complete("job-1", "c7")) == ("complete", "job-1", 7)
    assert queue_model.encode_output(spec.NoJobAvailable()) == ("none",)


# -- checks on a hand-made run --------------------------------------------------------------


def test_chain_check_flags_claim_without_token() -> None:
    (variant,) = scenario_variants("default")
    variant = dataclasses.replace(variant, event_kinds=(), events_per_run=0)
    run = simulate_queue(QueueRunConfig(variant, 1))
    assert check_queue_run(run).passed

    # Drop every Complete from the client history: the chain then shows completions that
    # no request carrying the claim token explains.
    run.ops = [op for op in run.ops if not isinstance(op.mutation, spec.Complete)]
    outcome = check_queue_run(run)

    assert "claim-token" in outcome.violated()


_FINGERPRINT_SCRIPT = """
import hashlib
from osqueue.sim.queue_scenarios import scenario_variants, schedule_for_seed
from osqueue.sim.queue_world import QueueRunConfig, simulate_queue
from osqueue.state import encode_state
(scenario,) = scenario_variants("failover")
run = simulate_queue(QueueRunConfig(scenario, 3, schedule_for_seed(scenario, 3)))
digest = hashlib.sha256()
for op in run.ops:
    digest.update(op.describe().encode())
for commit in run.commits:
    digest.update(encode_state(commit.state))
print(digest.hexdigest())
"""


def test_run_independent_of_hash_seed() -> None:
    import os
    import subprocess
    import sys

    fingerprints = set()
    for hash_seed in ("1", "2"):
        environment = dict(os.environ, PYTHONHASHSEED=hash_seed)
        completed = subprocess.run(
            [sys.executable, "-c", _FINGERPRINT_SCRIPT], env=environment,
            capture_output=True, text=True, check=True, timeout=120)
        fingerprints.add(completed.stdout.strip())

    assert len(fingerprints) == 1
