"""``run_conformance``: check any ``StorageBackend`` against the CAS model and the guarantees.

A run works under a fresh random prefix: the caller's factory receives the prefix and
returns a backend whose keys all live under it. The suite's own keys (``seq/...``,
``conc/...``, ``probe/...``) never name ``queue.json``. At the end the run deletes every
key it sent a write to, when the backend supports ``delete``.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
from anyio.from_thread import start_blocking_portal
from osqueue.conformance.concurrent import ConcurrencyConfig, run_scenarios
from osqueue.conformance.report import (
    ConformanceReport,
    Failure,
    GuaranteeResult,
    ScenarioResult,
    Status,
)
from osqueue.conformance.sequential import run_sequential
from osqueue.conformance.session import Session
from osqueue.errors import CASConflictError, ConfigError
from osqueue.spec.cas import TokenPolicy
from osqueue.spec.history import GUARANTEES
from osqueue.storage.base import StorageBackend, SupportsDelete

logger = logging.getLogger(__name__)

BackendFactory = Callable[[str], StorageBackend | Awaitable[StorageBackend]]
"""Called with the run's prefix; returns (or awaits to) a backend scoped to that prefix."""

DEFAULT_PREFIX = "osqueue-conformance"
ASYNC_BACKENDS = ("asyncio", "trio")
DEFAULT_CONCURRENCY = ConcurrencyConfig()
CLEANUP_CONCURRENCY = 8


class BackendFactoryError(TypeError):
    """The backend factory raised, or returned something that is not a ``StorageBackend``."""


class ConformanceFailure(AssertionError):
    """Raised by ``assert_conformance`` when a guarantee fails; the message is the report."""

    def __init__(self, report: ConformanceReport) -> None:
        self.report = report
        super().__init__(report.render_text())


def parse_token_policy(value: TokenPolicy | str | None) -> TokenPolicy | None:
    """Return the ``TokenPolicy`` named by ``value`` (None means: detect it)."""

    if value is None or isinstance(value, TokenPolicy):
        return value
    for policy in TokenPolicy:
        if value.strip().lower() in (policy.value, policy.name.lower()):
            return policy
    raise ConfigError(
        "token_policy",
        f"unknown token policy {value!r}; use 'unique' or 'content-hash', or leave it unset "
        "to detect it",
        "unique",
    )


def run_conformance(
    backend_factory: BackendFactory,
    *,
    token_policy: TokenPolicy | str | None = None,
    examples: int = 100,
    steps: int = 20,
    concurrency: ConcurrencyConfig | None = DEFAULT_CONCURRENCY,
    guarantees: Iterable[str] = GUARANTEES,
    prefix: str = DEFAULT_PREFIX,
    large_values: bool = True,
    derandomize: bool = False,
    shrink_seconds: float = 30.0,
    cleanup: bool = True,
    async_backend: str = "asyncio",
    clock: Callable[[], float] = time.perf_counter,
) -> ConformanceReport:
    """Check the backend that ``backend_factory`` builds; return the per-guarantee report.

    ``backend_factory(prefix)`` is called once, with ``{prefix}/run-{random hex}/``; it may
    be a plain function or a coroutine function. ``token_policy`` is ``unique``,
    ``content-hash`` or None to detect it by writing the same bytes twice. ``examples`` is
    the number of Hypothesis examples per guarantee and ``steps`` the maximum operations
    per example. ``concurrency=None`` skips the concurrent scenarios. ``guarantees`` limits
    the run to some of ``GUARANTEES`` (the others are reported as skipped); it must name
    at least one. ``prefix`` must contain a character other than ``/``.
    ``shrink_seconds`` bounds the time Hypothesis spends shrinking a failure of one
    guarantee; when it runs out, the report shows the shortest failing sequence seen.
    ``async_backend`` is the anyio backend of the run's event loop (``asyncio`` or
    ``trio``).

    A backend that breaks a guarantee or raises during a check shows up in the report
    (FAIL or ERROR), not as an exception. The run raises ``ConfigError`` for invalid
    options and ``BackendFactoryError`` (a ``TypeError``) when the factory raises or does
    not return a ``StorageBackend``. An error of the token-policy probe, such as an
    unreachable server, propagates as the backend raised it. Any exception that ends the
    run early, ``KeyboardInterrupt`` included, propagates after the clean-up and carries
    the clean-up account as its last note (``BaseException.add_note``).
    """

    policy = parse_token_policy(token_policy)
    selected = _validate_guarantees(guarantees)
    _validate_counts(examples=examples, steps=steps)
    if shrink_seconds < 0:
        raise ConfigError("shrink_seconds", f"must be >= 0, got {shrink_seconds!r}", "30")
    _validate_async_backend(async_backend)
    run_prefix = f"{_validate_prefix(prefix)}/run-{secrets.token_hex(6)}/"
    started = clock()
    logger.info("conformance run started under prefix %r", run_prefix)

    with start_blocking_portal(backend=async_backend) as portal:
        backend = portal.call(_build_backend, backend_factory, run_prefix)
        session = Session(portal, backend, policy or TokenPolicy.UNIQUE)
        cleanup_note: str | None = None
        try:
            policy_source = "declared"
            if policy is None:
                session.touch("probe/policy")
                session.policy = portal.call(detect_token_policy, backend, "probe/policy")
                policy_source = "detected"
                logger.info("detected token policy %s", session.policy.value)

            results = {
                name: run_sequential(
                    session, name, examples=examples, steps=steps,
                    large_values=large_values, derandomize=derandomize,
                    shrink_seconds=shrink_seconds, clock=clock,
                )
                for name in selected
            }
            scenarios: list[ScenarioResult] = []
            if concurrency is not None and selected:
                scenarios = portal.call(run_scenarios, session, concurrency, clock)
        except BaseException as error:
            # The caller sees only the exception, so it carries the clean-up account.
            # NOTE: after an interrupt during the concurrent scenarios, their tasks may
            # still be writing while the clean-up deletes, so a key can survive it.
            cleanup_note = _clean_up(session, cleanup, run_prefix)
            error.add_note(cleanup_note)
            raise
        finally:
            if cleanup_note is None:
                cleanup_note = _clean_up(session, cleanup, run_prefix)
            portal.call(_close_backend, backend)

    merged = _merge(results, scenarios, selected)
    report = ConformanceReport(
        backend=getattr(backend, "name", type(backend).__name__),
        prefix=run_prefix,
        token_policy=session.policy,
        policy_source=policy_source,
        results=merged,
        scenarios=tuple(scenarios),
        seconds=clock() - started,
        cleanup=cleanup_note,
    )
    logger.info(
        "conformance run under %r finished in %.1f s: %s",
        run_prefix, report.seconds,
        "all guarantees hold" if report.passed else f"violated {list(report.violated)}",
    )
    return report


def assert_conformance(backend_factory: BackendFactory, **options: Any) -> ConformanceReport:
    """Run ``run_conformance`` and raise ``ConformanceFailure`` unless every guarantee holds."""

    report = run_conformance(backend_factory, **options)
    if not report.passed:
        raise ConformanceFailure(report)
    return report


async def detect_token_policy(backend: StorageBackend, key: str) -> TokenPolicy:
    """Probe the policy: create ``key``, rewrite the same bytes, compare the two tokens.

    Equal tokens mean content hashes; different tokens mean unique tokens. ``key`` must not
    exist; the caller deletes it afterwards.
    """

    data = b"osqueue conformance token-policy probe"
    try:
        first = await backend.create_if_not_exists(key, data)
    except CASConflictError as error:
        raise ConfigError(
            "token_policy",
            f"detection failed: the probe key {key!r} could not be created "
            f"({error.reason.value}); make the backend factory keep keys under the prefix "
            "it receives, or declare the policy",
            "unique",
        ) from error
    try:
        second = await backend.write(key, data, first)
    except CASConflictError as error:
        raise ConfigError(
            "token_policy",
            f"detection failed: rewriting {key!r} with its own token was rejected "
            f"({error.reason.value}); declare the policy instead",
            "unique",
        ) from error
    return TokenPolicy.CONTENT_HASH if second == first else TokenPolicy.UNIQUE


async def _build_backend(factory: BackendFactory, prefix: str) -> StorageBackend:
    name = getattr(factory, "__qualname__", repr(factory))
    try:
        backend = factory(prefix)
        if inspect.isawaitable(backend):
            backend = await backend
    except Exception as error:
        raise BackendFactoryError(
            f"the backend factory {name} failed when called with prefix {prefix!r}: "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(backend, StorageBackend):
        raise BackendFactoryError(
            f"the backend factory returned {type(backend).__name__} {backend!r}, which is not "
            "a StorageBackend; return an object with a name attribute and async read, write "
            "and create_if_not_exists methods"
        )
    return backend


async def _close_backend(backend: StorageBackend) -> None:
    """Close the backend if it offers ``aclose()`` or ``close()``."""

    closer = getattr(backend, "aclose", None) or getattr(backend, "close", None)
    if closer is None:
        return
    result = closer()
    if inspect.isawaitable(result):
        await result


def _clean_up(session: Session, enabled: bool, run_prefix: str) -> str:
    """Delete the keys the run wrote, if ``enabled``; return a one-sentence account.

    The account is the only report of failed deletes: they are logged at INFO, not
    WARNING, so that a cause such as a missing bucket is not printed once per key.
    """

    keys = list(session.touched)
    if not keys:
        return "The run created no objects."
    if not enabled:
        return f"Clean-up was off: {len(keys)} object(s) remain under {run_prefix!r}."
    if not isinstance(session.backend, SupportsDelete):
        return f"The backend has no delete(): {len(keys)} object(s) remain under {run_prefix!r}."
    failed, first_error = session.call(_delete_all, session.backend, keys)
    if failed:
        return (
            f"Clean-up deleted {len(keys) - failed} of {len(keys)} key(s) under "
            f"{run_prefix!r}; {failed} delete(s) failed, the first with {first_error}."
        )
    return f"Deleted the {len(keys)} key(s) the run wrote under {run_prefix!r}."


async def _delete_all(backend: SupportsDelete, keys: list[str]) -> tuple[int, str]:
    """Delete ``keys`` with bounded concurrency; return the failure count and the first error.

    The first error is summarised as its type and HTTP status, because the full message
    usually repeats the error that ended the run.
    """

    limiter = anyio.CapacityLimiter(CLEANUP_CONCURRENCY)
    failed = 0
    first_error = ""

    async def delete(key: str) -> None:
        nonlocal failed, first_error
        async with limiter:
            try:
                await backend.delete(key)
            except Exception as error:  # noqa: BLE001 - clean-up reports and continues
                failed += 1
                first_error = first_error or _summarise(error)
                logger.info("clean-up could not delete %r: %s", key, error)

    async with anyio.create_task_group() as group:
        for key in keys:
            group.start_soon(delete, key)
    return failed, first_error


def _summarise(error: Exception) -> str:
    status = getattr(error, "status", None)
    return type(error).__name__ + ("" if status is None else f" (HTTP {status})")


def _merge(
    sequential: dict[str, GuaranteeResult],
    scenarios: list[ScenarioResult],
    selected: tuple[str, ...],
) -> dict[str, GuaranteeResult]:
    """Fold the scenarios' violations and errors into the per-guarantee results."""

    rounds = sum(scenario.rounds for scenario in scenarios)
    merged: dict[str, GuaranteeResult] = {}
    for name in GUARANTEES:
        if name not in selected:
            merged[name] = GuaranteeResult(name, Status.SKIPPED)
            continue
        result = sequential[name]
        status, failure = result.status, result.failure
        for scenario in scenarios:
            found = next((f for f in scenario.failures if f.guarantee == name), None)
            if found is not None and status is not Status.FAIL:
                status, failure = Status.FAIL, found
            if scenario.error is not None and status is Status.PASS:
                status = Status.ERROR
                failure = Failure(name, f"concurrent: {scenario.name}", scenario.error)
        merged[name] = GuaranteeResult(
            name, status, result.examples, rounds, result.seconds, failure
        )
    return merged


def _validate_guarantees(guarantees: Iterable[str]) -> tuple[str, ...]:
    if isinstance(guarantees, str):
        # A bare string would be read as a sequence of one-letter names.
        guarantees = [guarantees]
    chosen = tuple(guarantees)
    if not chosen:
        raise ConfigError(
            "guarantees",
            f"is empty, so the run would check nothing; name at least one of "
            f"{list(GUARANTEES)}, or leave it unset to check all of them",
            "atomic-cas",
        )
    unknown = [name for name in chosen if name not in GUARANTEES]
    if unknown:
        raise ConfigError(
            "guarantees",
            f"unknown guarantee(s) {unknown}; choose from {list(GUARANTEES)}",
            "atomic-cas",
        )
    return tuple(name for name in GUARANTEES if name in chosen)


def _validate_prefix(prefix: object) -> str:
    """Return ``prefix`` without leading and trailing ``/``; reject one that is empty then."""

    if not isinstance(prefix, str):
        raise ConfigError("prefix", f"must be a str, got {type(prefix).__name__}", DEFAULT_PREFIX)
    stripped = prefix.strip("/")
    if not stripped:
        raise ConfigError(
            "prefix",
            f"{prefix!r} contains no character other than '/'; the run needs a prefix of its "
            "own so that it never touches other objects in the bucket",
            DEFAULT_PREFIX,
        )
    return stripped


def _validate_async_backend(name: object) -> None:
    if name not in ASYNC_BACKENDS:
        raise ConfigError(
            "async_backend",
            f"unknown anyio backend {name!r}; use 'asyncio' or 'trio'",
            "asyncio",
        )


def _validate_counts(**counts: int) -> None:
    for name, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(name, f"must be an int >= 1, got {value!r}", "25")
