"""Virtual time for the simulator: trio's ``MockClock`` plus a check that time only moves on.

With ``autojump_threshold=0`` trio advances the mock clock to the next deadline as soon as
every task is blocked, so a run takes as much wall time as its computation, not its virtual
duration. ``MockClock`` cannot be subclassed, so ``ClockMonitor`` watches it instead: it is a
trio instrument that reads the clock before every task step and raises
``ClockWentBackwards`` if the reading is lower than the one before. ``MockClock.jump``
itself rejects negative jumps, and its autojump only jumps forward, so a deadline already
in the past wakes its task at the current time.
"""

from __future__ import annotations

import trio
import trio.testing


class ClockWentBackwards(AssertionError):
    """The virtual clock returned a lower time than an earlier reading."""


class ClockMonitor(trio.abc.Instrument):
    """A trio instrument asserting that ``clock`` never goes backwards during a run.

    ``readings`` counts the checks made, so a test can show that the monitor ran.
    """

    def __init__(self, clock: trio.testing.MockClock) -> None:
        self.clock = clock
        self.latest = clock.current_time()
        self.readings = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.now()

    def now(self) -> float:
        """Return the current virtual time after checking it against the latest reading."""

        current = self.clock.current_time()
        self.readings += 1
        if current < self.latest:
            raise ClockWentBackwards(
                f"virtual clock went backwards from {self.latest} to {current}"
            )
        self.latest = current
        return current


def virtual_clock() -> tuple[trio.testing.MockClock, ClockMonitor]:
    """Return a mock clock at time 0 that autojumps when all tasks block, and its monitor."""

    clock = trio.testing.MockClock(autojump_threshold=0)
    return clock, ClockMonitor(clock)
