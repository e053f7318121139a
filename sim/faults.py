"""The fault model of the simulated object store: latency distributions and injected faults.

Every probability is per operation and every duration is in seconds of virtual time. All
draws take an explicitly passed ``random.Random``, so a run is a function of its seed.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

MIN_LATENCY = 1e-6
"""Smallest delay the simulator uses, in seconds.

An operation must take effect strictly after its invocation: the store relies on that to
order all operations that take effect at one virtual instant (see ``osqueue.sim.store``).
"""

MAX_TIMEOUT = 86400.0
"""Largest client timeout in seconds of virtual time (one day).

The limit is a chosen bound, far above any real client timeout. Virtual times are floats,
so at about 1e308 seconds ``deadline + late_delay`` rounds to ``deadline`` and the store
would schedule a late write at the instant it enqueues it, and an infinite timeout never
ends the run.
"""

TRANSIENT_STATUSES = (500, 503, 429)
"""HTTP statuses of the transient errors the store can inject."""


@dataclass(frozen=True, slots=True)
class Latency:
    """A distribution of operation latency in seconds.

    ``kind`` is ``"lognormal"`` (parameters ``median`` and ``sigma``, the standard deviation
    of the logarithm), ``"uniform"`` (``low`` to ``high``) or ``"constant"`` (``median``).
    Draws are rounded to microseconds and never fall below ``MIN_LATENCY``.
    """

    kind: str = "lognormal"
    median: float = 0.02
    sigma: float = 0.5
    low: float = 0.0
    high: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("lognormal", "uniform", "constant"):
            raise ValueError(
                f"unknown latency distribution {self.kind!r}; use 'lognormal', 'uniform' or "
                "'constant'"
            )
        if self.kind in ("lognormal", "constant") and self.median <= 0:
            raise ValueError(f"latency median must be > 0 seconds, got {self.median}")
        if self.kind == "lognormal" and self.sigma < 0:
            raise ValueError(f"latency sigma must be >= 0, got {self.sigma}")
        if self.kind == "uniform" and not 0 <= self.low <= self.high:
            raise ValueError(
                f"uniform latency needs 0 <= low <= high, got low={self.low} high={self.high}"
            )

    @classmethod
    def lognormal(cls, median: float, sigma: float) -> Latency:
        return cls("lognormal", median=median, sigma=sigma)

    @classmethod
    def uniform(cls, low: float, high: float) -> Latency:
        return cls("uniform", low=low, high=high)

    @classmethod
    def constant(cls, value: float) -> Latency:
        return cls("constant", median=value)

    def sample(self, rng: random.Random) -> float:
        """Draw one latency in seconds from ``rng``."""

        if self.kind == "lognormal":
            value = rng.lognormvariate(math.log(self.median), self.sigma)
        elif self.kind == "uniform":
            value = rng.uniform(self.low, self.high)
        else:
            value = self.median
        return max(MIN_LATENCY, round(value, 6))


class FaultKind(enum.Enum):
    """A fault the simulated store injected into one operation."""

    DROP_REQUEST = "drop_request"
    """A write never reached the store: not applied; the client times out."""
    DROP_RESPONSE = "drop_response"
    """A write was applied but its response was lost; the client times out."""
    APPLIED_LATE = "applied_late"
    """A write reached the store only after the client had timed out, and took effect then."""
    TIMEOUT = "timeout"
    """The drawn latency exceeded the client timeout without any injected fault."""
    ERROR_500 = "error_500"
    ERROR_503 = "error_503"
    ERROR_429 = "error_429"
    RATE_LIMITED = "rate_limited"
    """A write exceeded the per-object write rate and was rejected with HTTP 429."""
    PRECONDITION_IGNORED = "precondition_ignored"
    """The lying store applied a write whose precondition did not hold."""


def transient_kind(status: int) -> FaultKind:
    """Return the fault kind of an injected transient error with HTTP ``status``."""

    return {500: FaultKind.ERROR_500, 503: FaultKind.ERROR_503, 429: FaultKind.ERROR_429}[status]


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability between 0 and 1, got {value}")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """The faults the simulated store injects into each operation.

    ``drop_request``, ``drop_response`` and ``applied_late`` apply to writes and creates
    only; one draw picks at most one of them. ``error_rate`` applies to every operation and
    picks a status from ``error_statuses`` uniformly. ``write_rate_limit_per_second`` caps
    the writes and creates that reach one object (a token bucket of size
    ``rate_limit_burst``); GCS documents about one write per second per object. ``lying``
    turns the store into a negative control that ignores preconditions.
    """

    read_latency: Latency = field(default_factory=lambda: Latency.lognormal(0.02, 0.5))
    write_latency: Latency = field(default_factory=lambda: Latency.lognormal(0.05, 0.6))
    timeout: float = 1.0
    """Seconds after which a client gives up on an operation that has not completed."""
    drop_request: float = 0.0
    drop_response: float = 0.0
    applied_late: float = 0.0
    late_delay: Latency = field(default_factory=lambda: Latency.uniform(0.01, 2.0))
    """How long after the client timed out an ``applied_late`` write takes effect."""
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = TRANSIENT_STATUSES
    write_rate_limit_per_second: float | None = None
    rate_limit_burst: int = 1
    lying: bool = False
    apply_fraction: float | None = None
    """The fraction of its latency after which an operation takes effect. None draws it
    uniformly from 0.05 to 0.95. A fixed value with constant latencies makes operations of
    different clients take effect at the same instant, which tests of ordering need."""

    def __post_init__(self) -> None:
        for name in ("drop_request", "drop_response", "applied_late", "error_rate"):
            _check_probability(name, getattr(self, name))
        if self.drop_request + self.drop_response + self.applied_late > 1.0:
            raise ValueError(
                "drop_request + drop_response + applied_late must not exceed 1, got "
                f"{self.drop_request + self.drop_response + self.applied_late}"
            )
        if not 0 < self.timeout <= MAX_TIMEOUT:
            raise ValueError(
                f"timeout must be > 0 and <= {MAX_TIMEOUT} seconds (one day), got {self.timeout}"
            )
        unknown = [status for status in self.error_statuses if status not in TRANSIENT_STATUSES]
        if unknown or not self.error_statuses:
            raise ValueError(
                f"error_statuses must be a non-empty subset of {TRANSIENT_STATUSES}, got "
                f"{self.error_statuses}"
            )
        limit = self.write_rate_limit_per_second
        if limit is not None and not (math.isfinite(limit) and limit > 0):
            raise ValueError(
                f"write_rate_limit_per_second must be a finite number > 0 or None (no limit), "
                f"got {limit}"
            )
        if self.apply_fraction is not None and not 0.0 < self.apply_fraction <= 1.0:
            raise ValueError(
                f"apply_fraction must be in (0, 1] or None, got {self.apply_fraction}"
            )
        if self.rate_limit_burst < 1:
            raise ValueError(f"rate_limit_burst must be >= 1, got {self.rate_limit_burst}")

    def to_record(self) -> dict[str, Any]:
        """Return a JSON-ready dict with a stable key order."""

        record = asdict(self)
        record["error_statuses"] = list(self.error_statuses)
        return record


DEFAULT_FAULTS = FaultConfig(
    drop_request=0.02, drop_response=0.02, applied_late=0.02, error_rate=0.05
)
"""The faults ``osqueue sim`` injects by default: 2% of writes each lose their
request, lose their response or take effect late, and 5% of operations get a 500, 503 or
429."""
