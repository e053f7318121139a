"""Tests of the linearizability search with the register and key-value models."""

from __future__ import annotations

import random
import time

import pytest
from osqueue.checker import (
    UNKNOWN,
    CheckResult,
    Model,
    Operation,
    Verdict,
    cas_register_model,
    check_operations,
    kv_model,
)


def read(client, value, call, ret):
    return Operation(client, ("read",), value, call, ret)


def write(client, value, call, ret, applied=True):
    return Operation(client, ("write", value), applied, call, ret)


def lost_write(client, value, call):
    """A write whose response never arrived: indeterminate."""

    return Operation(client, ("write", value), UNKNOWN, call, None)


def cas(client, expected, new, swapped, call, ret):
    return Operation(client, ("cas", expected, new), swapped, call, ret)


def check(ops, **budget) -> CheckResult:
    return check_operations(ops, cas_register_model(), **budget)


# --- a register holding 4, three writes that time out, then reads of 0, 4, 0 -----------


def timed_out_writes_history(outcome: str, reads_overlap: bool) -> list[Operation]:
    """Build the history: the register holds 4, writes of 0, 4 and 1 time out, then three
    reads return 0, 4 and 0.

    ``outcome`` "indeterminate" leaves the writes' completions unobserved; "failed" records
    them as certainly not applied. With ``reads_overlap`` the third read is invoked while
    the second is still running, so it may take effect first; otherwise the reads follow
    one another, which needs two writes of 0 and is never linearizable here.
    """

    ops = [write("setup", 4, 0, 1)]
    for client, value, call in (("a", 0, 2), ("b", 4, 3), ("c", 1, 4)):
        if outcome == "indeterminate":
            ops.append(lost_write(client, value, call))
        else:
            ops.append(write(client, value, call, call + 3, applied=False))
    ops.append(read("r1", 0, 10, 11))
    ops.append(read("r2", 4, 12, 13))
    if reads_overlap:
        ops.append(read("r3", 0, 12.5, 14))
    else:
        ops.append(read("r3", 0, 14, 15))
    return ops


def test_timed_out_writes_indeterminate_linearizable():
    result = check(timed_out_writes_history("indeterminate", reads_overlap=True))

    assert result.verdict is Verdict.LINEARIZABLE
    assert result.passed


def test_timed_out_writes_recorded_failed_violation():
    result = check(timed_out_writes_history("failed", reads_overlap=True))

    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert not result.passed
    # Nothing could ever write 0, so the first read of 0 is the operation that fails.
    assert result.violating[0] == 4


def test_sequential_reads_need_two_writes_of_zero():
    result = check(timed_out_writes_history("indeterminate", reads_overlap=False))

    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.violating[0] == 6


def test_timed_out_write_may_be_left_out():
    ops = [write("a", 1, 0, 1), lost_write("b", 2, 2), read("c", 1, 3, 4), read("c", 1, 5, 6)]

    assert check(ops).verdict is Verdict.LINEARIZABLE


# --- a write whose response was dropped takes effect later ----------------------------


def dropped_response_history(recorded_failed: bool) -> list[Operation]:
    second = write("b", 2, 2, 2.5, applied=False) if recorded_failed else lost_write("b", 2, 2)
    return [
        write("a", 1, 0, 1),
        second,
        read("c", 1, 3, 4),
        read("c", 2, 5, 6),
    ]


def test_dropped_response_write_applied_later():
    result = check(dropped_response_history(recorded_failed=False))

    assert result.verdict is Verdict.LINEARIZABLE
    assert result.longest_linearization == (0, 2, 1, 3)


def test_dropped_response_write_recorded_failed():
    result = check(dropped_response_history(recorded_failed=True))

    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.violating == (3,)
    assert result.longest_linearization == (0, 1, 2)


# --- budgets ---------------------------------------------------------------------------


def huge_concurrent_history(writers: int) -> list[Operation]:
    """All writers overlap and none returns, then a read returns a value no client wrote: the
    search must try every subset of writes before it can give up."""

    ops = [lost_write(f"w{i}", i, float(i) / 1000) for i in range(writers)]
    ops.append(read("reader", -1, 10, 11))
    return ops


def test_huge_history_timeout_unknown():
    started = time.perf_counter()
    result = check(huge_concurrent_history(60), timeout=0.3)
    elapsed = time.perf_counter() - started

    assert result.verdict is Verdict.UNKNOWN
    assert not result.passed
    assert result.budget_exhausted
    assert elapsed < 5


def test_huge_history_max_steps_unknown():
    result = check(huge_concurrent_history(60), max_steps=5000)

    assert result.verdict is Verdict.UNKNOWN
    assert result.steps == 5000


def test_huge_history_max_states_unknown():
    result = check(huge_concurrent_history(60), max_states=10_000)

    assert result.verdict is Verdict.UNKNOWN
    assert 10_000 <= result.partitions[0].states < 20_000


def test_small_history_within_budget_decided():
    result = check(huge_concurrent_history(6), timeout=30, max_steps=100_000)

    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert not result.budget_exhausted


@pytest.mark.parametrize(("timeout", "max_steps"), [(0, None), (-1.0, None), (None, 0)])
def test_invalid_budget_rejected(timeout, max_steps):
    with pytest.raises(ValueError):
        check([read("a", None, 0, 1)], timeout=timeout, max_steps=max_steps)


# --- register semantics ----------------------------------------------------------------


def test_empty_history_linearizable():
    result = check([])

    assert result.verdict is Verdict.LINEARIZABLE
    assert result.violating == ()


def test_initial_register_reads_nil():
    assert check([read("a", None, 0, 1)]).verdict is Verdict.LINEARIZABLE
    assert check([read("a", 0, 0, 1)]).verdict is Verdict.NOT_LINEARIZABLE


def test_failed_cas_means_compare_mismatch():
    holds_one = write("a", 1, 0, 1)

    assert check([holds_one, cas("b", 2, 3, False, 2, 3)]).verdict is Verdict.LINEARIZABLE
    assert check([holds_one, cas("b", 1, 3, False, 2, 3)]).verdict is Verdict.NOT_LINEARIZABLE


def test_successful_cas_needs_match():
    holds_one = write("a", 1, 0, 1)
    ops_ok = [holds_one, cas("b", 1, 3, True, 2, 3), read("c", 3, 4, 5)]
    ops_bad = [holds_one, cas("b", 2, 3, True, 2, 3)]

    assert check(ops_ok).verdict is Verdict.LINEARIZABLE
    assert check(ops_bad).verdict is Verdict.NOT_LINEARIZABLE


def test_indeterminate_cas_applies_only_on_match():
    holds_one = write("a", 1, 0, 1)
    maybe_swap = Operation("b", ("cas", 1, 3), UNKNOWN, 2, None)

    assert check([holds_one, maybe_swap, read("c", 3, 4, 5)]).verdict is Verdict.LINEARIZABLE
    assert check([holds_one, maybe_swap, read("c", 1, 4, 5)]).verdict is Verdict.LINEARIZABLE

    wrong_compare = Operation("b", ("cas", 2, 3), UNKNOWN, 2, None)
    assert check([holds_one, wrong_compare, read("c", 3, 4, 5)]).verdict is Verdict.NOT_LINEARIZABLE


def test_timed_out_read_accepts_any_value():
    ops = [write("a", 1, 0, 1), Operation("b", ("read",), UNKNOWN, 2, 3)]

    assert check(ops).verdict is Verdict.LINEARIZABLE


def test_stale_read_after_write_violation():
    ops = [write("a", 1, 0, 1), write("a", 2, 2, 3), read("b", 1, 4, 5)]
    result = check(ops)

    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.longest_linearization == (0, 1)
    assert result.violating == (2,)


def test_concurrent_read_may_see_old_or_new():
    for seen in (1, 2):
        ops = [write("a", 1, 0, 1), write("a", 2, 2, 5), read("b", seen, 3, 4)]
        assert check(ops).verdict is Verdict.LINEARIZABLE


def test_touching_operations_count_as_concurrent():
    ops = [write("a", 1, 0, 2), read("b", None, 2, 3)]

    assert check(ops).verdict is Verdict.LINEARIZABLE


def test_return_before_call_rejected():
    with pytest.raises(ValueError, match="before its call"):
        check([read("a", None, 5, 1)])


def test_non_operation_rejected():
    with pytest.raises(TypeError, match="not an Operation"):
        check([("a", ("read",), None, 0, 1)])


# --- key-value model and partitions ----------------------------------------------------


def kv_op(client, kind, key, value, output, call, ret):
    input = ("get", key) if kind == "get" else (kind, key, value)
    return Operation(client, input, output, call, ret)


def test_kv_partitions_isolate_violation():
    ops = [
        kv_op("a", "put", "x", "1", True, 0, 1),
        kv_op("b", "append", "y", "p", True, 0, 1),
        kv_op("b", "append", "y", "q", True, 2, 3),
        kv_op("c", "get", "y", None, "pq", 4, 5),
        kv_op("c", "get", "x", None, "2", 6, 7),
        kv_op("d", "get", "z", None, "", 0, 1),
    ]
    result = check_operations(ops, kv_model())

    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert len(result.partitions) == 3
    by_key = {ops[part.operations[0]].input[1]: part for part in result.partitions}
    assert by_key["x"].verdict is Verdict.NOT_LINEARIZABLE
    assert by_key["y"].verdict is Verdict.LINEARIZABLE
    assert by_key["z"].verdict is Verdict.LINEARIZABLE
    assert result.violating == (4,)


def test_kv_missing_key_reads_empty():
    ops = [
        kv_op("a", "get", "k", None, "", 0, 1),
        kv_op("a", "append", "k", "z", True, 2, 3),
        kv_op("a", "get", "k", None, "z", 4, 5),
    ]

    assert check_operations(ops, kv_model()).verdict is Verdict.LINEARIZABLE


def test_kv_unpartitioned_model_agrees():
    ops = [
        kv_op("a", "put", "x", "1", True, 0, 1),
        kv_op("b", "put", "y", "2", True, 0, 3),
        kv_op("c", "get", "x", None, "1", 2, 4),
        kv_op("c", "get", "y", None, "2", 5, 6),
    ]
    whole = kv_model()
    single = Model("kv-whole", whole.init, whole.step)

    assert check_operations(ops, single).verdict is Verdict.LINEARIZABLE
    assert check_operations(ops, whole).verdict is Verdict.LINEARIZABLE


def test_bad_partition_rejected():
    def drop_all(ops):
        return []

    model = Model("broken", lambda: None, cas_register_model().step, partition=drop_all)
    with pytest.raises(ValueError, match="exactly one part"):
        check_operations([read("a", None, 0, 1)], model)


def test_state_key_allows_unhashable_states():
    def step(state, input, output):
        if input[0] == "read":
            return output == state.get("value"), state
        return True, {"value": input[1]}

    model = Model(
        "dict-register",
        init=lambda: {"value": None},
        step=step,
        state_key=lambda state: state["value"],
    )
    ok_ops = [write("a", 1, 0, 1), read("b", 1, 2, 3)]
    bad_ops = [write("a", 1, 0, 1), read("b", 2, 2, 3)]

    assert check_operations(ok_ops, model).verdict is Verdict.LINEARIZABLE
    assert check_operations(bad_ops, model).verdict is Verdict.NOT_LINEARIZABLE


def test_violation_in_small_part_beats_budget():
    crowded = [kv_op(f"w{i}", "put", "busy", str(i), UNKNOWN, i / 1000, None) for i in range(60)]
    crowded.append(kv_op("r", "get", "busy", None, "never", 10, 11))
    small = [kv_op("a", "put", "calm", "1", True, 0, 1), kv_op("b", "get", "calm", None, "2", 2, 3)]

    result = check_operations(crowded + small, kv_model(), timeout=0.3)
    by_key = {(crowded + small)[part.operations[0]].input[1]: part for part in result.partitions}

    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert by_key["calm"].verdict is Verdict.NOT_LINEARIZABLE
    assert by_key["busy"].verdict is Verdict.UNKNOWN
    assert result.budget_exhausted


# --- agreement with a brute-force checker ------------------------------------------------


def brute_force_linearizable(ops: list[Operation], model: Model) -> bool:
    """Try every order of every subset that keeps all determinate operations."""

    determinate = [i for i, op in enumerate(ops) if op.return_ is not None]
    optional = [i for i, op in enumerate(ops) if op.return_ is None]

    def precedes(a: int, b: int) -> bool:
        return ops[a].return_ is not None and ops[a].return_ < ops[b].call

    def extend(order: list[int], left: set[int], state) -> bool:
        if not left:
            return True
        for candidate in sorted(left):
            if any(precedes(other, candidate) for other in left if other != candidate):
                continue
            op = ops[candidate]
            output = UNKNOWN if op.return_ is None else op.output
            ok, new_state = model.step(state, op.input, output)
            if ok and extend(order + [candidate], left - {candidate}, new_state):
                return True
        return False

    for mask in range(1 << len(optional)):
        chosen = set(determinate) | {optional[b] for b in range(len(optional)) if mask >> b & 1}
        if extend([], chosen, model.init()):
            return True
    return False


def random_register_history(rng: random.Random, size: int) -> list[Operation]:
    ops = []
    for number in range(size):
        call = rng.randint(0, 12)
        ret = call + rng.randint(0, 6)
        kind = rng.choice(("read", "write", "cas"))
        lost = kind != "read" and rng.random() < 0.25
        if kind == "read":
            ops.append(read(number, rng.choice((None, 0, 1, 2)), call, ret))
        elif kind == "write":
            value = rng.randint(0, 2)
            ops.append(lost_write(number, value, call) if lost else write(number, value, call, ret))
        else:
            expected, new = rng.randint(0, 2), rng.randint(0, 2)
            swapped = UNKNOWN if lost else rng.random() < 0.5
            ops.append(cas(number, expected, new, swapped, call, None if lost else ret))
    return ops


def test_agrees_with_brute_force():
    rng = random.Random(20261204)
    model = cas_register_model()
    seen = {Verdict.LINEARIZABLE: 0, Verdict.NOT_LINEARIZABLE: 0}
    for _ in range(400):
        ops = random_register_history(rng, rng.randint(1, 6))
        verdict = check_operations(ops, model).verdict
        expected = brute_force_linearizable(ops, model)

        assert verdict is (Verdict.LINEARIZABLE if expected else Verdict.NOT_LINEARIZABLE), ops
        seen[verdict] += 1

    assert seen[Verdict.LINEARIZABLE] > 50
    assert seen[Verdict.NOT_LINEARIZABLE] > 50
