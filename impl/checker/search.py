"""The linearizability search (Wing & Gong's algorithm with Lowe's memoization).

A history is a list of call and return events sorted by time, kept as a doubly linked
list. The search walks the list from its head: at a call it tries to apply that operation
to the model state. The operation is linearized if the model accepts it and the pair (set
of linearized operations, new state) was never reached before. Its call and return then
leave the list, the old state goes on a stack, and the walk restarts at the head. Reaching a
return means that operation must already have taken effect, so the search pops the last
choice, puts its events back and tries the next call after it. The history is
linearizable when every determinate operation is linearized, and not linearizable when a
return is reached with an empty stack.

The set of linearized operations is a Python int used as a bitset. The memo contains
(bitset, state) pairs: two paths that linearized the same operations and reached the same
state have the same future, so the second is cut off. The search is iterative, and the
hot loop reads only flat lists indexed by node number, so a step allocates nothing but the
memo key.

Two reductions skip choices that cannot change the verdict, both for indeterminate
operations (no return, output unknown, may be left out):

- such an operation is not linearized where it would leave the state unchanged, since
  leaving it out has the same effect and keeps it available for later;
- twins (indeterminate operations with equal inputs) are linearized in invocation order,
  since any two of them can swap places in a linearization.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from osqueue.checker.types import (
    UNKNOWN,
    CheckResult,
    Model,
    Operation,
    PartitionResult,
    Verdict,
)

logger = logging.getLogger(__name__)

_CHECK_EVERY = 2048
"""Search steps between two reads of the clock, which costs about as much as a step."""


@dataclass(slots=True)
class _Budget:
    """The time and step allowance shared by all parts of one check."""

    deadline: float
    steps_left: float
    max_states: float
    exhausted: bool = False

    def spent(self, steps: int, states: int) -> bool:
        """Return True, and mark the budget exhausted, once a part used up its share."""

        over_limit = steps >= self.steps_left or states >= self.max_states
        if over_limit or time.perf_counter() >= self.deadline:
            self.exhausted = True
        return self.exhausted


def check_operations(
    operations: Sequence[Operation],
    model: Model,
    *,
    timeout: float | None = None,
    max_steps: int | None = None,
    max_states: int | None = None,
) -> CheckResult:
    """Decide whether ``operations`` is linearizable with respect to ``model``.

    ``timeout`` (seconds) and ``max_steps`` (search steps: each linearization of an
    operation and each backtrack counts one) bound the search over all parts together.
    When either runs out, the verdict is ``UNKNOWN`` unless some part was already found not
    linearizable. Parts are checked smallest first, so a cheap violation is found before a
    costly part uses up the budget.

    ``max_states`` bounds the memo of one part, which is what the search's memory grows
    with: about 90 bytes per entry, measured on CPython 3.11. Without it a long search may
    use gigabytes.
    """

    _validate(operations, timeout, max_steps)
    if max_states is not None and max_states < 1:
        raise ValueError(f"max_states must be a positive integer, got {max_states!r}")
    started = time.perf_counter()
    budget = _Budget(
        deadline=math.inf if timeout is None else started + timeout,
        steps_left=math.inf if max_steps is None else max_steps,
        max_states=math.inf if max_states is None else max_states,
    )

    parts = _partition(operations, model)
    logger.debug(
        "checking %d operations in %d part(s) with model %s",
        len(operations),
        len(parts),
        model.name,
    )

    results: list[PartitionResult] = []
    order = sorted(range(len(parts)), key=lambda index: (len(parts[index]), index))
    for index in order:
        members = parts[index]
        if budget.exhausted:
            results.append(PartitionResult(index, Verdict.UNKNOWN, tuple(members), ()))
            continue
        results.append(_check_part(index, members, operations, model, budget))
    results.sort(key=lambda part: part.index)

    elapsed = time.perf_counter() - started
    result = _combine(results, elapsed, budget.exhausted)
    logger.debug(
        "check finished: %s in %.3f s after %d steps", result.verdict.value, elapsed, result.steps
    )
    return result


def _validate(
    operations: Sequence[Operation], timeout: float | None, max_steps: int | None
) -> None:
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a finite positive number of seconds, got {timeout!r}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    for number, op in enumerate(operations):
        if not isinstance(op, Operation):
            raise TypeError(
                f"operation {number} is a {type(op).__name__}, not an Operation; build "
                "histories from osqueue.checker.Operation"
            )
        if not isinstance(op.call, (int, float)):
            raise TypeError(
                f"operation {number} ({op!r}) has invocation time {op.call!r}; "
                "every operation needs a numeric call time"
            )
        returned = op.return_
        if not math.isfinite(op.call) or (returned is not None and not math.isfinite(returned)):
            raise ValueError(
                f"operation {number} ({op!r}) has a non-finite time; call and return times "
                "must be finite numbers"
            )
        if op.return_ is not None and op.return_ < op.call:
            raise ValueError(
                f"operation {number} ({op!r}) returns at {op.return_} before its call at "
                f"{op.call}; every completion must come at or after its invocation"
            )


def _partition(operations: Sequence[Operation], model: Model) -> list[list[int]]:
    """Split the history with ``model.partition``; return parts as lists of operation numbers."""

    if model.partition is None:
        return [list(range(len(operations)))]

    number_of = {id(op): number for number, op in enumerate(operations)}
    parts: list[list[int]] = []
    seen = 0
    for part in model.partition(operations):
        numbers = [number_of[id(op)] for op in part]
        seen += len(numbers)
        parts.append(numbers)
    if seen != len(operations):
        raise ValueError(
            f"model {model.name!r} partitioned {len(operations)} operations into parts "
            f"holding {seen}; a partition must place every operation in exactly one part"
        )
    return parts


def _combine(results: list[PartitionResult], elapsed: float, exhausted: bool) -> CheckResult:
    steps = sum(part.steps for part in results)
    failing = [part for part in results if part.verdict is Verdict.NOT_LINEARIZABLE]
    undecided = [part for part in results if part.verdict is Verdict.UNKNOWN]
    if failing:
        verdict, shown = Verdict.NOT_LINEARIZABLE, failing[0]
    elif undecided:
        verdict, shown = Verdict.UNKNOWN, undecided[0]
    else:
        verdict, shown = Verdict.LINEARIZABLE, results[0] if results else None

    return CheckResult(
        verdict=verdict,
        elapsed=elapsed,
        violating=shown.violating if shown else (),
        longest_linearization=shown.linearization if shown else (),
        partitions=tuple(results),
        steps=steps,
        budget_exhausted=exhausted,
    )


def _check_part(
    index: int,
    members: list[int],
    operations: Sequence[Operation],
    model: Model,
    budget: _Budget,
) -> PartitionResult:
    started = time.perf_counter()
    ops = [operations[number] for number in members]
    verdict, best, blocking, states, steps = _search(ops, model, budget)
    elapsed = time.perf_counter() - started

    violating: tuple[int, ...] = ()
    if verdict is Verdict.NOT_LINEARIZABLE:
        violating = tuple(members[i] for i in blocking)
    logger.debug(
        "part %d: %d operations, %s, %d states, %d steps, %.3f s",
        index,
        len(ops),
        verdict.value,
        states,
        steps,
        elapsed,
    )
    return PartitionResult(
        index=index,
        verdict=verdict,
        operations=tuple(members),
        linearization=tuple(members[i] for i in best),
        violating=violating,
        states=states,
        steps=steps,
        elapsed=elapsed,
    )


def _events(ops: list[Operation]) -> list[tuple[float, int, int]]:
    """Return (time, kind, operation) events sorted by time, kind 0 = call, 1 = return.

    At equal times calls sort before returns, so operations that touch at one instant count
    as concurrent (the permissive reading). An indeterminate operation returns at infinity:
    after every observed event.
    """

    events = []
    for number, op in enumerate(ops):
        events.append((op.call, 0, number))
        events.append((math.inf if op.return_ is None else op.return_, 1, number))
    events.sort()
    return events


def _search(
    ops: list[Operation], model: Model, budget: _Budget
) -> tuple[Verdict, list[int], list[int], int, int]:
    """Run the search on one part.

    Returns the verdict, the longest linearized prefix (operation indexes into ``ops``),
    the operations blocking it (when not linearizable), the memo size and the number of
    search steps (linearizations plus backtracks).
    """

    count = len(ops)
    required = 0
    for number, op in enumerate(ops):
        if op.return_ is not None:
            required |= 1 << number
    if required == 0:
        return Verdict.LINEARIZABLE, [], [], 0, 0

    # Node 0 is the head, nodes 1..2n the events in time order, node 2n+1 the tail.
    events = _events(ops)
    size = 2 * count + 2
    tail = size - 1
    nxt = list(range(1, size)) + [tail]
    prv = [0] + list(range(size - 1))
    op_of = [0] * size
    match = [0] * size
    bit = [0] * size
    inputs: list[object] = [None] * size
    outputs: list[object] = [None] * size
    # Per call node: the model's result for each state number already tried there (see
    # the first visit in the loop). None marks return nodes, where the walk must stop.
    tried: list[dict[int, int] | None] = [None] * size

    call_node = [0] * count
    return_node = [0] * count
    for node, (_, kind, number) in enumerate(events, start=1):
        op_of[node] = number
        if kind == 0:
            call_node[number] = node
        else:
            return_node[number] = node
    prior = _prior_twins(ops, call_node, size)
    for number, op in enumerate(ops):
        node = call_node[number]
        tried[node] = {}
        match[node] = return_node[number]
        bit[node] = 1 << number
        inputs[node] = op.input
        outputs[node] = UNKNOWN if op.return_ is None else op.output

    # States are numbered: states[i] is state number i, and equal states (or states with
    # equal state_key) share a number. A memo entry is one int, the linearized set in the
    # low ``count`` bits and the state number above them: an int hashes and compares
    # faster than a (bitset, state) tuple.
    step = model.step
    state_key = model.state_key
    initial = model.init()
    states: list[object] = [initial]
    numbers: dict[object, int] = {initial if state_key is None else state_key(initial): 0}
    state = 0
    linearized = 0
    memo: set[int] = set()
    memo_add = memo.add
    stack_nodes: list[int] = []
    stack_states: list[int] = []
    push_node = stack_nodes.append
    push_state = stack_states.append
    pop_node = stack_nodes.pop
    pop_state = stack_states.pop

    # The longest prefix is copied only when the search leaves a new maximum depth, so a
    # search that goes straight down copies it once.
    best: list[int] = []
    best_depth = 0
    best_stale = False
    depth = 0
    steps = 0
    step_limit = budget.steps_left
    check_at = min(_CHECK_EVERY, step_limit)

    node = nxt[0]
    verdict = Verdict.UNKNOWN
    while True:
        results = tried[node]
        if results is not None:
            addend = results.get(state)
            if addend is None:
                # First visit of this call in this state: call the model, keep its result
                # (``step`` is pure) and visit the node again. The kept value is 0 when
                # the model rejects, else bit | (new state number << count).
                ok, new_state = step(states[state], inputs[node], outputs[node])
                if ok:
                    key = new_state if state_key is None else state_key(new_state)
                    number = numbers.get(key)
                    if number is None:
                        number = numbers[key] = len(states)
                        states.append(new_state)
                    if number == state and not bit[node] & required:
                        # An indeterminate operation that changes nothing here is never
                        # worth linearizing here: leaving it out gives the same result
                        # and keeps it available for later.
                        results[state] = 0
                    else:
                        results[state] = bit[node] | (number << count)
                else:
                    results[state] = 0
                continue
            if addend:
                key = linearized | addend
                if key not in memo:
                    if prior[node] & linearized != prior[node]:
                        # An earlier twin is still open and goes first (see _prior_twins).
                        node = nxt[node]
                        continue
                    memo_add(key)
                    push_node(node)
                    push_state(state)
                    state = addend >> count
                    linearized |= bit[node]

                    # Lift the call and its return out of the list.
                    before = prv[node]
                    after = nxt[node]
                    nxt[before] = after
                    prv[after] = before
                    ret = match[node]
                    before = prv[ret]
                    after = nxt[ret]
                    nxt[before] = after
                    prv[after] = before

                    depth += 1
                    if depth > best_depth:
                        best_depth = depth
                        best_stale = True
                    if linearized & required == required:
                        verdict = Verdict.LINEARIZABLE
                        break
                    steps += 1
                    if steps >= check_at:
                        if budget.spent(steps, len(memo)):
                            break
                        check_at = min(steps + _CHECK_EVERY, step_limit)
                    node = nxt[0]
                    continue
            node = nxt[node]
        else:
            if depth == 0:
                verdict = Verdict.NOT_LINEARIZABLE
                break

            if best_stale:
                best = [op_of[n] for n in stack_nodes]
                best_stale = False

            # Undo the last choice: restore its events (return first, the reverse of the
            # lift) and go on with the call after it.
            node = pop_node()
            state = pop_state()
            linearized ^= bit[node]
            depth -= 1
            ret = match[node]
            nxt[prv[ret]] = ret
            prv[nxt[ret]] = ret
            nxt[prv[node]] = node
            prv[nxt[node]] = node
            steps += 1
            if steps >= check_at:
                if budget.spent(steps, len(memo)):
                    break
                check_at = min(steps + _CHECK_EVERY, step_limit)
            node = nxt[node]

    budget.steps_left = step_limit - steps
    if verdict is Verdict.LINEARIZABLE or best_stale:
        best = [op_of[n] for n in stack_nodes]
    blocking = _blocking(events, best) if verdict is Verdict.NOT_LINEARIZABLE else []
    return verdict, best, blocking, len(memo), steps


def _prior_twins(ops: list[Operation], call_node: list[int], size: int) -> list[int]:
    """Return, per call node, the bitset of its twins that were invoked earlier.

    Twins are indeterminate operations with equal inputs. Their outputs are unknown and
    they have no return, so two twins can swap places in any linearization. The search
    therefore linearizes twins only in invocation order: an operation waits until its
    earlier twins are linearized. This cuts the search without changing any verdict.
    Operations with unhashable inputs have no twins.
    """

    prior = [0] * size
    seen: dict[object, int] = {}
    for number in sorted(range(len(ops)), key=lambda n: call_node[n]):
        op = ops[number]
        if op.return_ is not None:
            continue
        try:
            earlier = seen.get(op.input, 0)
        except TypeError:
            continue
        prior[call_node[number]] = earlier
        seen[op.input] = earlier | (1 << number)
    return prior


def _blocking(events: list[tuple[float, int, int]], best: list[int]) -> list[int]:
    """Return the operations that could not extend the longest prefix ``best``.

    After removing the prefix, the first remaining return belongs to an operation that had
    to take effect by then. The calls before it are the other choices the search had.
    """

    done = set(best)
    candidates: list[int] = []
    for _, kind, number in events:
        if number in done:
            continue
        if kind == 0:
            candidates.append(number)
            continue
        others = [op for op in candidates if op != number]
        return [number] + others
    return candidates
