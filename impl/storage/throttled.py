"""Placeholder until the throttled backend lands."""


class ThrottledStorageBackend:  # pragma: no cover - replaced
    pass


class ThrottleStats:  # pragma: no cover - replaced
    pass
