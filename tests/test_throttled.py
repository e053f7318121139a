"""ThrottledStorageBackend in virtual time.

Each test runs under trio with ``MockClock(autojump_threshold=0)``: whenever every task is
asleep, the clock jumps to the next deadline, so waits of minutes or days take no real time
and the measured delays are exact. The throttle gets ``clock=trio.current_time`` and a wall
clock that moves with it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import pytest
import trio
import trio.testing
from osqueue.errors import CASConflictError, ConfigError, InvalidDataError, InvalidKeyError
from osqueue.storage import MemoryBackend, StorageVersion, SupportsDelete
from osqueue.storage.throttled import ThrottledStorageBackend, ThrottleStats

UTC = dt.UTC


def run_virtual(test: Callable[[], Awaitable[None]]) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


def wall_clock_from(start: dt.datetime) -> Callable[[], dt.datetime]:
    """Return a wall clock that reads ``start`` at virtual time 0 and advances with it."""

    return lambda: start + dt.timedelta(seconds=trio.current_time())


def throttled(inner: object | None = None, **limits: object) -> ThrottledStorageBackend:
    limits.setdefault("wall_clock", wall_clock_from(dt.datetime(2026, 3, 1, 12, tzinfo=UTC)))
    return ThrottledStorageBackend(
        inner if inner is not None else MemoryBackend(),
        clock=trio.current_time,
        **limits,  # type: ignore[arg-type]
    )


async def create_at(
    store: ThrottledStorageBackend, key: str, finished: list[tuple[str, float]]
) -> None:
    await store.create_if_not_exists(key, b"x")
    finished.append((key, trio.current_time()))


def test_concurrent_writes_queue_in_order() -> None:
    async def main() -> None:
        store = throttled(writes_per_minute=60)
        finished: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            for index in range(10):
                nursery.start_soon(create_at, store, f"k{index}", finished)
                # Let each task reach the throttle before the next starts: arrival order.
                await trio.testing.wait_all_tasks_blocked()

        assert trio.current_time() >= 9.0
        assert [key for key, _ in finished] == [f"k{index}" for index in range(10)]
        assert [at for _, at in finished] == [float(index) for index in range(10)]

    run_virtual(main)


def test_concurrent_writes_take_nine_seconds() -> None:
    async def main() -> None:
        store = throttled(writes_per_minute=60)
        async with trio.open_nursery() as nursery:
            for index in range(10):
                nursery.start_soon(store.create_if_not_exists, f"k{index}", b"x")

        assert trio.current_time() == pytest.approx(9.0)
        assert store.stats().total_writes == 10
        assert store.stats().throttled_writes == 9
        assert store.stats().write_delay_seconds == pytest.approx(sum(range(10)))

    run_virtual(main)


def test_sequential_writes_take_six_seconds() -> None:
    async def main() -> None:
        store = throttled(writes_per_minute=60)
        version = await store.create_if_not_exists("queue.json", b"0")
        for step in range(1, 7):
            version = await store.write("queue.json", str(step).encode(), version)

        assert trio.current_time() == pytest.approx(6.0)
        result = await store.read("queue.json")
        assert result is not None
        assert result.data == b"6"

    run_virtual(main)


def test_burst_is_one_second_of_tokens() -> None:
    async def main() -> None:
        store = throttled(writes_per_minute=600)
        finished: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            for index in range(12):
                nursery.start_soon(create_at, store, f"k{index}", finished)
                await trio.testing.wait_all_tasks_blocked()

        times = [at for _, at in finished]
        assert times[:10] == [0.0] * 10
        assert times[10] == pytest.approx(0.1)
        assert times[11] == pytest.approx(0.2)
        assert store.stats().throttled_writes == 2

    run_virtual(main)


def test_burst_refills_only_to_capacity() -> None:
    async def main() -> None:
        store = throttled(writes_per_minute=120)
        await trio.sleep(3600)
        start = trio.current_time()
        for index in range(4):
            await store.create_if_not_exists(f"k{index}", b"x")

        # Capacity is 2 tokens however long the idle period was: two go at once, then 0.5 s
        # per write.
        assert trio.current_time() - start == pytest.approx(1.0)

    run_virtual(main)


def test_slow_rate_keeps_burst_of_one() -> None:
    async def main() -> None:
        store = throttled(writes_per_minute=30)
        for index in range(3):
            await store.create_if_not_exists(f"k{index}", b"x")

        assert trio.current_time() == pytest.approx(4.0)

    run_virtual(main)


def test_reads_and_writes_use_separate_buckets() -> None:
    async def main() -> None:
        store = throttled(reads_per_minute=60, writes_per_minute=60)
        await store.create_if_not_exists("a", b"x")
        result = await store.read("a")

        assert result is not None
        assert trio.current_time() == 0.0
        await store.read("a")
        assert trio.current_time() == pytest.approx(1.0)
        stats = store.stats()
        assert stats.total_reads == 2
        assert stats.throttled_reads == 1
        assert stats.read_delay_seconds == pytest.approx(1.0)
        assert stats.total_writes == 1
        assert stats.throttled_writes == 0

    run_virtual(main)


def test_unlimited_reads_never_wait() -> None:
    async def main() -> None:
        store = throttled(writes_per_minute=1)
        for _ in range(100):
            await store.read("missing")

        assert trio.current_time() == 0.0
        assert store.stats().total_reads == 100
        assert store.stats().throttled_reads == 0

    run_virtual(main)


def test_conflicts_pass_through_unchanged() -> None:
    async def main() -> None:
        store = throttled(writes_per_minute=60)
        version = await store.create_if_not_exists("a", b"1")
        with pytest.raises(CASConflictError):
            await store.create_if_not_exists("a", b"2")
        with pytest.raises(CASConflictError):
            await store.write("a", b"3", StorageVersion("memory", 999))
        new_version = await store.write("a", b"4", version)

        assert new_version.backend == "memory"
        assert store.stats().total_writes == 4
        assert trio.current_time() == pytest.approx(3.0)

    run_virtual(main)


def test_bad_input_fails_without_waiting() -> None:
    async def main() -> None:
        store = throttled(writes_per_minute=1, reads_per_minute=1)
        await store.create_if_not_exists("a", b"1")
        await store.read("a")
        with pytest.raises(InvalidDataError):
            await store.create_if_not_exists("b", "text")  # type: ignore[arg-type]
        with pytest.raises(InvalidKeyError):
            await store.read("")
        with pytest.raises(InvalidKeyError):
            await store.write("k" * 1025, b"x", StorageVersion("memory", 1))

        assert trio.current_time() == 0.0
        assert store.stats().total_writes == 1
        assert store.stats().total_reads == 1

    run_virtual(main)


def test_name_and_tokens_pass_through() -> None:
    async def main() -> None:
        inner = MemoryBackend()
        store = throttled(inner, writes_per_minute=600)
        version = await inner.create_if_not_exists("a", b"1")
        new_version = await store.write("a", b"2", version)

        assert store.name == inner.name
        result = await inner.read("a")
        assert result is not None
        assert result.version == new_version

    run_virtual(main)


class _NoDeleteBackend:
    name = "memory"

    def __init__(self) -> None:
        self._inner = MemoryBackend()
        self.read = self._inner.read
        self.write = self._inner.write
        self.create_if_not_exists = self._inner.create_if_not_exists


def test_delete_only_when_inner_supports_it() -> None:
    async def main() -> None:
        inner = MemoryBackend()
        store = throttled(inner, writes_per_minute=60)
        await store.create_if_not_exists("a", b"1")
        assert isinstance(store, SupportsDelete)
        await store.delete("a")  # type: ignore[attr-defined]
        assert inner.keys() == []

        without = throttled(_NoDeleteBackend(), writes_per_minute=60)
        assert not isinstance(without, SupportsDelete)
        assert not hasattr(without, "delete")

    run_virtual(main)


def test_day_budget_delays_until_midnight(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        start = dt.datetime(2026, 3, 1, 23, 59, 0, tzinfo=UTC)
        store = throttled(writes_per_day=3, wall_clock=wall_clock_from(start))
        finished: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            for index in range(5):
                nursery.start_soon(create_at, store, f"k{index}", finished)
                await trio.testing.wait_all_tasks_blocked()

        assert [at for _, at in finished] == [0.0, 0.0, 0.0, 60.0, 60.0]
        stats = store.stats()
        assert stats.utc_date == dt.date(2026, 3, 2)
        assert stats.writes_today == 2
        assert stats.budget_exceeded == 2
        assert stats.total_writes == 5
        assert stats.throttled_writes == 2
        assert stats.write_delay_seconds == pytest.approx(120.0)

    with caplog.at_level(logging.WARNING, logger="osqueue.storage.throttled"):
        run_virtual(main)
    warnings = [record for record in caplog.records if "budget" in record.getMessage()]
    assert len(warnings) == 1
    assert "2026-03-01" in warnings[0].getMessage()


def test_day_budget_spills_over_several_days() -> None:
    async def main() -> None:
        start = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
        store = throttled(writes_per_day=1, wall_clock=wall_clock_from(start))
        finished: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            for index in range(3):
                nursery.start_soon(create_at, store, f"k{index}", finished)
                await trio.testing.wait_all_tasks_blocked()

        hours = [at / 3600 for _, at in finished]
        assert hours == [0.0, 12.0, 36.0]
        assert store.stats().budget_exceeded == 2
        assert store.stats().utc_date == dt.date(2026, 3, 3)

    run_virtual(main)


def test_day_budget_resets_after_rollover() -> None:
    async def main() -> None:
        start = dt.datetime(2026, 3, 1, 23, 0, 0, tzinfo=UTC)
        store = throttled(writes_per_day=2, wall_clock=wall_clock_from(start))
        await store.create_if_not_exists("a", b"1")
        await store.create_if_not_exists("b", b"1")
        assert store.stats().writes_today == 2

        await trio.sleep(3600)
        assert store.stats().writes_today == 0
        await store.create_if_not_exists("c", b"1")
        await store.create_if_not_exists("d", b"1")

        assert trio.current_time() == 3600.0
        assert store.stats().writes_today == 2
        assert store.stats().budget_exceeded == 0

    run_virtual(main)


def test_day_budget_and_rate_combine() -> None:
    async def main() -> None:
        start = dt.datetime(2026, 3, 1, 23, 59, 58, tzinfo=UTC)
        store = throttled(writes_per_minute=60, writes_per_day=2, wall_clock=wall_clock_from(start))
        for index in range(4):
            await store.create_if_not_exists(f"k{index}", b"x")

        # 0 s and 1 s on the first day, then at midnight (2 s) and one token later (3 s).
        assert trio.current_time() == pytest.approx(3.0)
        assert store.stats().budget_exceeded == 1
        assert store.stats().writes_today == 2

    run_virtual(main)


def test_cancelled_last_waiter_returns_token() -> None:
    async def main() -> None:
        store = throttled(writes_per_minute=60)
        await store.create_if_not_exists("first", b"x")
        with trio.move_on_after(0.5):
            await store.create_if_not_exists("cancelled", b"x")

        # The cancelled write held the only reservation, so the next one waits only for
        # the refill that was due anyway: 1 s after the first write.
        await store.create_if_not_exists("next", b"x")
        assert trio.current_time() == pytest.approx(1.0)
        assert store.stats().total_writes == 2

    run_virtual(main)


def test_cancelled_middle_waiter_forfeits_token() -> None:
    async def main() -> None:
        store = throttled(writes_per_minute=60)
        finished: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            await store.create_if_not_exists("k0", b"x")
            scope = trio.CancelScope()
            nursery.start_soon(_create_in_scope, store, "k1", scope)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(create_at, store, "k2", finished)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(create_at, store, "k3", finished)

        # k2 keeps its 2 s slot and k3 queues behind it. The cancelled slot at 1 s is handed
        # to nobody, because giving it to k3 would put k2 and k3 both at 2 s.
        assert finished == [("k2", 2.0), ("k3", 3.0)]
        assert store.stats().total_writes == 3

    run_virtual(main)


async def _create_in_scope(
    store: ThrottledStorageBackend, key: str, scope: trio.CancelScope
) -> None:
    with scope:
        await store.create_if_not_exists(key, b"x")


def test_cancelling_every_waiter_restores_bucket() -> None:
    async def main() -> None:
        store = throttled(writes_per_minute=60)
        await store.create_if_not_exists("k0", b"x")
        with trio.move_on_after(0.5):
            async with trio.open_nursery() as nursery:
                for index in range(1, 6):
                    nursery.start_soon(store.create_if_not_exists, f"k{index}", b"x")

        await store.create_if_not_exists("after", b"x")
        assert trio.current_time() == pytest.approx(1.0)
        assert store.stats().total_writes == 2

    run_virtual(main)


def test_cancelled_day_wait_returns_slot() -> None:
    async def main() -> None:
        start = dt.datetime(2026, 3, 1, 23, 0, 0, tzinfo=UTC)
        store = throttled(writes_per_day=1, wall_clock=wall_clock_from(start))
        await store.create_if_not_exists("a", b"x")
        with trio.move_on_after(60):
            await store.create_if_not_exists("b", b"x")
        assert store.stats().budget_exceeded == 1

        # The cancelled write gave its slot on the next day back, so this write gets it.
        await trio.sleep(3600)
        await store.create_if_not_exists("c", b"x")
        assert trio.current_time() == pytest.approx(3660.0)
        assert store.stats().writes_today == 1
        assert store.stats().total_writes == 2

    run_virtual(main)


def test_cancel_after_midnight_keeps_counts() -> None:
    async def main() -> None:
        start = dt.datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
        store = throttled(writes_per_minute=60, writes_per_day=10, wall_clock=wall_clock_from(start))
        await store.create_if_not_exists("a", b"x")
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()
            # Reserved on 1 March, waits on the rate bucket until 2 s, after midnight.
            nursery.start_soon(store.create_if_not_exists, "b", b"x")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(_create_in_scope, store, "c", scope)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(1.5)
            nursery.start_soon(store.create_if_not_exists, "d", b"x")
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()

        stats = store.stats()
        assert stats.utc_date == dt.date(2026, 3, 2)
        assert stats.writes_today == 1
        assert stats.total_writes == 3

    run_virtual(main)


def test_stats_is_frozen_snapshot() -> None:
    async def main() -> None:
        store = throttled(writes_per_minute=60)
        before = store.stats()
        await store.create_if_not_exists("a", b"x")

        assert isinstance(before, ThrottleStats)
        assert before.total_writes == 0
        assert store.stats().total_writes == 1
        assert store.stats().utc_date == dt.date(2026, 3, 1)
        with pytest.raises(AttributeError):
            before.total_writes = 5  # type: ignore[misc]

    run_virtual(main)


def test_naive_wall_clock_is_utc() -> None:
    async def main() -> None:
        store = throttled(
            writes_per_day=1, wall_clock=lambda: dt.datetime(2026, 3, 1, 23, 59, 59)
        )
        await store.create_if_not_exists("a", b"x")
        assert store.stats().utc_date == dt.date(2026, 3, 1)
        assert store.stats().writes_today == 1

    run_virtual(main)


@pytest.mark.parametrize(
    ("limits", "name"),
    [
        ({"reads_per_minute": 0}, "reads_per_minute"),
        ({"writes_per_minute": -5}, "writes_per_minute"),
        ({"writes_per_minute": float("nan")}, "writes_per_minute"),
        ({"writes_per_minute": "60"}, "writes_per_minute"),
        ({"writes_per_day": 0}, "writes_per_day"),
        ({"writes_per_day": 2.5}, "writes_per_day"),
    ],
)
def test_invalid_limits_raise_config_error(limits: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ThrottledStorageBackend(MemoryBackend(), **limits)  # type: ignore[arg-type]

    assert raised.value.name == name
    assert name in str(raised.value)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_real_clock_under_both_event_loops(backend: str) -> None:
    # 1200 writes per minute is 20 per second with a burst of 20, so 22 writes need at
    # least 0.1 s of real time.
    async def main() -> float:
        store = ThrottledStorageBackend(MemoryBackend(), writes_per_minute=1200)
        start = time.monotonic()
        async with anyio.create_task_group() as group:
            for index in range(22):
                group.start_soon(store.create_if_not_exists, f"k{index}", b"x")
        assert store.stats().total_writes == 22
        return time.monotonic() - start

    elapsed = anyio.run(main, backend=backend)
    assert elapsed >= 0.1 - 0.005
    assert elapsed < 5.0
