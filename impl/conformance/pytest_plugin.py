"""pytest plugin: run the osqueue conformance suite inside a backend author's test session.

Installing osqueue registers this plugin (entry point ``osqueue_conformance``). It only
defines the ``osqueue_conformance`` fixture and adds no options, hooks or markers. A
project that never requests the fixture therefore runs exactly as before. The suite
itself is imported when the fixture is first used.

Usage::

    def make_backend(prefix: str) -> MyBackend:
        return MyBackend(bucket="conformance", prefix=prefix)

    def test_my_backend_conforms(osqueue_conformance):
        report = osqueue_conformance(make_backend, examples=30)
        assert "atomic-cas" not in report.violated  # already true when it returns

The fixture's callable takes the same keyword arguments as
``osqueue.conformance.run_conformance`` (``token_policy``, ``examples``, ``steps``,
``concurrency``, ``guarantees``, ...). It returns the ``ConformanceReport`` when every
guarantee holds and fails the test with the printed report otherwise. Pass
``expect_failure=True`` for a negative control: the call then fails the test when every
guarantee holds, and returns the report so the test can check ``report.violated``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from osqueue.conformance.report import ConformanceReport


ConformanceCheck = Callable[..., "ConformanceReport"]


@pytest.fixture
def osqueue_conformance() -> ConformanceCheck:
    """Return ``check(factory, *, expect_failure=False, **options) -> ConformanceReport``."""

    def check(
        backend_factory: Callable[[str], Any], *, expect_failure: bool = False, **options: Any
    ) -> ConformanceReport:
        from osqueue.conformance.runner import run_conformance

        report = run_conformance(backend_factory, **options)
        if expect_failure and report.passed:
            pytest.fail(
                "expected the backend to violate a guarantee, but all of them held:\n"
                + report.render_text(),
                pytrace=False,
            )
        if not expect_failure and not report.passed:
            pytest.fail(report.render_text(), pytrace=False)
        return report

    return check
