"""The history predicates in osqueue.spec.history.

Hand-written histories show each guarantee being broken and named. Histories recorded from
MemoryBackend under concurrency and injected faults must pass under both token policies.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
import trio
import trio.testing
from osqueue.errors import (
    CASConflictError,
    ConflictReason,
    IndeterminateWriteError,
    StorageBackendError,
)
from osqueue.spec.cas import TokenPolicy, content_token
from osqueue.spec.history import (
    GUARANTEES,
    OpKind,
    Outcome,
    StoreOperation,
    Violation,
    check_atomic_cas,
    check_conflict_detection,
    check_history,
    check_no_lost_update,
    check_read_your_writes,
)
from osqueue.storage import MemoryBackend, StorageVersion
from osqueue.storage.memory import Fault

UNIQUE = TokenPolicy.UNIQUE
CONTENT_HASH = TokenPolicy.CONTENT_HASH
A, B, C = b"A", b"B", b"C"
HA, HB, HC = content_token(A), content_token(B), content_token(C)


class HistoryBuilder:
    """Appends operations with consecutive ids; times are given per operation."""

    def __init__(self) -> None:
        self.ops: list[StoreOperation] = []

    def add(
        self,
        client: str,
        kind: OpKind,
        start: float,
        end: float | None,
        outcome: Outcome,
        *,
        data: bytes | None = None,
        expected: str | None = None,
        token: str | None = None,
        key: str = "k",
    ) -> int:
        op_id = len(self.ops) + 1
        self.ops.append(StoreOperation(
            op_id, client, kind, key, start, end, outcome, data, expected, token
        ))
        return op_id

    def create(self, client: str, start: float, end: float | None, outcome: Outcome,
               data: bytes, token: str | None = None) -> int:
        return self.add(client, OpKind.CREATE, start, end, outcome, data=data, token=token)

    def write(self, client: str, start: float, end: float | None, outcome: Outcome,
              data: bytes, expected: str, token: str | None = None) -> int:
        return self.add(
            client, OpKind.WRITE, start, end, outcome, data=data, expected=expected, token=token
        )

    def read(self, client: str, start: float, end: float, token: str | None,
             data: bytes | None = None) -> int:
        outcome = Outcome.ABSENT if token is None else Outcome.OK
        return self.add(client, OpKind.READ, start, end, outcome, data=data, token=token)


def guarantees(violations: Sequence[Violation]) -> set[str]:
    return {violation.guarantee for violation in violations}


def correct_history(policy: TokenPolicy) -> list[StoreOperation]:
    """Return a history a correct store can produce: two clients racing on one key."""

    t = (lambda data, n: content_token(data)) if policy is CONTENT_HASH else (lambda _, n: f"v{n}")
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, t(A, 1))
    h.create("c2", 0.5, 1.5, Outcome.CONFLICT, B)
    h.read("c2", 2, 3, t(A, 1), A)
    h.write("c1", 4, 5, Outcome.OK, B, t(A, 1), t(B, 2))
    h.write("c2", 4.5, 6, Outcome.CONFLICT, C, t(A, 1))
    h.read("c2", 7, 8, t(B, 2), B)
    h.write("c2", 9, 10, Outcome.OK, C, t(B, 2), t(C, 3))
    h.read("c1", 11, 12, t(C, 3), C)
    h.write("c1", 13, None, Outcome.INDETERMINATE, A, t(C, 3))
    h.read("c2", 14, 15, t(A, 4), A)
    h.add("c2", OpKind.READ, 16, 17, Outcome.FAILED)
    return h.ops


@pytest.mark.parametrize("policy", list(TokenPolicy), ids=lambda policy: policy.value)
def test_correct_history_passes(policy: TokenPolicy) -> None:
    assert check_history(correct_history(policy), policy) == []


def test_guarantee_names() -> None:
    assert GUARANTEES == ("read-your-writes", "atomic-cas", "conflict-detection", "no-lost-update")


def test_empty_history_passes() -> None:
    assert check_history([], UNIQUE) == []


def test_lost_update_detected() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, "v1")
    h.read("c2", 2, 3, "v1", A)
    first = h.write("c1", 4, 6, Outcome.OK, B, "v1", "v2")
    second = h.write("c2", 5, 7, Outcome.OK, C, "v1", "v3")

    violations = check_no_lost_update(h.ops, UNIQUE)

    assert len(violations) == 1
    assert violations[0].guarantee == "no-lost-update"
    assert violations[0].op_ids == (first, second)
    assert "replaced the version with token v1" in violations[0].message
    # The two writes overlap, so atomic-cas alone cannot tell which one was wrong.
    assert guarantees(check_history(h.ops, UNIQUE)) == {"no-lost-update"}


def test_write_after_replacement_breaks_atomic_cas() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, "v1")
    h.read("c2", 2, 3, "v1", A)
    first = h.write("c1", 4, 5, Outcome.OK, B, "v1", "v2")
    second = h.write("c2", 6, 7, Outcome.OK, C, "v1", "v3")

    violations = check_atomic_cas(h.ops, UNIQUE)

    assert [violation.op_ids for violation in violations] == [(first, second)]
    assert "had already replaced that version" in violations[0].message
    assert guarantees(check_history(h.ops, UNIQUE)) == {"atomic-cas", "no-lost-update"}


def test_write_with_unseen_token_breaks_atomic_cas() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, "v1")
    bad = h.write("c2", 2, 3, Outcome.OK, B, "v9", "v2")

    violations = check_atomic_cas(h.ops, UNIQUE)

    assert len(violations) == 1
    assert violations[0].guarantee == "atomic-cas"
    assert violations[0].op_ids == (bad,)
    assert "never seen to hold" in violations[0].message


def test_create_over_existing_breaks_atomic_cas() -> None:
    h = HistoryBuilder()
    first = h.create("c1", 0, 1, Outcome.OK, A, "v1")
    second = h.create("c2", 2, 3, Outcome.OK, B, "v2")

    violations = check_atomic_cas(h.ops, UNIQUE)

    assert [violation.op_ids for violation in violations] == [(first, second)]
    assert guarantees(check_history(h.ops, UNIQUE)) == {"atomic-cas"}


def test_overlapping_creates_one_conflicts() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 2, Outcome.OK, A, "v1")
    h.create("c2", 1, 3, Outcome.CONFLICT, B)

    assert check_history(h.ops, UNIQUE) == []


def test_unjustified_write_conflict_detected() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, "v1")
    rejected = h.write("c1", 2, 3, Outcome.CONFLICT, B, "v1")

    violations = check_conflict_detection(h.ops, UNIQUE)

    assert len(violations) == 1
    assert violations[0].guarantee == "conflict-detection"
    assert violations[0].op_ids == (rejected,)
    assert "no other write replaced it" in violations[0].message
    assert guarantees(check_history(h.ops, UNIQUE)) == {"conflict-detection"}


def test_unjustified_create_conflict_detected() -> None:
    h = HistoryBuilder()
    rejected = h.create("c1", 0, 1, Outcome.CONFLICT, A)

    violations = check_conflict_detection(h.ops, UNIQUE)

    assert [violation.op_ids for violation in violations] == [(rejected,)]
    assert "no operation had stored the object" in violations[0].message


def test_conflict_justified_by_concurrent_write() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, "v1")
    h.write("c1", 2, 4, Outcome.OK, B, "v1", "v2")
    h.write("c2", 3, 5, Outcome.CONFLICT, C, "v1")

    assert check_history(h.ops, UNIQUE) == []


def test_conflict_justified_by_indeterminate_write() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, "v1")
    h.write("c2", 2, None, Outcome.INDETERMINATE, B, "v1")
    h.write("c1", 3, 4, Outcome.CONFLICT, C, "v1")

    assert check_history(h.ops, UNIQUE) == []


def test_failed_write_does_not_justify_conflict() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, "v1")
    h.write("c2", 2, 3, Outcome.FAILED, B, "v1")
    rejected = h.write("c1", 4, 5, Outcome.CONFLICT, C, "v1")

    violations = check_history(h.ops, UNIQUE)

    assert [(v.guarantee, v.op_ids) for v in violations] == [("conflict-detection", (rejected,))]


def test_conflict_on_unread_token_is_justified() -> None:
    # A token the key was never seen to hold may well be stale: nothing proves otherwise.
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, "v1")
    h.write("c2", 2, 3, Outcome.CONFLICT, B, "v7")

    assert check_history(h.ops, UNIQUE) == []


def test_read_absent_after_create_breaks_read_your_writes() -> None:
    h = HistoryBuilder()
    created = h.create("c1", 0, 1, Outcome.OK, A, "v1")
    read = h.read("c1", 2, 3, None)

    violations = check_read_your_writes(h.ops, UNIQUE)

    assert len(violations) == 1
    assert violations[0].guarantee == "read-your-writes"
    assert violations[0].op_ids == (created, read)
    assert "read it as absent" in violations[0].message


def test_stale_read_breaks_read_your_writes() -> None:
    h = HistoryBuilder()
    created = h.create("c1", 0, 1, Outcome.OK, A, "v1")
    written = h.write("c1", 2, 3, Outcome.OK, B, "v1", "v2")
    read = h.read("c1", 4, 5, "v1", A)

    violations = check_read_your_writes(h.ops, UNIQUE)

    # The list names the write that produced the token read (the create), too.
    assert [violation.op_ids for violation in violations] == [(created, written, read)]
    assert "does not follow from token v2" in violations[0].message
    assert f"op {created} produced it" in violations[0].message
    assert guarantees(check_history(h.ops, UNIQUE)) == {"read-your-writes"}


def test_read_of_unchained_write_names_producer() -> None:
    # c2's write produced v3 without presenting c1's token v2, so v3 does not follow from
    # c1's write although a write did produce it.
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, "v1")
    written = h.write("c1", 2, 3, Outcome.OK, B, "v1", "v2")
    other = h.write("c2", 2, 4, Outcome.OK, C, "v1", "v3")
    read = h.read("c1", 5, 6, "v3", C)

    violations = check_read_your_writes(h.ops, UNIQUE)

    assert [violation.op_ids for violation in violations] == [(written, other, read)]
    message = violations[0].message
    assert "read token v3" in message
    assert "through any chain of writes that each presented the previous token" in message
    assert f"op {other} produced it" in message
    assert "no later write produced" not in message


def test_read_of_unknown_token_names_no_producer() -> None:
    h = HistoryBuilder()
    written = h.create("c1", 0, 1, Outcome.OK, A, "v1")
    read = h.read("c1", 2, 3, "v9", A)

    violations = check_read_your_writes(h.ops, UNIQUE)

    assert [violation.op_ids for violation in violations] == [(written, read)]
    assert "produced it" not in violations[0].message


def test_stale_read_by_other_client_allowed() -> None:
    # Read-your-writes binds only the writer's own later reads. A stale read by another
    # client is a linearizability question for the checker, not one of these guarantees.
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, "v1")
    h.write("c1", 2, 3, Outcome.OK, B, "v1", "v2")
    h.read("c2", 4, 5, "v1", A)

    assert check_read_your_writes(h.ops, UNIQUE) == []


def test_read_of_later_write_allowed() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, "v1")
    h.write("c2", 2, 3, Outcome.OK, B, "v1", "v2")
    h.write("c2", 4, 5, Outcome.OK, C, "v2", "v3")
    h.read("c1", 6, 7, "v3", C)

    assert check_history(h.ops, UNIQUE) == []


def test_read_during_own_write_not_bound() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, "v1")
    h.write("c1", 2, 5, Outcome.OK, B, "v1", "v2")
    h.read("c1", 3, 4, "v1", A)

    assert check_read_your_writes(h.ops, UNIQUE) == []


def aba_history(ha: str, hb: str, ha_again: str, hc: str) -> list[StoreOperation]:
    """c2 reads A; c1 writes B, then A again; c2 then writes with the token it read."""

    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, ha)
    h.read("c2", 2, 3, ha, A)
    h.write("c1", 4, 5, Outcome.OK, B, ha, hb)
    h.write("c1", 6, 7, Outcome.OK, A, hb, ha_again)
    h.write("c2", 8, 9, Outcome.OK, C, ha, hc)
    return h.ops


def test_aba_allowed_under_content_hash() -> None:
    assert check_history(aba_history(HA, HB, HA, HC), CONTENT_HASH) == []


def test_aba_rejected_under_unique() -> None:
    violations = check_history(aba_history("v1", "v2", "v3", "v4"), UNIQUE)

    assert guarantees(violations) == {"atomic-cas", "no-lost-update"}


def test_content_hash_history_rejected_under_unique() -> None:
    # The same records read as unique tokens: two successful writes replaced the version
    # with token HA, which unique tokens allow only once.
    violations = check_history(aba_history(HA, HB, HA, HC), UNIQUE)

    assert "no-lost-update" in guarantees(violations)


def test_aba_without_restore_rejected_under_content_hash() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, HA)
    h.read("c2", 2, 3, HA, A)
    first = h.write("c1", 4, 5, Outcome.OK, B, HA, HB)
    second = h.write("c2", 6, 7, Outcome.OK, C, HA, HC)

    violations = check_history(h.ops, CONTENT_HASH)

    assert guarantees(violations) == {"atomic-cas", "no-lost-update"}
    assert all(violation.op_ids == (first, second) for violation in violations)


def test_same_bytes_rewrite_allowed_under_content_hash() -> None:
    # Writing the bytes the key already contains keeps its token, so a second writer holding
    # that token still succeeds.
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, HA)
    h.read("c2", 2, 3, HA, A)
    h.write("c1", 4, 5, Outcome.OK, A, HA, HA)
    h.write("c2", 6, 7, Outcome.OK, B, HA, HB)

    assert check_history(h.ops, CONTENT_HASH) == []


def test_aba_restored_by_indeterminate_write() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, HA)
    h.read("c2", 2, 3, HA, A)
    h.write("c1", 4, 5, Outcome.OK, B, HA, HB)
    h.write("c1", 6, None, Outcome.INDETERMINATE, A, HB)
    h.write("c2", 8, 9, Outcome.OK, C, HA, HC)

    assert check_history(h.ops, CONTENT_HASH) == []


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
def test_indeterminate_write_either_way(applied: bool) -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, "v1")
    h.write("c1", 2, None, Outcome.INDETERMINATE, B, "v1")
    if applied:
        h.read("c2", 5, 6, "v2", B)
        h.write("c2", 7, 8, Outcome.OK, C, "v2", "v3")
        h.write("c1", 9, 10, Outcome.CONFLICT, C, "v1")
    else:
        h.read("c2", 5, 6, "v1", A)
        h.write("c2", 7, 8, Outcome.OK, C, "v1", "v2")

    assert check_history(h.ops, UNIQUE) == []


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
def test_indeterminate_write_either_way_content_hash(applied: bool) -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, HA)
    h.write("c1", 2, None, Outcome.INDETERMINATE, B, HA)
    if applied:
        h.read("c1", 5, 6, HB, B)
        h.write("c1", 7, 8, Outcome.OK, C, HB, HC)
    else:
        h.read("c1", 5, 6, HA, A)
        h.write("c1", 7, 8, Outcome.OK, C, HA, HC)

    assert check_history(h.ops, CONTENT_HASH) == []


def test_indeterminate_create_may_have_applied() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, None, Outcome.INDETERMINATE, A)
    h.create("c2", 2, 3, Outcome.CONFLICT, B)
    h.read("c2", 4, 5, "v1", A)
    h.write("c2", 6, 7, Outcome.OK, B, "v1", "v2")

    assert check_history(h.ops, UNIQUE) == []


def test_indeterminate_create_may_not_have_applied() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, None, Outcome.INDETERMINATE, A)
    h.read("c2", 2, 3, None)
    h.create("c2", 4, 5, Outcome.OK, B, "v1")

    assert check_history(h.ops, UNIQUE) == []


def test_keys_checked_separately() -> None:
    h = HistoryBuilder()
    h.add("c1", OpKind.CREATE, 0, 1, Outcome.OK, data=A, token="v1", key="a")
    h.add("c1", OpKind.CREATE, 2, 3, Outcome.OK, data=A, token="v2", key="b")
    h.add("c1", OpKind.READ, 4, 5, Outcome.ABSENT, key="b")

    violations = check_history(h.ops, UNIQUE)

    assert [(v.guarantee, v.op_ids) for v in violations] == [("read-your-writes", (2, 3))]


def test_violations_in_stable_order() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, "v1")
    h.read("c1", 2, 3, None)
    h.write("c1", 4, 5, Outcome.CONFLICT, B, "v1")
    h.create("c2", 6, 7, Outcome.OK, B, "v2")

    first = check_history(h.ops, UNIQUE)
    second = check_history(list(reversed(h.ops)), UNIQUE)

    assert [v.guarantee for v in first] == ["read-your-writes", "atomic-cas", "conflict-detection"]
    assert [v.guarantee for v in second] == [v.guarantee for v in first]


def test_record_round_trip() -> None:
    for op in correct_history(CONTENT_HASH):
        assert StoreOperation.from_record(op.to_record()) == op


def test_may_have_written() -> None:
    h = HistoryBuilder()
    h.create("c1", 0, 1, Outcome.OK, A, "v1")
    h.write("c1", 2, None, Outcome.INDETERMINATE, B, "v1")
    h.write("c1", 3, 4, Outcome.FAILED, B, "v1")
    h.write("c1", 5, 6, Outcome.CONFLICT, B, "v9")
    h.read("c1", 7, 8, "v1", A)

    assert [op.may_have_written for op in h.ops] == [True, True, False, False, False]


# Histories recorded from the memory backend.


def history_token(version: StorageVersion) -> str:
    return str(version.value)


async def record_client(
    store: MemoryBackend,
    client: str,
    rng: random.Random,
    history: list[StoreOperation],
    rounds: int,
) -> None:
    """Run read-then-write rounds on key "k", appending each operation to ``history``.

    Bytes come from a pool of three values, so under content hashes the key often comes
    back to bytes (and a token) it held before.
    """

    for _ in range(rounds):
        start = trio.current_time()
        try:
            result = await store.read("k")
        except StorageBackendError:
            history.append(_op(history, client, OpKind.READ, start, Outcome.FAILED))
            continue
        if result is None:
            history.append(_op(history, client, OpKind.READ, start, Outcome.ABSENT))
        else:
            history.append(_op(
                history, client, OpKind.READ, start, Outcome.OK,
                data=result.data, token=history_token(result.version),
            ))

        data = rng.choice([b"x", b"y", b"z"])
        start = trio.current_time()
        kind = OpKind.CREATE if result is None else OpKind.WRITE
        expected = None if result is None else history_token(result.version)
        try:
            if result is None:
                version = await store.create_if_not_exists("k", data)
            else:
                version = await store.write("k", data, result.version)
        except IndeterminateWriteError:
            outcome, token, end = Outcome.INDETERMINATE, None, None
        except CASConflictError as error:
            # A 409 is not a failed precondition: it is recorded as a failed request.
            failed = error.reason is ConflictReason.CONCURRENT_REQUEST
            outcome = Outcome.FAILED if failed else Outcome.CONFLICT
            token, end = None, trio.current_time()
        except StorageBackendError:
            outcome, token, end = Outcome.FAILED, None, trio.current_time()
        else:
            outcome, token, end = Outcome.OK, history_token(version), trio.current_time()
        history.append(StoreOperation(
            len(history) + 1, client, kind, "k", start, end, outcome, data, expected, token
        ))


def _op(
    history: list[StoreOperation],
    client: str,
    kind: OpKind,
    start: float,
    outcome: Outcome,
    *,
    data: bytes | None = None,
    token: str | None = None,
) -> StoreOperation:
    return StoreOperation(
        len(history) + 1, client, kind, "k", start, trio.current_time(), outcome, data,
        None, token,
    )


def record_memory_history(policy: TokenPolicy, seed: int) -> list[StoreOperation]:
    rng = random.Random(seed)
    latency_rng = random.Random(seed + 1000)
    store = MemoryBackend(
        token_policy=policy,
        latency=lambda: latency_rng.uniform(0.0, 1.0),
        fault_rates={
            Fault.DROP_REQUEST: 0.05,
            Fault.DROP_RESPONSE: 0.05,
            Fault.UNAVAILABLE: 0.05,
            Fault.CONCURRENT_REQUEST: 0.05,
        },
        rng=random.Random(seed + 2000),
    )
    history: list[StoreOperation] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for index in range(4):
                client_rng = random.Random(rng.random())
                nursery.start_soon(record_client, store, f"c{index}", client_rng, history, 25)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return history


@pytest.mark.parametrize("policy", list(TokenPolicy), ids=lambda policy: policy.value)
@pytest.mark.parametrize("seed", range(6))
def test_memory_backend_histories_pass(policy: TokenPolicy, seed: int) -> None:
    history = record_memory_history(policy, seed)

    outcomes = {op.outcome for op in history}
    assert Outcome.CONFLICT in outcomes
    assert check_history(history, policy) == []


@pytest.mark.parametrize("policy", list(TokenPolicy), ids=lambda policy: policy.value)
def test_memory_histories_include_faults(policy: TokenPolicy) -> None:
    outcomes = {op.outcome for seed in range(6) for op in record_memory_history(policy, seed)}

    assert outcomes == set(Outcome)


def test_broken_store_history_detected() -> None:
    # ignore_preconditions makes the memory backend accept stale tokens: the predicates
    # must notice in a history recorded from it.
    store = MemoryBackend(ignore_preconditions=True, latency=0.5)
    history: list[StoreOperation] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for index in range(3):
                nursery.start_soon(
                    record_client, store, f"c{index}", random.Random(index), history, 5
                )

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    assert "no-lost-update" in guarantees(check_history(history, UNIQUE))
