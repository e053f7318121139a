"""The properties every queue simulation run must satisfy, checked on a ``QueueRun``.

Three sources are checked. The *client history* is what producers and workers sent and
received, together with the result each request had at the broker. The *commit chain* is every ``queue.json`` the store applied, in order. Each
write is a CAS, so every state in the chain was built on the one before it. The
*storage history* is every store operation of every broker or direct client.

Properties (``PROPERTIES``):

``enqueue-lost``
    every job of an acknowledged enqueue appears in the chain.
``applied-twice``
    no commit id that changed the queue lands twice, no payload is enqueued as two jobs,
    and no worker has more claims in the chain than it made claim requests.
``not-finished``
    after the faults stop, every acknowledged job ends completed or dead-lettered within
    the drain phase.
``claim-token``
    between two consecutive states, an in-progress job changes (heartbeat, completion,
    failure, new claim) only through a request carrying its current claim token, unless
    its heartbeat had expired at the time of the commit. So outside expiry no job has two
    holders, and a stale token never changes a job.
``fifo``
    a claim never receives a job while a job of a type it accepts, with a lower position,
    stays unclaimed and visible across the same commit.
``epochs``
    (brokered runs) epochs never decrease along the chain, and the commits that changed
    the queue form one contiguous run per engine instance: no two brokers acknowledge
    writes in overlapping epochs.
``queue-linearizable``
    the queue history (see ``queue_operations``) is linearizable with respect to
    ``osqueue.sim.queue_model``.
``store-linearizable``
    the storage history passes ``osqueue.spec.history.check_history`` and is
    linearizable with respect to the object-store model.
``no-unexpected-error``
    no component raised an error the simulation does not expect.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from osqueue.checker import (
    UNKNOWN,
    CheckResult,
    Operation,
    check_operations,
    check_store_history,
    object_store_model,
    operations_from_store_history,
    render_html,
)
from osqueue.sim.queue_model import encode_input, encode_output, payload_tag, queue_model
from osqueue.sim.queue_world import NOT_APPLIED, Commit, QueueOp, QueueRun, writer_of
from osqueue.spec import queue as spec
from osqueue.spec.cas import TokenPolicy
from osqueue.spec.history import check_history
from osqueue.state import QueueState

logger = logging.getLogger(__name__)

PROPERTIES = (
    "enqueue-lost",
    "applied-twice",
    "not-finished",
    "claim-token",
    "fifo",
    "epochs",
    "queue-linearizable",
    "store-linearizable",
    "no-unexpected-error",
)

MAX_PER_PROPERTY = 20
"""Violations kept per property; the rest are counted in the message of the last one."""


@dataclass(frozen=True, slots=True)
class QueueViolation:
    """A broken property, with the client operations and commits involved."""

    property: str
    message: str
    involved: tuple[str, ...] = ()


@dataclass(slots=True)
class QueueOutcome:
    """The verdicts on one run. It passes only when no property is violated."""

    violations: list[QueueViolation]
    queue_result: CheckResult | None
    queue_operations: list[Operation] = field(default_factory=list)
    store_result: CheckResult | None = None

    @property
    def passed(self) -> bool:
        return not self.violations

    def violated(self) -> list[str]:
        """Return the names of the violated properties, in ``PROPERTIES`` order."""

        names = {violation.property for violation in self.violations}
        return [name for name in PROPERTIES if name in names]

    def verdict(self, which: str) -> str:
        result = self.queue_result if which == "queue" else self.store_result
        return "not checked" if result is None else result.verdict.value


def _content(state: QueueState) -> tuple:
    """Return the parts of a state that mutations and expiry change."""

    return (state.jobs, state.dead_letters, state.counters, state.next_position,
            state.next_claim, state.next_job_number)


class _Checker:
    def __init__(self, run: QueueRun) -> None:
        self.run = run
        self.violations: list[QueueViolation] = []
        self.counts: dict[str, int] = {}
        self.timeout = run.config.scenario.heartbeat_timeout
        self.token_ops: dict[tuple[str, str, str], list[QueueOp]] = {}
        for op in run.ops:
            mutation = op.mutation
            if isinstance(mutation, (spec.Heartbeat, spec.Complete, spec.Fail)):
                key = (type(mutation).__name__, mutation.job_id, mutation.token)
                self.token_ops.setdefault(key, []).append(op)

    def add(self, name: str, message: str, involved: Sequence[str] = ()) -> None:
        count = self.counts.get(name, 0) + 1
        self.counts[name] = count
        if count <= MAX_PER_PROPERTY:
            self.violations.append(QueueViolation(name, message, tuple(involved)))

    # -- chain ------------------------------------------------------------------------------

    def check_chain(self) -> None:
        commits = self.run.commits
        seen_commit_ids: dict[str, int] = {}
        tags: dict[str, set[str]] = {}
        claims_by_worker: dict[str, set[str]] = {}
        for index, commit in enumerate(commits):
            state = commit.state
            for job in state.jobs:
                tags.setdefault(_tag_of(job), set()).add(job.id)
                if job.claim_token is not None and job.claimed_by is not None:
                    claims_by_worker.setdefault(job.claimed_by, set()).add(job.claim_token)
            if index == 0:
                continue
            previous = commits[index - 1]
            changed = _content(previous.state) != _content(state)
            if changed and state.recent_commits:
                commit_id = state.recent_commits[-1].commit_id
                if commit_id in seen_commit_ids:
                    first = seen_commit_ids[commit_id]
                    self.add("applied-twice",
                             f"commit {commit_id} changed the queue twice: at chain positions "
                             f"{first} and {index} (sequences {commits[first].state.sequence} "
                             f"and {state.sequence})",
                             [_describe_commit(commits[first]), _describe_commit(commit)])
                seen_commit_ids[commit_id] = index
            self.check_transition(previous, commit)

        for tag, ids in sorted(tags.items()):
            if len(ids) > 1:
                self.add("applied-twice",
                         f"payload {tag} was enqueued as {len(ids)} jobs: {sorted(ids)}",
                         self._ops_with_tag(tag))
        requests: dict[str, list[QueueOp]] = {}
        for op in self.run.ops:
            if isinstance(op.mutation, spec.Claim) and _may_have_applied(op) \
                    and not isinstance(op.effect, spec.NoJobAvailable):
                requests.setdefault(op.mutation.worker, []).append(op)
        for worker, tokens in sorted(claims_by_worker.items()):
            landed = requests.get(worker, [])
            if len(tokens) > len(landed):
                self.add("applied-twice",
                         f"worker {worker} holds {len(tokens)} claims in the chain "
                         f"({sorted(tokens, key=_token_number)}) but made only "
                         f"{len(landed)} claim requests that may have landed",
                         [op.describe() for op in landed])

    def check_transition(self, previous: Commit, commit: Commit) -> None:
        before = {job.id: job for job in previous.state.jobs}
        after = {job.id: job for job in commit.state.jobs}
        now = commit.state.broker.heartbeat_at
        new_dead = {letter.job.id for letter in
                    commit.state.dead_letters[len(previous.state.dead_letters):]}

        for job_id, old in before.items():
            if old.status != "in_progress":
                continue
            new = after.get(job_id)
            expired = now - old.heartbeat_at > self.timeout
            if new is not None and new.claim_token == old.claim_token:
                if new.heartbeat_at != old.heartbeat_at:
                    self._require_token("Heartbeat", old, commit, "heartbeat")
                continue
            if expired:
                continue
            if new is None and job_id not in new_dead:
                self._require_token("Complete", old, commit, "completion")
            else:
                self._require_token("Fail", old, commit, "release")

        for job_id, new in after.items():
            if new.status != "in_progress":
                continue
            old = before.get(job_id)
            if old is not None and old.claim_token == new.claim_token:
                continue
            self._check_fifo(previous.state, commit, new, after)

    def _require_token(self, kind: str, job: Any, commit: Commit, what: str) -> None:
        ops = [
            op for op in self.token_ops.get((kind, job.id, job.claim_token), [])
            if op.called_at <= commit.applied_at and _may_have_applied(op)
            and not isinstance(op.effect, spec.Rejected)
        ]
        if ops:
            return
        # The requests that did touch the job, under any token, show who changed it.
        touching = [op.describe() for (_, job_id, _), job_ops in self.token_ops.items()
                    if job_id == job.id for op in job_ops]
        self.add("claim-token",
                 f"job {job.id} held under {job.claim_token} by {job.claimed_by} changed "
                 f"({what}) at sequence {commit.state.sequence} before its heartbeat "
                 f"expired, and no {kind} request carrying that token was invoked before "
                 "the commit and acknowledged or left unanswered",
                 [_describe_commit(commit), *touching[:8]])

    def _check_fifo(self, before: QueueState, commit: Commit, claimed: Any,
                    after: dict[str, Any]) -> None:
        types = self.run.worker_types.get(claimed.claimed_by)
        now = commit.state.broker.heartbeat_at
        for other in before.jobs:
            if other.position >= claimed.position:
                break
            if other.status != "unclaimed" or other.visible_at > now:
                continue
            if types is not None and other.type not in types:
                continue
            still = after.get(other.id)
            if still is not None and still.status == "unclaimed":
                self.add("fifo",
                         f"{claimed.claimed_by} claimed {claimed.id} (position "
                         f"{claimed.position}) at sequence {commit.state.sequence} while "
                         f"{other.id} (position {other.position}, type {other.type}) stayed "
                         "unclaimed and visible",
                         [_describe_commit(commit)])
                return

    def _ops_with_tag(self, tag: str) -> list[str]:
        return [op.describe() for op in self.run.ops
                if isinstance(op.mutation, spec.Enqueue)
                and any(payload_tag(job.payload) == tag for job in op.mutation.jobs)]

    # -- fates -------------------------------------------------------------------------------

    def check_fates(self) -> None:
        commits = self.run.commits
        seen: set[str] = set()
        for commit in commits:
            seen.update(job.id for job in commit.state.jobs)
            seen.update(letter.job.id for letter in commit.state.dead_letters)
        final = commits[-1].state if commits else None
        live = {job.id: job for job in final.jobs} if final is not None else {}
        for op in self.run.ops:
            if not isinstance(op.result, spec.Enqueued):
                continue
            for job_id in op.result.job_ids:
                if job_id not in seen:
                    self.add("enqueue-lost",
                             f"job {job_id} was acknowledged but never appears in queue.json",
                             [op.describe()])
                elif job_id in live:
                    job = live[job_id]
                    self.add("not-finished",
                             f"job {job_id} is still {job.status} (attempt {job.attempts}) "
                             f"{self.run.config.scenario.drain:g} s after the faults stopped",
                             [op.describe()])

    # -- brokers -----------------------------------------------------------------------------

    def check_epochs(self) -> None:
        if self.run.config.scenario.mode != "brokered":
            return
        commits = self.run.commits
        last_epoch = 0
        finished: dict[str, int] = {}
        current: str | None = None
        for index, commit in enumerate(commits):
            state = commit.state
            if state.broker.epoch < last_epoch:
                self.add("epochs",
                         f"epoch went back from {last_epoch} to {state.broker.epoch} at "
                         f"sequence {state.sequence} ({state.broker.address})",
                         [_describe_commit(commits[index - 1]), _describe_commit(commit)])
            last_epoch = max(last_epoch, state.broker.epoch)
            if index == 0 or _content(commits[index - 1].state) == _content(state):
                continue
            writer = writer_of(state)
            if writer == current:
                continue
            if writer in finished:
                self.add("epochs",
                         f"engine {writer} ({state.broker.address}, epoch "
                         f"{state.broker.epoch}) committed again at sequence {state.sequence} "
                         f"after engine {current} had committed: two brokers acknowledged "
                         "writes in overlapping epochs",
                         [_describe_commit(commits[finished[writer]]), _describe_commit(commit)])
            if current is not None:
                finished[current] = index - 1
            current = writer

    # -- histories ---------------------------------------------------------------------------

    def check_queue_history(self, timeout: float) -> tuple[CheckResult | None, list[Operation]]:
        operations = queue_operations(self.run.ops)
        result = check_operations(operations, queue_model(), timeout=timeout,
                                  max_states=2_000_000)
        if not result.passed:
            involved = [_describe_operation(operations[number])
                        for number in result.violating[:8]]
            self.add("queue-linearizable",
                     f"the queue history of {len(operations)} operations is "
                     f"{result.verdict.value} with respect to the queue model",
                     involved)
        return result, operations

    def check_store(self, timeout: float) -> CheckResult:
        history = self.run.store_history
        for violation in check_history(history, TokenPolicy.UNIQUE)[:MAX_PER_PROPERTY]:
            self.add("store-linearizable", f"storage history predicate: {violation}")
        result = check_store_history(history, TokenPolicy.UNIQUE, timeout=timeout)
        if not result.passed:
            self.add("store-linearizable",
                     f"the storage history of {len(history)} operations is "
                     f"{result.verdict.value} with respect to the object-store model")
        return result


def queue_operations(ops: Sequence[QueueOp]) -> list[Operation]:
    """Return the checker operations of the queue history.

    Each request keeps the client's invocation time. Its output is the result the broker
    or direct committer produced, completed at the moment it produced it, even when the
    response was then lost: that result is what the queue did, and the operation took
    effect before it. A request that never reached the queue, or certainly did not take
    effect, is left out. Only requests whose effect the simulator did not observe (the broker crashed
    while committing, or the commit was indeterminate) stay indeterminate, which keeps the
    search small.
    """

    operations = []
    for op in ops:
        if not op.delivered or op.effect is NOT_APPLIED:
            continue
        unknown = op.effect is UNKNOWN
        operations.append(Operation(
            client_id=op.client,
            input=encode_input(op.mutation),
            output=encode_output(op.effect),
            call=op.called_at,
            return_=None if unknown else op.effect_at,
            op_id=op.op_id,
        ))
    return operations


def check_queue_run(run: QueueRun, *, check_timeout: float = 30.0) -> QueueOutcome:
    """Check every property of ``PROPERTIES`` on ``run``.

    ``check_timeout`` bounds each linearizability search in wall seconds; a search that runs
    out gives an ``unknown`` verdict, which fails the run.
    """

    checker = _Checker(run)
    for message in run.unexpected_errors:
        checker.add("no-unexpected-error", message)
    checker.check_chain()
    checker.check_fates()
    if not run.drained and not any(v.property == "not-finished" for v in checker.violations):
        checker.add("not-finished",
                    f"the queue did not drain within {run.config.scenario.drain:g} s after "
                    "the faults stopped")
    checker.check_epochs()
    queue_result, operations = checker.check_queue_history(check_timeout)
    store_result = checker.check_store(check_timeout)
    for name, count in checker.counts.items():
        if count > MAX_PER_PROPERTY:
            logger.info("%d more %s violations not listed", count - MAX_PER_PROPERTY, name)
    return QueueOutcome(checker.violations, queue_result, operations, store_result)


def render_reports(run: QueueRun, outcome: QueueOutcome) -> dict[str, str]:
    """Return the checker's HTML reports by file name: the queue and the storage history."""

    reports = {}
    if outcome.queue_result is not None:
        reports["queue-report.html"] = render_html(
            outcome.queue_result, outcome.queue_operations, queue_model())
    if outcome.store_result is not None:
        reports["store-report.html"] = render_html(
            outcome.store_result, operations_from_store_history(run.store_history),
            object_store_model(TokenPolicy.UNIQUE))
    return reports


def _may_have_applied(op: QueueOp) -> bool:
    """True when ``op`` reached the queue and did not certainly fail there."""

    return op.delivered and op.effect is not NOT_APPLIED


def _tag_of(job: Any) -> str:
    from osqueue.state import decode_payload

    return payload_tag(decode_payload(job.payload))


def _token_number(token: str) -> int:
    return int(token[1:]) if token[1:].isdigit() else -1


def _describe_commit(commit: Commit) -> str:
    state = commit.state
    jobs = " ".join(
        f"{job.id}:{job.status}" + (f"@{job.claim_token}/{job.claimed_by}"
                                    if job.claim_token else "")
        for job in state.jobs[:12])
    more = f" +{len(state.jobs) - 12}" if len(state.jobs) > 12 else ""
    return (f"commit seq {state.sequence} at t={commit.applied_at:.4f} by {writer_of(state)} "
            f"({state.broker.address} epoch {state.broker.epoch}, now "
            f"{state.broker.heartbeat_at:.4f}): {jobs}{more}")


def _describe_operation(operation: Operation) -> str:
    model = queue_model()
    end = "?" if operation.return_ is None else f"{operation.return_:.4f}"
    return (f"#{operation.op_id} {operation.client_id} "
            f"{model.describe_operation(operation.input, operation.output)} "
            f"[{operation.call:.4f}, {end}]")


__all__ = [
    "PROPERTIES",
    "QueueOutcome",
    "QueueViolation",
    "check_queue_run",
    "queue_operations",
    "render_reports",
]
