"""The reference flaws of the TypeScript engine: found within the default budget, and shrunk.

``FLAW_BUDGET`` seeds of the flaw's scenario must contain a failing one. Hypothesis must
then shrink a fault schedule that breaks the flawed engine to at most two events, which
the correct engine survives. The correct engine must also pass every schedule Hypothesis
generates.
"""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("trio")
pytest.importorskip("hypothesis")

from osqueue.sim.faults import FaultConfig
from osqueue.sim.queue_scenarios import QueueScenario, scenario_variants
from osqueue.sim.queue_sweep import run_queue_seed, shrink_schedule, sweep_queue

FLAW_BUDGET = range(1, 21)
"""Seeds in which each flaw must show up: the quick sweep the docs recommend."""

SHRINK_EXAMPLES = 60

CASES = {
    # flaw: (scenario, property it must break, event kinds for shrinking)
    "reapply": ("flaky-storage", "applied-twice", ("storage_drop_responses",)),
    "reregister": ("failover", "epochs", ("broker_pause",)),
}


def _quiet(scenario: QueueScenario, brokers: int) -> QueueScenario:
    """Return a short version of ``scenario`` whose only faults are the scheduled ones."""

    network = dataclasses.replace(scenario.network, drop_request=0.0, drop_response=0.0)
    return dataclasses.replace(
        scenario, store_faults=FaultConfig(), network=network, duration=12.0,
        jobs_per_producer=8, brokers=brokers)


@pytest.mark.parametrize("flaw", sorted(CASES))
def test_flaw_found_within_budget(flaw: str) -> None:
    name, broken, _kinds = CASES[flaw]
    variants = scenario_variants(name)

    failing = []
    for summary in sweep_queue(variants, FLAW_BUDGET, flaws=frozenset({flaw})):
        if not summary.passed:
            failing.append(summary)
        if broken in summary.violated:
            break

    assert failing, f"{flaw} was not found in seeds {FLAW_BUDGET}"
    assert broken in failing[-1].violated, failing[-1].messages
    assert all(f"--reference {flaw}" in summary.replay for summary in failing)


@pytest.mark.parametrize("flaw", sorted(CASES))
def test_flaw_schedule_shrinks(flaw: str, tmp_path) -> None:
    name, broken, kinds = CASES[flaw]
    (base,) = scenario_variants(name)
    scenario = _quiet(base, brokers=2 if flaw == "reregister" else 1)
    flaws = frozenset({flaw})

    schedule = shrink_schedule(scenario, 1, flaws=flaws, kinds=kinds,
                               max_examples=SHRINK_EXAMPLES,
                               fails=lambda outcome: broken in outcome.violated())
    path = tmp_path / "shrunk.json"
    schedule.dump(path)

    assert 1 <= len(schedule.events) <= 2, schedule.describe()
    replayed = run_queue_seed(scenario, 1, flaws=flaws, schedule=schedule, schedule_file=path)
    assert not replayed.passed
    assert broken in replayed.violated, replayed.messages
    assert f"--schedule {path}" in replayed.replay
    correct = run_queue_seed(scenario, 1, schedule=schedule)
    assert correct.passed, correct.messages



def test_correct_engine_survives_generated_schedules() -> None:
    from hypothesis import given, settings
    from osqueue.sim.queue_scenarios import schedule_strategy

    (base,) = scenario_variants("failover")
    scenario = dataclasses.replace(base, duration=15.0, jobs_per_producer=8)

    @settings(max_examples=25, deadline=None, derandomize=True, database=None)
    @given(schedule_strategy(scenario))
    def check(schedule) -> None:
        summary = run_queue_seed(scenario, 1, schedule=schedule)
        assert summary.passed, (schedule.describe(), summary.messages)

    check()
