"""Tests of the object store model against osqueue.spec histories."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from osqueue.checker import (
    Verdict,
    check_store_history,
    object_store_model,
    operations_from_store_history,
    parse_history_file,
)
from osqueue.spec.cas import ABSENT, Conflict, ObjectStoreSpec, TokenPolicy, content_token
from osqueue.spec.history import OpKind, Outcome, StoreOperation

UNIQUE = TokenPolicy.UNIQUE
CONTENT = TokenPolicy.CONTENT_HASH


class Recorder:
    """Builds StoreOperation lists with consecutive op ids."""

    def __init__(self) -> None:
        self.ops: list[StoreOperation] = []

    def add(
        self, client, kind, call, ret, outcome, *, key="q", data=None, expected=None, token=None
    ):
        self.ops.append(
            StoreOperation(
                op_id=len(self.ops),
                client=client,
                kind=kind,
                key=key,
                invoked_at=call,
                completed_at=ret,
                outcome=outcome,
                data=data,
                expected=expected,
                token=token,
            )
        )
        return self


def dropped_response_history(second_write: Outcome) -> list[StoreOperation]:
    """Client b's write of b"b" loses its response; later reads show it took effect."""

    completed = None if second_write is Outcome.INDETERMINATE else 4.5
    return (
        Recorder()
        .add("a", OpKind.CREATE, 0, 1, Outcome.OK, data=b"a", token="t1")
        .add("a", OpKind.READ, 2, 3, Outcome.OK, data=b"a", token="t1")
        .add("b", OpKind.WRITE, 4, completed, second_write, data=b"b", expected="t1")
        .add("c", OpKind.READ, 6, 7, Outcome.OK, data=b"a", token="t1")
        .add("c", OpKind.READ, 8, 9, Outcome.OK, data=b"b", token="t2")
        .add("c", OpKind.WRITE, 10, 11, Outcome.OK, data=b"c", expected="t2", token="t3")
        .ops
    )


def test_dropped_response_write_took_effect_later():
    result = check_store_history(dropped_response_history(Outcome.INDETERMINATE), UNIQUE)

    assert result.verdict is Verdict.LINEARIZABLE


# A failed write is left out, so the read of b"b" has no source. A conflict is itself
# impossible: the key held the expected token t1 until the conflict completed.
@pytest.mark.parametrize(
    ("outcome", "first_violating_id"),
    [
        (Outcome.FAILED, 4),
        (Outcome.CONFLICT, 2),
    ],
)
def test_dropped_response_write_recorded_not_applied(outcome, first_violating_id):
    history = dropped_response_history(outcome)
    operations = operations_from_store_history(history)
    result = check_store_history(history, UNIQUE)

    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert operations[result.violating[0]].op_id == first_violating_id


def test_pending_token_cannot_take_minted_token():
    history = (
        Recorder()
        .add("a", OpKind.CREATE, 0, 1, Outcome.OK, data=b"a", token="t1")
        .add("b", OpKind.WRITE, 2, None, Outcome.INDETERMINATE, data=b"b", expected="t1")
        .add("c", OpKind.READ, 5, 6, Outcome.OK, data=b"b", token="t1")
        .ops
    )

    assert check_store_history(history, UNIQUE).verdict is Verdict.NOT_LINEARIZABLE


def test_pending_token_bound_by_successful_write():
    history = (
        Recorder()
        .add("a", OpKind.CREATE, 0, 1, Outcome.OK, data=b"a", token="t1")
        .add("b", OpKind.WRITE, 2, None, Outcome.INDETERMINATE, data=b"b", expected="t1")
        .add("c", OpKind.WRITE, 5, 6, Outcome.OK, data=b"c", expected="t9", token="t10")
        .add("c", OpKind.READ, 7, 8, Outcome.OK, data=b"c", token="t10")
        .ops
    )

    assert check_store_history(history, UNIQUE).verdict is Verdict.LINEARIZABLE


def test_content_hash_token_of_lost_write():
    def history(read_token):
        return (
            Recorder()
            .add("a", OpKind.CREATE, 0, 1, Outcome.OK, data=b"a", token=content_token(b"a"))
            .add(
                "b",
                OpKind.WRITE,
                2,
                None,
                Outcome.INDETERMINATE,
                data=b"b",
                expected=content_token(b"a"),
            )
            .add("c", OpKind.READ, 5, 6, Outcome.OK, data=b"b", token=read_token)
            .ops
        )

    assert (
        check_store_history(history(content_token(b"b")), CONTENT).verdict is Verdict.LINEARIZABLE
    )
    assert check_store_history(history("other"), CONTENT).verdict is Verdict.NOT_LINEARIZABLE


def aba_history(policy: TokenPolicy) -> list[StoreOperation]:
    """The key goes A -> B -> A; then a writer still holding A's first token writes."""

    def token(data, fallback):
        return content_token(data) if policy is CONTENT else fallback

    return (
        Recorder()
        .add("a", OpKind.CREATE, 0, 1, Outcome.OK, data=b"A", token=token(b"A", "v1"))
        .add(
            "b",
            OpKind.WRITE,
            2,
            3,
            Outcome.OK,
            data=b"B",
            expected=token(b"A", "v1"),
            token=token(b"B", "v2"),
        )
        .add(
            "b",
            OpKind.WRITE,
            4,
            5,
            Outcome.OK,
            data=b"A",
            expected=token(b"B", "v2"),
            token=token(b"A", "v3"),
        )
        .add(
            "a",
            OpKind.WRITE,
            6,
            7,
            Outcome.OK,
            data=b"C",
            expected=token(b"A", "v1"),
            token=token(b"C", "v4"),
        )
        .ops
    )


def test_aba_allowed_under_content_hash():
    assert check_store_history(aba_history(CONTENT), CONTENT).verdict is Verdict.LINEARIZABLE


def test_aba_rejected_under_unique_tokens():
    assert check_store_history(aba_history(UNIQUE), UNIQUE).verdict is Verdict.NOT_LINEARIZABLE


def test_lost_update_rejected():
    history = (
        Recorder()
        .add("a", OpKind.CREATE, 0, 1, Outcome.OK, data=b"a", token="t1")
        .add("b", OpKind.WRITE, 2, 3, Outcome.OK, data=b"b", expected="t1", token="t2")
        .add("c", OpKind.WRITE, 2, 4, Outcome.OK, data=b"c", expected="t1", token="t3")
        .ops
    )
    result = check_store_history(history, UNIQUE)

    assert result.verdict is Verdict.NOT_LINEARIZABLE


def test_create_conflict_needs_existing_object():
    created = Recorder().add("a", OpKind.CREATE, 0, 1, Outcome.OK, data=b"a", token="t1")
    lone = Recorder().add("a", OpKind.CREATE, 0, 1, Outcome.CONFLICT, data=b"a")
    created.add("b", OpKind.CREATE, 2, 3, Outcome.CONFLICT, data=b"b")

    assert check_store_history(created.ops, UNIQUE).verdict is Verdict.LINEARIZABLE
    assert check_store_history(lone.ops, UNIQUE).verdict is Verdict.NOT_LINEARIZABLE


def test_read_absent_before_create_only():
    history = (
        Recorder()
        .add("a", OpKind.READ, 0, 1, Outcome.ABSENT)
        .add("a", OpKind.CREATE, 2, 3, Outcome.OK, data=b"a", token="t1")
        .add("b", OpKind.READ, 4, 5, Outcome.ABSENT)
        .ops
    )

    assert check_store_history(history, UNIQUE).verdict is Verdict.NOT_LINEARIZABLE
    assert check_store_history(history[:2], UNIQUE).verdict is Verdict.LINEARIZABLE


def test_keys_checked_as_separate_parts():
    history = (
        Recorder()
        .add("a", OpKind.CREATE, 0, 1, Outcome.OK, key="k1", data=b"a", token="t1")
        .add("a", OpKind.CREATE, 0, 1, Outcome.OK, key="k2", data=b"b", token="t2")
        .add("b", OpKind.READ, 2, 3, Outcome.OK, key="k1", data=b"a", token="t1")
        .ops
    )
    result = check_store_history(history, UNIQUE)

    assert result.verdict is Verdict.LINEARIZABLE
    assert len(result.partitions) == 2


def test_unknown_policy_rejected():
    with pytest.raises(ValueError, match="unknown token policy"):
        object_store_model("md5")


def test_successful_write_without_token_rejected():
    history = Recorder().add("a", OpKind.WRITE, 0, 1, Outcome.OK, data=b"a", expected="t0").ops

    with pytest.raises(ValueError, match="must be ok with a 'token'"):
        operations_from_store_history(history)


# --- histories produced by running ObjectStoreSpec --------------------------------------


def spec_history(policy: TokenPolicy, seed: int, count: int = 60) -> list[StoreOperation]:
    """Run random operations through ObjectStoreSpec and record them.

    Operation i takes effect at time i. Its recorded interval is widened at random around
    i, so the intervals overlap, but the order of effects stays a valid linearization.
    """

    rng = random.Random(seed)
    spec = ObjectStoreSpec(policy)
    state = spec.initial()
    seen: dict[str, list[str]] = {"a": [], "b": []}
    history: list[StoreOperation] = []
    for number in range(count):
        key = rng.choice(("a", "b"))
        kind = rng.choice((OpKind.READ, OpKind.READ, OpKind.WRITE, OpKind.WRITE, OpKind.CREATE))
        data = rng.choice((b"x", b"y", b"z"))
        call = number - rng.uniform(0, 2.5)
        ret = number + rng.uniform(0.1, 2.5)
        expected = token = None
        if kind is OpKind.READ:
            stored = spec.read(state, key)
            if stored is ABSENT:
                outcome, data = Outcome.ABSENT, None
            else:
                outcome, data, token = Outcome.OK, stored.data, stored.token
                seen[key].append(token)
        else:
            if kind is OpKind.WRITE:
                expected = rng.choice(seen[key][-3:] or ["never-minted"])
                state, written = spec.write(state, key, data, expected)
            else:
                state, written = spec.create_if_not_exists(state, key, data)
            if isinstance(written, Conflict):
                outcome = Outcome.CONFLICT
            else:
                outcome, token = Outcome.OK, written.token
                seen[key].append(token)
        history.append(
            StoreOperation(
                number, f"c{number % 7}", kind, key, call, ret, outcome, data, expected, token
            )
        )
    return history


def hide_outcomes(history: list[StoreOperation], seed: int) -> list[StoreOperation]:
    """Mark a third of the writes and creates indeterminate, as lost responses would."""

    rng = random.Random(seed)
    hidden = []
    for op in history:
        if op.kind is not OpKind.READ and rng.random() < 0.33:
            op = dataclasses.replace(
                op, outcome=Outcome.INDETERMINATE, completed_at=None, token=None
            )
        hidden.append(op)
    return hidden


@pytest.mark.parametrize("policy", [UNIQUE, CONTENT])
@pytest.mark.parametrize("seed", range(8))
def test_spec_histories_linearizable(policy, seed):
    history = spec_history(policy, seed)

    assert check_store_history(history, policy, timeout=20).verdict is Verdict.LINEARIZABLE
    hidden = hide_outcomes(history, seed)
    assert check_store_history(hidden, policy, timeout=20).verdict is Verdict.LINEARIZABLE


@pytest.mark.parametrize("policy", [UNIQUE, CONTENT])
@pytest.mark.parametrize("seed", range(8))
def test_spec_histories_forged_read_detected(policy, seed):
    history = spec_history(policy, seed)
    reads = [
        number
        for number, op in enumerate(history)
        if op.kind is OpKind.READ and op.outcome is Outcome.OK
    ]
    target = random.Random(seed).choice(reads)
    history[target] = dataclasses.replace(history[target], data=b"forged", token="forged-token")

    assert check_store_history(history, policy, timeout=20).verdict is Verdict.NOT_LINEARIZABLE


def test_jsonl_store_history_round_trip(tmp_path):
    history = hide_outcomes(spec_history(CONTENT, 3), 3)
    path = tmp_path / "run.jsonl"
    header = {
        "format": "osqueue-history",
        "version": 1,
        "model": "object-store",
        "policy": CONTENT.value,
    }
    lines = [json.dumps(header)] + [json.dumps(op.to_record()) for op in history]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    parsed = parse_history_file(path)

    assert parsed.format == "jsonl"
    assert parsed.model == "object-store"
    assert parsed.policy is CONTENT
    assert parsed.store_history == history
    assert parsed.operations == operations_from_store_history(history)


def random_store_history(rng: random.Random, size: int) -> list[StoreOperation]:
    """Build a small history on one key with random outcomes from a tiny token alphabet."""

    recorder = Recorder()
    tokens = ("t1", "t2", "t3")
    for number in range(size):
        call = rng.randint(0, 10)
        ret = call + rng.randint(0, 5)
        kind = rng.choice((OpKind.READ, OpKind.WRITE, OpKind.CREATE))
        data = rng.choice((b"a", b"b"))
        client = f"c{number}"
        if kind is OpKind.READ:
            outcome = rng.choice((Outcome.OK, Outcome.OK, Outcome.ABSENT, Outcome.INDETERMINATE))
            recorder.add(
                client,
                kind,
                call,
                None if outcome is Outcome.INDETERMINATE else ret,
                outcome,
                data=data if outcome is Outcome.OK else None,
                token=rng.choice(tokens) if outcome is Outcome.OK else None,
            )
            continue
        outcome = rng.choice((Outcome.OK, Outcome.CONFLICT, Outcome.INDETERMINATE))
        recorder.add(
            client,
            kind,
            call,
            None if outcome is Outcome.INDETERMINATE else ret,
            outcome,
            data=data,
            expected=rng.choice(tokens) if kind is OpKind.WRITE else None,
            token=rng.choice(tokens) if outcome is Outcome.OK else None,
        )
    return recorder.ops


@pytest.mark.parametrize("policy", [UNIQUE, CONTENT])
def test_store_search_agrees_with_brute_force(policy):
    from tests.test_checker_search import brute_force_linearizable

    rng = random.Random(41)
    model = object_store_model(policy)
    seen = {True: 0, False: 0}
    for _ in range(300):
        history = random_store_history(rng, rng.randint(1, 6))
        operations = operations_from_store_history(history)
        verdict = check_store_history(history, policy).verdict
        expected = brute_force_linearizable(operations, model)

        assert (verdict is Verdict.LINEARIZABLE) == expected, history
        seen[expected] += 1

    assert seen[True] > 30
    assert seen[False] > 30
