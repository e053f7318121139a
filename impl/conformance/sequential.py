"""The sequential check: a Hypothesis state machine comparing a backend with ``ObjectStoreSpec``.

Each example starts an empty model and a fresh key namespace. It then applies random
reads, creates and writes to both the backend and the model, and compares every result.
Writes present the last token seen for a key, the one before it, or any token seen
earlier in the example (fresh or stale, sometimes sent to another key).

A mismatch is attributed to one guarantee of ``osqueue.spec.history.GUARANTEES``:

- a read that does not return the bytes and token of the last successful write:
  ``read-your-writes``;
- a conflict where the model applies the write or create: ``conflict-detection``;
- a write that succeeds although an earlier successful write presented the same expected
  token, and so already replaced that version: ``no-lost-update``;
- any other write or create that succeeds where the model rejects it (missing key,
  existing key, a token the key never held or that a create replaced), or a token that
  does not follow the declared policy: ``atomic-cas``.

One Hypothesis run checks one guarantee, so that each guarantee gets its own minimal
failing sequence. A mismatch of another guarantee during that run is logged and the model
follows the backend's outcome, which keeps the later comparisons meaningful.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType

import hypothesis.strategies as st
from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis.errors import Flaky
from hypothesis.reporting import with_reporter
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    rule,
    run_state_machine_as_test,
)
from osqueue.conformance.report import Failure, GuaranteeResult, Status
from osqueue.conformance.session import Session
from osqueue.errors import CASConflictError
from osqueue.spec.cas import (
    ABSENT,
    Conflict,
    ConflictKind,
    ObjectStoreSpec,
    StoredObject,
    StoreState,
    TokenPolicy,
    Written,
)
from osqueue.storage.base import StorageVersion

logger = logging.getLogger(__name__)

KEY_NAMES = ("k0", "k1", "k2")
"""Keys of one example, relative to the example's namespace."""

LARGE_SIZE = 1024 * 1024 + 1
"""Size in bytes of the large values: just over 1 MiB (and so over 1 MB)."""

LARGE_ONE_IN = 16
"""About one value in this many is large, before shrinking."""

_SMALL_POOL = (b"", b"a", b"b", b"\x00\xff")
"""Values drawn often, so identical bytes (and content-hash ABA) come up often."""

_LARGE_FILLS = (b"\x00", b"\xa5")


class GuaranteeViolation(AssertionError):
    """A backend result that the model forbids, attributed to one guarantee."""

    def __init__(self, guarantee: str, message: str) -> None:
        self.guarantee = guarantee
        super().__init__(f"{guarantee}: {message}")
        self.detail = message


@dataclass(frozen=True)
class Payload:
    """Bytes for a write, with a short repr so that failing sequences stay readable."""

    data: bytes

    def __repr__(self) -> str:
        if len(self.data) <= 32:
            return repr(self.data)
        return f"<{len(self.data)} bytes of 0x{self.data[:1].hex()}>"


@dataclass(frozen=True)
class Token:
    """A version token the backend returned, and the key it came from.

    ``version`` is None for the stand-in that a step adds when it got no token (an absent
    read, a conflict). Every step adds exactly one entry to the bundle, so Hypothesis's
    draws never depend on the backend's results, and replaying an example against a
    backend that behaves differently the second time draws the same operations. A write
    that draws a stand-in does nothing.
    """

    key: str
    version: StorageVersion | None

    def __repr__(self) -> str:
        value = "none" if self.version is None else repr(self.version.value)
        return f"Token({self.key}, {value})"


def payloads(large_values: bool) -> st.SearchStrategy[Payload]:
    """Return the strategy for written bytes.

    About three in four values come from a pool of four, so identical bytes (and A -> B -> A
    sequences) are common; the rest are short random bytes, and with ``large_values`` about
    one in ``LARGE_ONE_IN`` is just over 1 MiB. Shrinking moves towards ``b""``.
    """

    large_selector = LARGE_ONE_IN - 1 if large_values else LARGE_ONE_IN

    def choose(draw: tuple[int, bytes, bytes, bytes]) -> Payload:
        selector, pooled, random_bytes, fill = draw
        if selector == large_selector:
            return Payload(fill * LARGE_SIZE)
        if selector >= (LARGE_ONE_IN * 3) // 4:
            return Payload(random_bytes)
        return Payload(pooled)

    return st.tuples(
        st.integers(0, LARGE_ONE_IN - 1),
        st.sampled_from(_SMALL_POOL),
        st.binary(max_size=24),
        st.sampled_from(_LARGE_FILLS),
    ).map(choose)


class ShrinkBudgetExhausted(Exception):
    """Raised at the start of every example once shrinking has run out of time."""


@dataclass
class SequentialContext:
    """State of one guarantee's Hypothesis run, with its example count and shortest failure.

    Shrinking replays many examples, which against a slow server can take minutes. Once
    ``shrink_seconds`` have passed since the first violation, every new example raises
    ``ShrinkBudgetExhausted`` at once, so the run ends quickly. The report then shows
    ``smallest``: the shortest failing sequence seen, taken from the machine's own log.
    """

    session: Session
    guarantee: str
    namespace: str
    """Key prefix of this run's examples, for example ``seq/atomic-cas``."""
    shrink_seconds: float
    clock: Callable[[], float]
    examples: int = 0
    other_violations: dict[str, int] = field(default_factory=dict)
    first_violation_at: float | None = None
    budget_spent: bool = False
    smallest: tuple[tuple[str, ...], GuaranteeViolation] | None = None
    _numbers: itertools.count = field(default_factory=itertools.count)

    def start_example(self) -> str:
        """Count an example and return its key namespace; stop once the budget is spent."""

        if (
            self.first_violation_at is not None
            and self.clock() - self.first_violation_at > self.shrink_seconds
        ):
            self.budget_spent = True
            raise ShrinkBudgetExhausted(self.guarantee)
        self.examples += 1
        return f"{self.namespace}/{next(self._numbers):05d}"

    def record_violation(self, log: list[str], violation: GuaranteeViolation) -> None:
        if self.first_violation_at is None:
            self.first_violation_at = self.clock()
        if self.smallest is None or len(log) <= len(self.smallest[0]):
            self.smallest = (tuple(log), violation)


def build_machine(context: SequentialContext, large_values: bool) -> type[RuleBasedStateMachine]:
    """Return a state machine class bound to ``context`` (one class per guarantee run)."""

    keys = st.sampled_from(KEY_NAMES)
    data = payloads(large_values)

    class ConformanceMachine(RuleBasedStateMachine):
        tokens = Bundle("tokens")

        def __init__(self) -> None:
            super().__init__()
            self.session = context.session
            self.spec = ObjectStoreSpec(context.session.policy)
            self.state: StoreState = self.spec.initial()
            self.namespace = context.start_example()
            self.log: list[str] = []
            # Per key: backend token -> model token, and model token -> the latest backend
            # token seen for it. Tokens are mapped per key because a backend may reuse a
            # token value on another key (a per-object counter) without breaking CAS.
            self.real_to_model: dict[str, dict[StorageVersion, str]] = {
                key: {} for key in KEY_NAMES
            }
            self.model_to_real: dict[str, dict[str, StorageVersion]] = {
                key: {} for key in KEY_NAMES
            }
            self.unseen = itertools.count(1)
            # Per key: model tokens that a successful write presented, that is versions
            # already replaced by a write. A second such write is a lost update.
            self.replaced: dict[str, set[str]] = {key: set() for key in KEY_NAMES}
            # Per key: the token of the last successful operation, so that write_latest
            # can build long chains of successful writes (and A -> B -> A sequences),
            # and the one before it, so that write_previous can present a stale token.
            self.latest: dict[str, Token] = {}
            self.previous: dict[str, Token] = {}

        def full_key(self, key: str) -> str:
            return f"{self.namespace}/{key}"

        @rule(target=tokens, key=keys)
        def read(self, key: str):
            result = self.session.read(self.full_key(key))
            self.log.append(f"read {key} -> " + (
                "absent" if result is None
                else f"{Payload(result.data)!r}, token {result.version.value!r}"
            ))
            expected = self.spec.read(self.state, key)

            if expected is ABSENT:
                if result is None:
                    return self.no_token(key)
                self.violation(
                    "read-your-writes",
                    f"read of {key} returned {len(result.data)} bytes with token "
                    f"{result.version.value!r}, but no successful write or create stored it",
                )
                self.adopt(key, result.data, result.version)
                return self.seen(key, result.version)

            if result is None:
                self.violation(
                    "read-your-writes",
                    f"read of {key} returned no object after a successful write stored "
                    f"{Payload(expected.data)!r} with token {self.real_token(key, expected)!r}",
                )
                self.forget(key)
                return self.no_token(key)

            mapped = self.real_to_model[key].get(result.version)
            if result.data != expected.data or mapped != expected.token:
                self.violation(
                    "read-your-writes",
                    f"read of {key} returned {Payload(result.data)!r} with token "
                    f"{result.version.value!r}, but the last successful write stored "
                    f"{Payload(expected.data)!r} with token "
                    f"{self.real_token(key, expected)!r}",
                )
                self.adopt(key, result.data, result.version)
            return self.seen(key, result.version)

        @rule(target=tokens, key=keys, payload=data)
        def create(self, key: str, payload: Payload):
            outcome = self.session.create(self.full_key(key), payload.data)
            self.log.append(f"create {key} {payload!r} -> {_outcome_text(outcome)}")
            new_state, expected = self.spec.create_if_not_exists(self.state, key, payload.data)

            if isinstance(expected, Written):
                if isinstance(outcome, CASConflictError):
                    self.violation(
                        "conflict-detection",
                        f"create of {key} was rejected ({outcome.reason.value}) although "
                        f"{key} did not exist",
                    )
                    return self.no_token(key)
                self.state = new_state
                self.record_token(key, outcome, expected.token)
                return self.seen(key, outcome)

            if isinstance(outcome, CASConflictError):
                return self.no_token(key)
            self.violation(
                "atomic-cas",
                f"create of {key} succeeded (token {outcome.value!r}) although {key} "
                "already existed; the existing object was overwritten",
            )
            self.adopt(key, payload.data, outcome)
            return self.seen(key, outcome)

        @rule(target=tokens, key=keys, payload=data)
        def write_latest(self, key: str, payload: Payload):
            """Write with the last token seen for ``key``; do nothing if there is none."""

            latest = self.latest.get(key)
            if latest is None:
                return self.no_token(key)
            return self.write(latest, payload, None)

        @rule(target=tokens, key=keys, payload=data)
        def write_previous(self, key: str, payload: Payload):
            """Write with the token seen for ``key`` before the last one; do nothing if none."""

            previous = self.previous.get(key)
            if previous is None:
                return self.no_token(key)
            return self.write(previous, payload, None)

        @rule(
            target=tokens,
            expected=tokens,
            payload=data,
            other_key=st.one_of(st.none(), keys),
        )
        def write(self, expected: Token, payload: Payload, other_key: str | None):
            key = other_key or expected.key
            if expected.version is None:
                return self.no_token(key)
            model_expected = self.model_token(key, expected.version)
            outcome = self.session.write(self.full_key(key), payload.data, expected.version)
            self.log.append(
                f"write {key} {payload!r} expected={expected.version.value!r} "
                f"(from {expected.key}) -> {_outcome_text(outcome)}"
            )
            new_state, result = self.spec.write(self.state, key, payload.data, model_expected)

            if isinstance(result, Written):
                if isinstance(outcome, CASConflictError):
                    self.violation(
                        "conflict-detection",
                        f"write to {key} with expected token {expected.version.value!r} was "
                        f"rejected ({outcome.reason.value}), but {key} held that version"
                        + self.policy_hint(key, expected.version, model_expected),
                    )
                    return self.no_token(key)
                self.state = new_state
                self.replaced[key].add(model_expected)
                self.record_token(key, outcome, result.token)
                return self.seen(key, outcome)

            if isinstance(outcome, CASConflictError):
                return self.no_token(key)
            self.violation(
                *self.explain_applied_write(key, expected, model_expected, result, outcome)
            )
            self.replaced[key].add(model_expected)
            self.adopt(key, payload.data, outcome)
            return self.seen(key, outcome)

        def no_token(self, key: str) -> Token:
            return Token(key, None)

        def seen(self, key: str, version: StorageVersion) -> Token:
            token = Token(key, version)
            latest = self.latest.get(key)
            if latest is not None and latest.version != version:
                self.previous[key] = latest
            self.latest[key] = token
            return token

        def explain_applied_write(
            self,
            key: str,
            expected: Token,
            model_expected: str,
            result: Conflict,
            outcome: StorageVersion,
        ) -> tuple[str, str]:
            """Name the guarantee a write broke by succeeding where the model rejects it."""

            token = expected.version.value
            if result.kind is ConflictKind.MISSING:
                return "atomic-cas", (
                    f"write to {key} with expected token {token!r} succeeded (new token "
                    f"{outcome.value!r}) although {key} did not exist"
                )
            if model_expected in self.replaced[key]:
                return "no-lost-update", (
                    f"write to {key} with expected token {token!r} succeeded (new token "
                    f"{outcome.value!r}), but an earlier successful write had already "
                    "replaced that version, so that write's update was lost"
                )
            if expected.version in self.real_to_model[key]:
                return "atomic-cas", (
                    f"write to {key} with expected token {token!r} succeeded (new token "
                    f"{outcome.value!r}) although {key} no longer held that token"
                )
            return "atomic-cas", (
                f"write to {key} with expected token {token!r} (from {expected.key}) "
                f"succeeded (new token {outcome.value!r}) although {key} never held that "
                "token"
            )

        def violation(self, guarantee: str, message: str) -> None:
            """Raise for the guarantee under test; only log the others."""

            if guarantee == context.guarantee:
                error = GuaranteeViolation(guarantee, message)
                context.record_violation(self.log, error)
                raise error
            context.other_violations[guarantee] = context.other_violations.get(guarantee, 0) + 1
            logger.debug("not under test here, %s: %s", guarantee, message)

        def model_token(self, key: str, version: StorageVersion) -> str:
            """Translate a backend token into the model token it stands for on ``key``."""

            mapped = self.real_to_model[key].get(version)
            if mapped is not None:
                return mapped
            return f"unseen-{next(self.unseen)}"

        def real_token(self, key: str, stored: StoredObject) -> object:
            real = self.model_to_real[key].get(stored.token)
            return None if real is None else real.value

        def record_token(self, key: str, version: StorageVersion, model_token: str) -> None:
            """Map a newly minted backend token; a token standing for two writes is a fault."""

            previous = self.real_to_model[key].get(version)
            if previous is not None and previous != model_token:
                policy = self.session.policy
                hint = (
                    " The tokens look like content hashes: declare the policy with "
                    "--token-policy content-hash (token_policy='content-hash' in Python)."
                    if policy is TokenPolicy.UNIQUE
                    else ""
                )
                self.violation(
                    "atomic-cas",
                    f"a write to {key} returned token {version.value!r}, which {key} already "
                    f"had for other content or an earlier write, so a writer holding the old "
                    f"token could overwrite the new version (policy {policy.value}).{hint}",
                )
            self.real_to_model[key][version] = model_token
            self.model_to_real[key][model_token] = version

        def policy_hint(self, key: str, version: StorageVersion, model_token: str) -> str:
            latest = self.model_to_real[key].get(model_token)
            if self.session.policy is TokenPolicy.CONTENT_HASH and latest != version:
                return (
                    " (identical bytes were stored again under a new token, so the tokens "
                    "look unique: declare the policy with --token-policy unique, or "
                    "token_policy='unique' in Python)"
                )
            return ""

        def adopt(self, key: str, data_value: bytes, version: StorageVersion) -> None:
            """Make the model follow the backend after a mismatch that is not under test."""

            token = self.spec.mint(self.state, data_value)
            self.state = self.state.with_object(key, StoredObject(data_value, token))
            self.real_to_model[key][version] = token
            self.model_to_real[key][token] = version

        def forget(self, key: str) -> None:
            objects = {name: value for name, value in self.state.objects.items() if name != key}
            self.state = StoreState(MappingProxyType(objects), self.state.writes)

    ConformanceMachine.__name__ = "ConformanceMachine"
    ConformanceMachine.__qualname__ = "ConformanceMachine"
    return ConformanceMachine


def _outcome_text(outcome: StorageVersion | CASConflictError) -> str:
    if isinstance(outcome, CASConflictError):
        return f"conflict ({outcome.reason.value})"
    return f"ok, token {outcome.value!r}"


def hypothesis_settings(examples: int, steps: int, derandomize: bool) -> settings:
    """Return the Hypothesis settings of a sequential run.

    No example database (nothing is written to the working directory), no deadline (server
    round trips vary), and no health checks, because slow backends and large values would
    trip them without meaning a fault.
    """

    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        derandomize=derandomize,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.normal,
        print_blob=False,
        report_multiple_bugs=False,
    )


def run_sequential(
    session: Session,
    guarantee: str,
    *,
    examples: int,
    steps: int,
    large_values: bool,
    derandomize: bool = False,
    shrink_seconds: float = 60.0,
    clock: Callable[[], float] = time.perf_counter,
) -> GuaranteeResult:
    """Run the state machine for one guarantee and return its verdict."""

    context = SequentialContext(
        session, guarantee, f"seq/{guarantee}", shrink_seconds=shrink_seconds, clock=clock
    )
    machine = build_machine(context, large_values)
    started = clock()
    logger.info("sequential check of %s started (%d examples)", guarantee, examples)
    try:
        # Hypothesis prints some reports (such as the steps before a flaky error) instead
        # of attaching them to the exception. They go to the log, not to stdout.
        with with_reporter(lambda text: logger.debug("hypothesis: %s", text)):
            run_state_machine_as_test(
                machine, settings=hypothesis_settings(examples, steps, derandomize)
            )
        status, failure = Status.PASS, None
    except Exception as error:  # noqa: BLE001 - every outcome becomes a verdict
        status, failure = _verdict(context, error)
    seconds = clock() - started

    logger.info(
        "sequential check of %s finished: %s after %d examples in %.2f s",
        guarantee, status.value, context.examples, seconds,
    )
    if context.other_violations:
        logger.info(
            "sequential check of %s also saw mismatches of %s",
            guarantee, dict(sorted(context.other_violations.items())),
        )
    return GuaranteeResult(guarantee, status, context.examples, 0, seconds, failure)


def _verdict(context: SequentialContext, error: Exception) -> tuple[Status, Failure]:
    """Turn the exception that ended a Hypothesis run into a verdict and its failure."""

    guarantee = context.guarantee
    if isinstance(error, GuaranteeViolation) and error.guarantee == guarantee:
        return Status.FAIL, _failure(guarantee, error.detail, error)

    # Hypothesis may report the budget's exception itself or, because the example stopped
    # drawing early, an inconsistent-data error; either way the run ended on the budget.
    if context.smallest is not None and context.budget_spent:
        log, violation = context.smallest
        heading = (
            f"Shrinking stopped after {context.shrink_seconds:g} s; the shortest failing "
            "sequence found (operations and their results):"
        )
        return Status.FAIL, Failure(guarantee, "sequential", violation.detail, log, heading)

    # A violation that did not happen again on replay is still a violation: report the
    # shortest sequence that showed it.
    if isinstance(error, Flaky) and context.smallest is not None:
        log, violation = context.smallest
        heading = (
            "The violation did not happen again when Hypothesis replayed the example, so it "
            "was not shrunk. The shortest failing sequence seen (operations and results):"
        )
        return Status.FAIL, Failure(guarantee, "sequential", violation.detail, log, heading)

    logger.warning("sequential check of %s raised %r", guarantee, error)
    return Status.ERROR, _failure(guarantee, f"{type(error).__name__}: {error}", error)


def _failure(guarantee: str, message: str, error: BaseException) -> Failure:
    return Failure(guarantee, "sequential", message, _steps(error))


def _steps(error: BaseException) -> tuple[str, ...]:
    """Return the failing program Hypothesis attached to ``error`` as notes."""

    notes = getattr(error, "__notes__", ())
    return tuple(note for note in notes if not note.startswith("Failing test case"))
