"""A wrapper that delays requests to stay within request-rate limits and a daily write budget.

``ThrottledStorageBackend`` never rejects a request because of a limit: it only waits.

Rate limits are token buckets, one for reads and one for writes (``write`` and
``create_if_not_exists`` both count as writes). A bucket refills at ``rate / 60`` tokens per
second and contains at most ``max(1, rate / 60)`` tokens, so after an idle period at most one
second's worth of requests (and at least one request) go through at once.

A caller that finds the bucket empty takes its token anyway, driving the bucket below zero,
and sleeps until the refill has paid that debt. The token is therefore reserved at arrival:
concurrent callers are served in arrival order, and a later caller cannot take a token
that an earlier waiting caller is owed.

The optional daily write budget counts writes per UTC day, where the day comes from the
injected wall clock. A write that finds the day's budget used up reserves a slot on the
first later day with room and waits until that day starts (00:00 UTC), logging one warning
per exhausted day. Later writes queue behind it in the same way.

Cancellation while waiting gives the reservation back where that cannot break the limits:
the daily slot always, and the rate token when no later caller's wait was computed on top
of it. A token that cannot be returned is forfeited, so an interval may see fewer requests
than the limit allows but never more.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from osqueue.errors import ConfigError
from osqueue.storage.base import (
    ReadResult,
    StorageBackend,
    StorageVersion,
    SupportsDelete,
    validate_data,
    validate_key,
    validate_version,
)

logger = logging.getLogger(__name__)

_MIN_DAY_WAIT_SECONDS = 0.01
"""Shortest sleep while waiting for the next UTC day, so that a wall clock lagging the
monotonic clock (or float rounding between them) cannot cause a run of near-zero sleeps."""


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class ThrottleStats:
    """Counters of a ``ThrottledStorageBackend`` since it was created.

    A request counts once it is passed to the wrapped backend, whatever its outcome. A
    request counts as throttled when it had to wait at all; the delays are in seconds of the
    monotonic clock. ``writes_today`` counts the writes admitted or waiting on ``utc_date``.
    ``budget_exceeded`` counts writes that were moved to a later UTC day by the daily budget.
    """

    total_reads: int
    total_writes: int
    throttled_reads: int
    throttled_writes: int
    read_delay_seconds: float
    write_delay_seconds: float
    writes_today: int
    utc_date: dt.date
    budget_exceeded: int


class _Reservation:
    __slots__ = ("cancelled", "done")

    def __init__(self) -> None:
        self.done = False
        self.cancelled = False


class _TokenBucket:
    """A token bucket whose callers reserve tokens in arrival order.

    ``_tokens`` may be negative: minus the number of tokens promised to waiting callers
    beyond what the bucket held. ``_pending`` lists reservations in issue order, from the
    oldest one still waiting to the newest one issued after it.
    """

    def __init__(self, per_minute: float, clock: Callable[[], float]) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()
        self._pending: deque[_Reservation] = deque()

    def reserve(self) -> tuple[_Reservation, float]:
        """Take one token now and return the reservation with the seconds to wait for it."""

        self._refill()
        self._tokens -= 1.0
        reservation = _Reservation()
        wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
        if wait == 0.0:
            reservation.done = True
        self._pending.append(reservation)
        self._drop_finished_head()
        return reservation, wait

    def complete(self, reservation: _Reservation) -> None:
        reservation.done = True
        self._drop_finished_head()

    def cancel(self, reservation: _Reservation) -> int:
        """Give back the tokens of cancelled reservations that no later one depends on.

        Returning the newest reservation's token restores exactly the state the bucket would
        have without it. An older one is only marked, and its token comes back once every
        reservation after it has been cancelled too. Returns the number of tokens given back.
        """

        reservation.cancelled = True
        returned = 0
        self._refill()
        while self._pending and self._pending[-1].cancelled:
            self._pending.pop()
            self._tokens = min(self.capacity, self._tokens + 1.0)
            returned += 1
        self._drop_finished_head()
        return returned

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._updated = now

    def _drop_finished_head(self) -> None:
        # A finished reservation at the head can never be given back, and nothing behind it
        # needs it any more, so it is forgotten. One in the middle stays, because it blocks
        # returning the tokens of cancelled reservations before it.
        while self._pending and self._pending[0].done:
            self._pending.popleft()


class _DailyCounter:
    """Write slots per UTC day, with an optional limit per day."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._taken: dict[dt.date, int] = {}

    def reserve(self, today: dt.date) -> dt.date:
        """Take a slot on the first day from ``today`` on with room, and return that day."""

        for day in [day for day in self._taken if day < today]:
            del self._taken[day]

        day = today
        while self.limit is not None and self._taken.get(day, 0) >= self.limit:
            day += dt.timedelta(days=1)
        self._taken[day] = self._taken.get(day, 0) + 1
        return day

    def release(self, day: dt.date) -> None:
        # A day already pruned by a reservation on a later day no longer needs counting.
        if day in self._taken:
            self._taken[day] -= 1

    def used(self, day: dt.date) -> int:
        return self._taken.get(day, 0)


def _positive_rate(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be a number, got {type(value).__name__} {value!r}", "60")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            name, f"must be a positive finite number (or None for no limit), got {value!r}", "60"
        )
    return float(value)


def _positive_count(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(
            name, f"must be a positive integer (or None for no limit), got {value!r}", "50000"
        )
    return value


class ThrottledStorageBackend:
    """A ``StorageBackend`` that delays requests to ``inner`` to respect rate limits.

    ``reads_per_minute`` and ``writes_per_minute`` are token-bucket rates with a burst of
    ``max(1, rate / 60)`` requests. ``writes_per_day`` is a budget per UTC day of the
    ``wall_clock``, which must return an aware datetime (a naive one is taken as UTC).
    ``None`` means no limit. See the module docstring for the queueing and cancellation rules.

    ``clock`` (monotonic seconds) and ``sleep`` must run on the same time base, for example
    ``trio.current_time`` with ``anyio.sleep`` under a trio mock clock. ``name`` equals
    ``inner.name``, so version tokens pass through unchanged. ``delete`` exists only when
    ``inner`` supports it, and passes through without throttling because it is used for
    clean-up only.

    One instance serves the tasks of one event loop. It keeps no lock, because its
    bookkeeping has no await between a check and the update it guards.
    """

    def __init__(
        self,
        inner: StorageBackend,
        *,
        reads_per_minute: float | None = None,
        writes_per_minute: float | None = None,
        writes_per_day: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[object]] = anyio.sleep,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.reads_per_minute = _positive_rate("reads_per_minute", reads_per_minute)
        self.writes_per_minute = _positive_rate("writes_per_minute", writes_per_minute)
        self.writes_per_day = _positive_count("writes_per_day", writes_per_day)
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep

        self._read_bucket = (
            None if self.reads_per_minute is None else _TokenBucket(self.reads_per_minute, clock)
        )
        self._write_bucket = (
            None if self.writes_per_minute is None else _TokenBucket(self.writes_per_minute, clock)
        )
        self._days = _DailyCounter(self.writes_per_day)
        self._warned_days: set[dt.date] = set()

        self._total_reads = 0
        self._total_writes = 0
        self._throttled_reads = 0
        self._throttled_writes = 0
        self._read_delay = 0.0
        self._write_delay = 0.0
        self._budget_exceeded = 0

        # An instance attribute, so that isinstance(self, SupportsDelete) is true only when
        # the wrapped backend can delete.
        if isinstance(inner, SupportsDelete):
            self.delete = inner.delete

        logger.info(
            "throttling the %s backend: reads_per_minute=%s writes_per_minute=%s "
            "writes_per_day=%s",
            self.name,
            self.reads_per_minute,
            self.writes_per_minute,
            self.writes_per_day,
        )

    def __repr__(self) -> str:
        return (
            f"ThrottledStorageBackend({self.inner!r}, reads_per_minute={self.reads_per_minute}, "
            f"writes_per_minute={self.writes_per_minute}, writes_per_day={self.writes_per_day})"
        )

    async def read(self, key: str) -> ReadResult | None:
        validate_key(key)
        await self._admit_read()
        return await self.inner.read(key)

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion:
        # Bad input fails at once instead of after a wait, and uses up no token.
        validate_key(key)
        validate_data(data)
        validate_version(expected, self.name)
        await self._admit_write(key)
        return await self.inner.write(key, data, expected)

    async def create_if_not_exists(self, key: str, data: bytes) -> StorageVersion:
        validate_key(key)
        validate_data(data)
        await self._admit_write(key)
        return await self.inner.create_if_not_exists(key, data)

    def stats(self) -> ThrottleStats:
        """Return a snapshot of the counters, with ``writes_today`` for the current UTC day."""

        today = self._utc_now().date()
        return ThrottleStats(
            total_reads=self._total_reads,
            total_writes=self._total_writes,
            throttled_reads=self._throttled_reads,
            throttled_writes=self._throttled_writes,
            read_delay_seconds=self._read_delay,
            write_delay_seconds=self._write_delay,
            writes_today=self._days.used(today),
            utc_date=today,
            budget_exceeded=self._budget_exceeded,
        )

    async def _admit_read(self) -> None:
        started = self._clock()
        waited = await self._take_token(self._read_bucket, "read")
        self._total_reads += 1
        if waited:
            self._throttled_reads += 1
            self._read_delay += self._clock() - started

    async def _admit_write(self, key: str) -> None:
        started = self._clock()
        today = self._utc_now().date()
        day = self._days.reserve(today)
        waited = False
        try:
            if day > today:
                waited = True
                self._budget_exceeded += 1
                self._warn_budget_exceeded(today, key)
                await self._wait_for_day(day)
            waited = await self._take_token(self._write_bucket, "write") or waited
        except BaseException:
            # Cancelled (or interrupted) before the request was sent: give the day slot back.
            self._days.release(day)
            raise

        self._total_writes += 1
        if waited:
            self._throttled_writes += 1
            self._write_delay += self._clock() - started

    async def _take_token(self, bucket: _TokenBucket | None, kind: str) -> bool:
        """Wait for one token of ``bucket``; return True if that needed a wait."""

        if bucket is None:
            return False
        reservation, wait = bucket.reserve()
        if wait <= 0:
            return False

        logger.debug("delaying a %s on the %s backend by %.3f s", kind, self.name, wait)
        try:
            await self._sleep(wait)
        except BaseException:
            returned = bucket.cancel(reservation)
            logger.debug(
                "a %s waiting on the %s backend was cancelled; %d token(s) returned",
                kind,
                self.name,
                returned,
            )
            raise
        bucket.complete(reservation)
        return True

    async def _wait_for_day(self, day: dt.date) -> None:
        start_of_day = dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)
        while True:
            now = self._utc_now()
            if now >= start_of_day:
                return
            remaining = (start_of_day - now).total_seconds()
            await self._sleep(max(remaining, _MIN_DAY_WAIT_SECONDS))

    def _warn_budget_exceeded(self, today: dt.date, key: str) -> None:
        if today in self._warned_days:
            return
        self._warned_days = {day for day in self._warned_days if day >= today}
        self._warned_days.add(today)
        logger.warning(
            "daily write budget of %d writes on the %s backend is used up for %s (UTC); "
            "delaying writes to %r and others until the next UTC day with room",
            self.writes_per_day,
            self.name,
            today.isoformat(),
            key,
        )

    def _utc_now(self) -> dt.datetime:
        now = self._wall_clock()
        if now.tzinfo is None:
            return now.replace(tzinfo=dt.UTC)
        return now.astimezone(dt.UTC)
