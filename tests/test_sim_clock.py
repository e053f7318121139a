"""The virtual clock only moves forward, and the simulator checks that it does."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from osqueue.sim.clock import ClockMonitor, ClockWentBackwards, virtual_clock
from osqueue.sim.runner import SimConfig, simulate
from osqueue.sim.workload import WorkloadConfig


class SteppedClock:
    """A stand-in clock that returns the given readings in turn."""

    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def current_time(self) -> float:
        return self.readings.pop(0)


def test_simulation_clock_never_goes_back():
    run = simulate(SimConfig(seed=4, workload=WorkloadConfig(operations=200)))
    assert run.clock_readings > len(run.history)
    assert run.virtual_duration > 0
    for operation in run.history:
        if operation.completed_at is not None:
            assert operation.completed_at >= operation.invoked_at
    invocations = [operation.invoked_at for operation in run.history]
    assert invocations == sorted(invocations)


def test_past_deadline_does_not_move_clock_back():
    clock, monitor = virtual_clock()

    async def body():
        await trio.sleep(5.0)
        before = monitor.now()
        await trio.sleep_until(1.0)
        with trio.move_on_at(2.0):
            await trio.sleep(10.0)
        return before, monitor.now()

    before, after = trio.run(body, clock=clock, instruments=[monitor])
    assert before == 5.0
    assert after == 5.0
    assert monitor.readings > 2


def test_clock_starts_at_zero_and_autojumps():
    clock, monitor = virtual_clock()

    async def body():
        start = trio.current_time()
        await trio.sleep(3600.0)
        return start, trio.current_time()

    start, end = trio.run(body, clock=clock, instruments=[monitor])
    assert start == 0.0
    assert end == 3600.0


def test_mock_clock_rejects_negative_jump():
    clock, _monitor = virtual_clock()
    with pytest.raises(ValueError):
        clock.jump(-1.0)


def test_monitor_detects_backwards_clock():
    monitor = ClockMonitor(SteppedClock(0.0, 2.0, 1.0))  # type: ignore[arg-type]
    assert monitor.now() == 2.0
    with pytest.raises(ClockWentBackwards, match="from 2.0 to 1.0"):
        monitor.now()
