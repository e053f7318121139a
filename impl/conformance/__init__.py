"""The osqueue conformance suite: checks any ``StorageBackend`` against the CAS model.

``run_conformance(factory)`` returns a ``ConformanceReport`` with one verdict per guarantee
of ``osqueue.spec.history.GUARANTEES``. See docs/conformance.md.
"""

from osqueue.conformance.concurrent import ConcurrencyConfig
from osqueue.conformance.report import (
    ConformanceReport,
    Failure,
    GuaranteeResult,
    ScenarioResult,
    Status,
    print_report,
    write_histories,
)
from osqueue.conformance.runner import (
    BackendFactory,
    BackendFactoryError,
    ConformanceFailure,
    assert_conformance,
    detect_token_policy,
    run_conformance,
)

__all__ = [
    "BackendFactory",
    "BackendFactoryError",
    "ConcurrencyConfig",
    "ConformanceFailure",
    "ConformanceReport",
    "Failure",
    "GuaranteeResult",
    "ScenarioResult",
    "Status",
    "assert_conformance",
    "detect_token_policy",
    "print_report",
    "run_conformance",
    "write_histories",
]
