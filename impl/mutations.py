"""Applying a batch of queue mutations to a ``QueueState``.

``apply_batch`` has the semantics of ``osqueue.spec.queue`` (expiry, then each mutation in
order, all at one time ``now``) and produces the same results. It never changes the input
state: it returns a new one, so the caller can re-apply the batch to another state after a
failed write.

Cost: applying B mutations to a state with N jobs takes O(N + B) time, counting the job
types a claim names as part of its size. The input job list is shared, changed jobs are
tracked by slot, and the new list is built once at the end. Claims use cursors that only
move forward over the jobs in position order: one over all slots, and one per job type
over a slot list that the first claim naming types builds in one pass. Small heaps hold
the jobs that a ``Fail`` in the same batch made claimable again behind a cursor.

The engine passes enqueues as ``EncodedEnqueue``, with their payloads already encoded.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from osqueue.spec import queue as spec
from osqueue.state import (
    BrokerRecord,
    CommitRecord,
    Counters,
    DeadLetterRecord,
    JobRecord,
    QueueState,
    decode_payload,
    encode_payload,
)

logger = logging.getLogger(__name__)

DEFAULT_RECENT_COMMITS = 256

_replace = msgspec.structs.replace

# Results without fields are immutable and equal to each other, so one instance serves
# every mutation.
_ACKNOWLEDGED = spec.Acknowledged()
_UNDECODABLE = object()
_NO_JOB_AVAILABLE = spec.NoJobAvailable()


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """The state after a batch and one result per mutation, in order."""

    state: QueueState
    results: list[spec.Result]


class EncodedEnqueue:
    """An ``Enqueue`` whose job payloads are already encoded as raw JSON.

    ``apply_batch`` applies it exactly like ``enqueue``, with ``payloads[i]`` as the payload
    of ``enqueue.jobs[i]``. The engine builds one per submitted enqueue, so that a payload
    that is not JSON fails at submit and only its own caller, and a batch applied again
    after a conflict does not encode its payloads again.
    """

    __slots__ = ("enqueue", "payloads")

    def __init__(self, enqueue: spec.Enqueue, payloads: tuple[msgspec.Raw, ...]) -> None:
        if len(payloads) != len(enqueue.jobs):
            raise ValueError(
                f"EncodedEnqueue needs one payload per job: {len(enqueue.jobs)} jobs, "
                f"{len(payloads)} payloads")
        self.enqueue = enqueue
        self.payloads = payloads

    def __repr__(self) -> str:
        return f"EncodedEnqueue({self.enqueue!r})"

    @classmethod
    def encode(cls, enqueue: spec.Enqueue) -> EncodedEnqueue:
        """Encode the payloads of ``enqueue``; raise ``ValueError`` if one is not JSON."""

        jobs = enqueue.jobs
        if len(jobs) == 1:
            return cls(enqueue, (encode_payload(jobs[0].payload),))
        return cls(enqueue, tuple(encode_payload(job.payload) for job in jobs))


class _Jobs:
    """The job list during a batch: the shared input list plus changes, addressed by slot.

    Slots 0..N-1 are the input jobs and N.. the jobs enqueued in this batch, so slot order
    is position order. A slot holding None is a job that left the queue.
    """

    __slots__ = ("_added", "_base", "_base_size", "_changed", "_index")

    def __init__(self, base: list[JobRecord]) -> None:
        self._base = base
        self._base_size = len(base)
        self._changed: dict[int, JobRecord | None] = {}
        self._added: list[JobRecord | None] = []
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return self._base_size + len(self._added)

    def get(self, slot: int) -> JobRecord | None:
        if slot >= self._base_size:
            return self._added[slot - self._base_size]
        changed = self._changed
        if slot in changed:
            return changed[slot]
        return self._base[slot]

    def set(self, slot: int, job: JobRecord | None) -> None:
        if slot >= self._base_size:
            self._added[slot - self._base_size] = job
        else:
            self._changed[slot] = job

    def add(self, job: JobRecord) -> int:
        slot = self._base_size + len(self._added)
        self._added.append(job)
        if self._index is not None:
            self._index[job.id] = slot
        return slot

    def index(self) -> dict[str, int]:
        """Map job id to slot, built on first use (O(N))."""

        if self._index is None:
            self._index = {job.id: slot for slot, job in enumerate(self._base)}
            for offset, job in enumerate(self._added):
                if job is not None:
                    self._index[job.id] = self._base_size + offset
        return self._index

    def find(self, job_id: str) -> tuple[int, JobRecord] | None:
        slot = self.index().get(job_id)
        if slot is None:
            return None
        job = self.get(slot)
        return None if job is None else (slot, job)

    def is_live(self, job_id: str) -> bool:
        return self.find(job_id) is not None

    def items(self):
        for slot in range(len(self)):
            job = self.get(slot)
            if job is not None:
                yield slot, job

    def build(self) -> list[JobRecord]:
        if not self._changed and not self._added:
            return self._base
        changed = self._changed
        jobs = [changed.get(slot, job) for slot, job in enumerate(self._base)] if changed else list(
            self._base)
        jobs.extend(self._added)
        return [job for job in jobs if job is not None] if self._has_removals() else jobs

    def _has_removals(self) -> bool:
        return any(job is None for job in self._changed.values()) or any(
            job is None for job in self._added)


class _ClaimIndex:
    """Finds the first eligible job for a type filter (see the module docstring).

    A claim of any type scans the slots themselves with one cursor. Claims that name types
    use one slot list per type, built on the first such claim in the batch.
    """

    __slots__ = ("_any_cursor", "_by_type", "_cursors", "_jobs", "_now", "_returned")

    def __init__(self, jobs: _Jobs, now: float) -> None:
        self._jobs = jobs
        self._now = now
        self._any_cursor = 0
        self._by_type: dict[str, list[int]] | None = None
        self._cursors: dict[str, int] = {}
        self._returned: dict[str | None, list[int]] = {}

    def add(self, slot: int, job: JobRecord) -> None:
        """Register a job enqueued after every slot already indexed."""

        # The cursor of untyped claims reaches new slots by itself.
        if self._by_type is not None:
            self._by_type.setdefault(job.type, []).append(slot)

    def returned(self, slot: int, job: JobRecord) -> None:
        """Register a job that became claimable again, possibly behind the cursors."""

        if job.visible_at > self._now:
            return
        heapq.heappush(self._returned.setdefault(None, []), slot)
        heapq.heappush(self._returned.setdefault(job.type, []), slot)

    def first(self, types: tuple[str, ...] | None) -> int | None:
        if types is None:
            best = self._scan_any()
            candidate = self._peek_returned(None) if self._returned else None
            if candidate is not None and (best is None or candidate < best):
                best = candidate
            return best

        best = None
        for key in types:
            for candidate in (self._scan_type(key), self._peek_returned(key)):
                if candidate is not None and (best is None or candidate < best):
                    best = candidate
        return best

    def _eligible(self, slot: int) -> bool:
        job = self._jobs.get(slot)
        return job is not None and job.status == "unclaimed" and job.visible_at <= self._now

    def _scan_any(self) -> int | None:
        jobs = self._jobs
        now = self._now
        cursor = self._any_cursor
        end = len(jobs)
        while cursor < end:
            job = jobs.get(cursor)
            if job is not None and job.status == "unclaimed" and job.visible_at <= now:
                break
            cursor += 1
        self._any_cursor = cursor
        return cursor if cursor < end else None

    def _scan_type(self, key: str) -> int | None:
        if self._by_type is None:
            self._by_type = {}
            for slot, job in self._jobs.items():
                if job.status == "unclaimed":
                    self._by_type.setdefault(job.type, []).append(slot)
        slots = self._by_type.get(key, ())
        cursor = self._cursors.get(key, 0)
        while cursor < len(slots) and not self._eligible(slots[cursor]):
            cursor += 1
        self._cursors[key] = cursor
        return slots[cursor] if cursor < len(slots) else None

    def _peek_returned(self, key: str | None) -> int | None:
        heap = self._returned.get(key)
        while heap and not self._eligible(heap[0]):
            heapq.heappop(heap)
        return heap[0] if heap else None


class _Batch:
    def __init__(self, state: QueueState, now: float) -> None:
        self.state = state
        self.now = now
        self.jobs = _Jobs(state.jobs)
        self.dead_letters: list[DeadLetterRecord] = state.dead_letters
        """The state's dead letters, replaced (never changed in place) by a purge."""
        self.dead: list[DeadLetterRecord] = []
        """Dead letters added by this batch."""
        self.counts = msgspec.structs.asdict(state.counters)
        self.next_position = state.next_position
        self.next_claim = state.next_claim
        self.next_job_number = state.next_job_number
        self._claims: _ClaimIndex | None = None

    # Expiry -----------------------------------------------------------------------------

    def expire(self, timeout: float) -> None:
        now = self.now
        jobs = self.state.jobs
        claimed = [slot for slot, job in enumerate(jobs) if job.status == "in_progress"]
        for slot in claimed:
            job = jobs[slot]
            if not now - job.heartbeat_at > timeout:
                continue
            self.counts["expired"] += 1
            if job.attempts >= job.max_attempts:
                reason = spec.expiry_reason(job.attempts, job.max_attempts, timeout)
                self._dead_letter(slot, job, reason)
            else:
                self.jobs.set(slot, _released(job, "unclaimed", now))

    # Mutations --------------------------------------------------------------------------

    def apply(self, mutation: spec.Mutation | EncodedEnqueue) -> spec.Result:
        # Exact type checks first: this runs once per mutation of every batch.
        kind = type(mutation)
        if kind is spec.Claim:
            return self._claim(mutation)
        if kind is EncodedEnqueue:
            return self._enqueue(mutation.enqueue.jobs, mutation.payloads)
        if kind is spec.Complete or kind is spec.Heartbeat or kind is spec.Fail:
            return self._with_claim(mutation)
        if isinstance(mutation, spec.Enqueue):
            return self._enqueue(mutation.jobs, None)
        if isinstance(mutation, EncodedEnqueue):
            return self._enqueue(mutation.enqueue.jobs, mutation.payloads)
        if isinstance(mutation, spec.Claim):
            return self._claim(mutation)
        if isinstance(mutation, (spec.Heartbeat, spec.Complete, spec.Fail)):
            return self._with_claim(mutation)
        if isinstance(mutation, spec.PurgeDead):
            return self._purge_dead(mutation)
        raise TypeError(f"not a queue mutation: {mutation!r}")

    def _enqueue(
        self, new_jobs: tuple[spec.NewJob, ...], payloads: tuple[msgspec.Raw, ...] | None
    ) -> spec.Result:
        if len(new_jobs) == 1:
            return self._enqueue_one(new_jobs[0], payloads[0] if payloads is not None else None)

        explicit: set[str] = set()
        for new in new_jobs:
            if new.id is None:
                continue
            if new.id in explicit or self.jobs.is_live(new.id):
                return spec.duplicate_id(new.id)
            explicit.add(new.id)

        ids = []
        for index, new in enumerate(new_jobs):
            job_id = new.id
            if job_id is None:
                job_id = spec.job_id_for(self.next_job_number)
                self.next_job_number += 1
            payload = encode_payload(new.payload) if payloads is None else payloads[index]
            job = JobRecord(
                id=job_id, type=new.type, status="unclaimed", attempts=0,
                max_attempts=new.max_attempts, position=self.next_position, visible_at=0.0,
                payload=payload,
            )
            self.next_position += 1
            slot = self.jobs.add(job)
            if self._claims is not None:
                self._claims.add(slot, job)
            ids.append(job_id)
        self.counts["enqueued"] += len(ids)
        return spec.Enqueued(tuple(ids))

    def _enqueue_one(self, new: spec.NewJob, payload: msgspec.Raw | None) -> spec.Result:
        """Enqueue a single job: the common case, without the sets and lists of ``_enqueue``."""

        job_id = new.id
        if job_id is None:
            job_id = spec.job_id_for(self.next_job_number)
            self.next_job_number += 1
        elif self.jobs.is_live(job_id):
            return spec.duplicate_id(job_id)
        job = JobRecord(
            id=job_id, type=new.type, status="unclaimed", attempts=0,
            max_attempts=new.max_attempts, position=self.next_position, visible_at=0.0,
            payload=encode_payload(new.payload) if payload is None else payload,
        )
        self.next_position += 1
        slot = self.jobs.add(job)
        if self._claims is not None:
            self._claims.add(slot, job)
        self.counts["enqueued"] += 1
        return spec.Enqueued((job_id,))

    def _claim(self, mutation: spec.Claim) -> spec.Result:
        claims = self._claims
        if claims is None:
            claims = self._claims = _ClaimIndex(self.jobs, self.now)
        jobs = self.jobs
        while True:
            slot = claims.first(mutation.types)
            if slot is None:
                return _NO_JOB_AVAILABLE
            job = jobs.get(slot)
            payload = self._decoded_payload(slot, job)
            if payload is not _UNDECODABLE:
                break

        token = spec.claim_token_for(self.next_claim)
        self.next_claim += 1
        attempts = job.attempts + 1
        jobs.set(slot, _replace(
            job, status="in_progress", attempts=attempts, claim_token=token,
            claimed_by=mutation.worker, heartbeat_at=self.now,
        ))
        self.counts["claimed"] += 1
        return spec.Claimed(job.id, job.type, payload, attempts, job.max_attempts, token)

    def _decoded_payload(self, slot: int, job: JobRecord) -> Any:
        """Return the decoded payload, or dead-letter the job if its payload does not decode.

        ``encode_payload`` rejects such payloads at submit, so this only happens to a
        ``queue.json`` written by other software. A claim must not stop the writer, so the
        job leaves the queue with the reason and the claim moves on to the next job.
        """

        try:
            return decode_payload(job.payload)
        except (msgspec.DecodeError, RecursionError) as error:
            reason = spec.undecodable_payload_reason(str(error))
            logger.warning("job %r dead-lettered at claim: %s", job.id, reason)
            self._dead_letter(slot, job, reason)
            return _UNDECODABLE

    def _with_claim(self, mutation: spec.Heartbeat | spec.Complete | spec.Fail) -> spec.Result:
        jobs = self.jobs
        slot = jobs.index().get(mutation.job_id)
        job = None if slot is None else jobs.get(slot)
        if job is None:
            return spec.unknown_job(mutation.job_id)
        if job.status != "in_progress" or job.claim_token != mutation.token:
            return spec.stale_claim(mutation.job_id, mutation.token)

        if isinstance(mutation, spec.Complete):
            jobs.set(slot, None)
            self.counts["completed"] += 1
            return _ACKNOWLEDGED
        if isinstance(mutation, spec.Heartbeat):
            jobs.set(slot, _replace(job, heartbeat_at=self.now))
            return _ACKNOWLEDGED
        return self._fail(slot, job, mutation)

    def _fail(self, slot: int, job: JobRecord, mutation: spec.Fail) -> spec.Result:
        if job.attempts >= job.max_attempts:
            reason = spec.fail_reason(job.attempts, job.max_attempts, mutation.error)
            self._dead_letter(slot, job, reason)
            return spec.DeadLettered(reason)

        visible_at = self.now + mutation.delay
        job = _released(job, "unclaimed", visible_at)
        self.jobs.set(slot, job)
        if self._claims is not None:
            self._claims.returned(slot, job)
        self.counts["returned"] += 1
        return spec.Returned(visible_at)

    def _purge_dead(self, mutation: spec.PurgeDead) -> spec.Result:
        # Dead letters of earlier mutations of this batch are in self.dead, after the
        # state's own, so both lists are filtered and their order is kept.
        matches = mutation.matches
        before = len(self.dead_letters) + len(self.dead)
        self.dead_letters = [
            letter for letter in self.dead_letters if not matches(letter.job.id, letter.died_at)]
        self.dead = [letter for letter in self.dead if not matches(letter.job.id, letter.died_at)]
        return spec.Purged(before - len(self.dead_letters) - len(self.dead))

    def _dead_letter(self, slot: int, job: JobRecord, reason: str) -> None:
        self.jobs.set(slot, None)
        dead = _released(job, "dead", job.visible_at)
        self.dead.append(DeadLetterRecord(job=dead, reason=reason, died_at=self.now))
        self.counts["dead"] += 1

    # Result -----------------------------------------------------------------------------

    def finish(
        self, commit_id: str, broker: BrokerRecord, max_recent_commits: int
    ) -> QueueState:
        sequence = self.state.sequence + 1
        recent = self.state.recent_commits[-(max_recent_commits - 1):] if max_recent_commits > 1 else []
        recent = [*recent, CommitRecord(sequence, commit_id)]
        dead_letters = self.dead_letters
        if self.dead:
            dead_letters = [*dead_letters, *self.dead]
        return QueueState(
            schema_version=self.state.schema_version,
            sequence=sequence,
            broker=broker,
            next_position=self.next_position,
            next_claim=self.next_claim,
            next_job_number=self.next_job_number,
            counters=Counters(**self.counts),
            recent_commits=recent,
            jobs=self.jobs.build(),
            dead_letters=dead_letters,
        )


def _released(job: JobRecord, status: str, visible_at: float) -> JobRecord:
    return _replace(
        job, status=status, visible_at=visible_at, claim_token=None, claimed_by=None,
        heartbeat_at=None,
    )


def apply_batch(
    state: QueueState,
    mutations: Sequence[spec.Mutation | EncodedEnqueue],
    *,
    now: float,
    commit_id: str,
    heartbeat_timeout: float,
    broker: BrokerRecord | None = None,
    max_recent_commits: int = DEFAULT_RECENT_COMMITS,
    rejected: dict[int, spec.Rejected] | None = None,
) -> BatchOutcome:
    """Apply expiry and then ``mutations`` at ``now`` as one commit; ``state`` is unchanged.

    The new state has ``sequence + 1``, ``commit_id`` appended to the recent commits (the
    oldest dropped beyond ``max_recent_commits``) and ``broker`` (default: unchanged).
    ``rejected`` maps mutation indexes to a rejection returned without applying them.
    An ``EncodedEnqueue`` is applied like the enqueue it wraps.
    """

    if max_recent_commits < 1:
        raise ValueError(f"max_recent_commits must be >= 1, got {max_recent_commits}")
    batch = _Batch(state, now)
    batch.expire(heartbeat_timeout)
    apply = batch.apply
    if rejected:
        results = [
            rejected[index] if index in rejected else apply(mutation)
            for index, mutation in enumerate(mutations)
        ]
    else:
        results = [apply(mutation) for mutation in mutations]
    new_state = batch.finish(commit_id, broker or state.broker, max_recent_commits)
    return BatchOutcome(new_state, results)
