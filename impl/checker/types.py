"""Data types of the linearizability checker: operations, models, verdicts, results and
parsed history files."""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from osqueue.spec.cas import TokenPolicy
from osqueue.spec.history import StoreOperation

MODELS = ("cas-register", "kv", "object-store")
"""Names of the models a history file can be written for."""
HISTORY_DOCS = "docs/history-format.md"
"""The document that describes the history formats, named in error messages."""


class _Unknown:
    """The output of an operation whose result the client never observed."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __reduce__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()
"""Output of an operation with an unobserved result. A model's ``step`` must accept any
result for it (a read that timed out, a write whose response was lost)."""


class Verdict(enum.Enum):
    """The outcome of a check. ``UNKNOWN`` means the budget ran out: it is never a pass."""

    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not linearizable"
    UNKNOWN = "unknown"

    @property
    def passed(self) -> bool:
        return self is Verdict.LINEARIZABLE


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a history: an invocation and its completion as the client saw it.

    ``call`` and ``return_`` are times on one clock (any unit, only their order counts). An
    operation whose completion was never observed is indeterminate: ``return_`` is None, the
    checker ignores ``output`` and passes ``UNKNOWN`` to the model, and the operation may
    take effect at any time after ``call`` or never. ``op_id`` is an optional label from the
    source history, shown in reports.
    """

    client_id: Any
    input: Any
    output: Any
    call: float
    return_: float | None
    op_id: Any = None

    @property
    def indeterminate(self) -> bool:
        return self.return_ is None


def _describe_default(input: Any, output: Any) -> str:
    return f"{input!r} -> {output!r}"


@dataclass(frozen=True, slots=True)
class Model:
    """A sequential specification that histories are checked against.

    ``init()`` returns the initial state. ``step(state, input, output)`` returns
    ``(ok, new_state)``: ``ok`` is False when ``output`` is impossible for ``input`` in
    ``state``. ``step`` must be pure and must accept ``UNKNOWN`` as output with any result.
    States must be hashable and compare with ``==``, unless ``state_key`` maps them to a
    hashable key that does. ``partition(operations)``, when given, splits a history into
    independent sub-histories (for example one per key) that are checked alone: the history
    is linearizable exactly when every part is. ``describe_part(first)`` names a part
    (for example "key '7'") from its first operation in reports.
    """

    name: str
    init: Callable[[], Any]
    step: Callable[[Any, Any, Any], tuple[bool, Any]]
    partition: Callable[[Sequence[Operation]], list[list[Operation]]] | None = None
    describe_operation: Callable[[Any, Any], str] = _describe_default
    describe_state: Callable[[Any], str] = repr
    state_key: Callable[[Any], Hashable] | None = None
    describe_part: Callable[[Operation], str] | None = None


@dataclass(frozen=True, slots=True)
class PartitionResult:
    """The verdict on one independent part of a history.

    Operation numbers index the ``operations`` list given to ``check_operations``.
    ``linearization`` is the longest prefix of a linearization the search found, in order;
    it is complete when the verdict is ``LINEARIZABLE``. When the part is not linearizable,
    ``violating`` lists the operations that could not extend that prefix: first the one
    whose completion forces a decision, then the other candidates that were open then.
    """

    index: int
    verdict: Verdict
    operations: tuple[int, ...]
    linearization: tuple[int, ...]
    violating: tuple[int, ...] = ()
    states: int = 0
    steps: int = 0
    elapsed: float = 0.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict on a whole history, with one ``PartitionResult`` per part.

    ``violating`` and ``longest_linearization`` repeat the fields of the first failing part,
    else of the first undecided part, else of the first part. Each part has its own
    linearization in ``partitions``.
    ``budget_exhausted`` is True when the time or step budget stopped the search.
    """

    verdict: Verdict
    elapsed: float
    violating: tuple[int, ...]
    longest_linearization: tuple[int, ...]
    partitions: tuple[PartitionResult, ...] = field(default=())
    steps: int = 0
    budget_exhausted: bool = False

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE


class HistoryFormatError(ValueError):
    """A history file could not be parsed; the message names the file, line and fix."""


@dataclass(slots=True)
class ParsedHistory:
    """Operations read from one file and the model they are meant for.

    ``store_history`` contains the original records when the file is an object store history
    (``model == "object-store"``), and ``policy`` its token policy from the header.
    ``records`` counts the records (events or JSON lines) read, without the header, so an
    empty history has ``records == 0``. It can exceed ``len(operations)``: a Jepsen
    invocation and its completion make one operation, and object store operations with
    outcome ``failed`` are left out.
    """

    operations: list[Operation]
    model: str
    format: str
    policy: TokenPolicy | None = None
    store_history: list[StoreOperation] | None = None
    header: dict[str, Any] = field(default_factory=dict)
    records: int = 0
