"""Executable model of the job queue: the semantics every osqueue broker must show.

The model is pure: every operation takes a ``QueueModel`` and returns a new one with its
result. Nothing here performs I/O or reads a clock, so ``now`` is always an argument
(seconds on the broker's clock). The engine's state module applies the same mutation types
to ``queue.json``, and the stateful tests compare both against each other.

Jobs
----
A job has an ``id``, a ``type``, a JSON ``payload``, a ``status`` and a count of
``attempts`` (claims so far) bounded by ``max_attempts`` (at least 1). Statuses:

``unclaimed``
    waiting for a worker; claimable once ``visible_at <= now``.
``in_progress``
    claimed by a worker that has the claim token and must send heartbeats.
``done``
    completed by the worker holding the current claim token. Done jobs leave the queue.
``dead``
    out of attempts; the job moves to the dead-letter list together with the reason.
    A job is never dropped without a dead letter.

Operations
----------
``Enqueue``
    adds one or many jobs, in the given order. Ids are unique among live (unclaimed and
    in-progress) jobs: an explicit id that is already live is rejected with
    ``DUPLICATE_ID`` and nothing of that enqueue is added. Jobs without an id get
    ``job-<n>`` from a counter in the state; explicit ids of that form are invalid, so an
    assigned id never collides with another job's id.
``Claim``
    gives the worker the first eligible job (see FIFO guarantee) and a fresh claim token,
    counts an attempt, and starts the heartbeat clock. ``NoJobAvailable`` when none fits.
``Heartbeat``, ``Complete``, ``Fail``
    carry the job id and the claim token. A token that is not the job's current token, or a
    job that is not in progress, is rejected with ``STALE_CLAIM``; a job id that is not live
    is rejected with ``UNKNOWN_JOB``. A rejection is an explicit result, never a silent
    no-op. ``Fail`` gives the job back, visible again after ``delay`` seconds, or moves it
    to the dead letters when it has used all its attempts.
``PurgeDead``
    removes matching dead letters for good (see ``PurgeDead``); their jobs are then no
    longer known to the queue, so ``status_of`` returns None for them.
``expire(now, timeout)``
    returns every in-progress job whose last heartbeat is more than ``timeout`` seconds old
    (``now - heartbeat_at > timeout``), or dead-letters it when it has no attempts left. Its
    claim token becomes stale.

Delivery is at least once: a worker that stalls past the timeout may still run the job
while another worker holds it. Claim tokens let the queue reject the stale worker's
``Complete``, but not undo the work it did.

FIFO guarantee
--------------
Every job gets a position when it is enqueued (the order of commits, and within one
``Enqueue`` the order of its jobs). A claim receives, among the jobs that are unclaimed,
visible (``visible_at <= now``) and of a type the claim accepts, the one with the lowest
position. A job that fails or expires keeps its original position: once visible again it
is claimed before every eligible job enqueued after it. Jobs of other types, jobs still
delayed and jobs in progress do not block a claim.

Claim tokens are ``c<n>`` from a counter in the state, so a token is never issued twice,
even for a job id that is enqueued again after it was done.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_MAX_ATTEMPTS = 3
_ASSIGNED_ID = re.compile(r"job-[0-9]+")


class JobStatus(enum.Enum):
    """Where a job is in its life cycle. See the module docstring."""

    UNCLAIMED = "unclaimed"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    DEAD = "dead"


class RejectReason(enum.Enum):
    """Why a mutation was rejected. A rejected mutation changed nothing."""

    UNKNOWN_JOB = "unknown_job"
    """No live job has this id: it was never enqueued, or it is done or dead."""
    STALE_CLAIM = "stale_claim"
    """The claim token is not the job's current one, or the job is not in progress."""
    DUPLICATE_ID = "duplicate_id"
    """An enqueue named an id that a live job already has."""
    STATE_TOO_LARGE = "state_too_large"
    """Applying the mutation would make the encoded state exceed the configured maximum."""


# ----------------------------------------------------------------------------------------
# Mutations. Constructors validate their fields, so an invalid mutation cannot be built.
# ----------------------------------------------------------------------------------------


def _require_text(name: str, value: object, example: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}; for example {example!r}")


def _require_time(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to enqueue. ``payload`` is any JSON value; ``id`` is optional."""

    type: str
    payload: Any = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    id: str | None = None

    def __post_init__(self) -> None:
        _require_text("job type", self.type, "email")
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(
                f"max_attempts must be >= 1, got {self.max_attempts}; use 1 for a job that is "
                "never retried"
            )
        if self.id is not None:
            _require_text("job id", self.id, "order-42")
            if _ASSIGNED_ID.fullmatch(self.id):
                raise ValueError(
                    f"job id {self.id!r} has the form job-<n>, which is reserved for ids the "
                    "queue assigns; choose another id, for example 'order-42'"
                )


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Add ``jobs`` in order. All are added, or none (on ``DUPLICATE_ID``)."""

    jobs: tuple[NewJob, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.jobs, tuple) or not self.jobs:
            raise ValueError(
                f"Enqueue needs a non-empty tuple of NewJob, got {self.jobs!r}; "
                "for example Enqueue((NewJob('email', {'to': 'a@example.com'}),))"
            )
        for job in self.jobs:
            if not isinstance(job, NewJob):
                raise TypeError(f"Enqueue.jobs must contain NewJob values, got {job!r}")

    @classmethod
    def one(cls, type: str, payload: Any = None, **options: Any) -> Enqueue:
        """Build an enqueue of a single job."""

        return cls((NewJob(type, payload, **options),))


@dataclass(frozen=True, slots=True)
class Claim:
    """Claim the first eligible job. ``types`` None accepts every type."""

    worker: str
    types: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _require_text("worker", self.worker, "worker-1")
        if self.types is not None:
            if not isinstance(self.types, tuple) or not self.types:
                raise ValueError(
                    f"Claim.types must be None (any type) or a non-empty tuple, got "
                    f"{self.types!r}; for example ('email', 'resize')"
                )
            for job_type in self.types:
                _require_text("job type in Claim.types", job_type, "email")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Prove the worker holding ``token`` is still running job ``job_id``."""

    job_id: str
    token: str

    def __post_init__(self) -> None:
        _require_text("job id", self.job_id, "job-1")
        _require_text("claim token", self.token, "c1")


@dataclass(frozen=True, slots=True)
class Complete:
    """Mark job ``job_id`` done; only the holder of the current token may."""

    job_id: str
    token: str

    def __post_init__(self) -> None:
        _require_text("job id", self.job_id, "job-1")
        _require_text("claim token", self.token, "c1")


@dataclass(frozen=True, slots=True)
class Fail:
    """Give job ``job_id`` back, visible again after ``delay`` seconds, or dead-letter it.

    A dead letter's reason keeps at most ``MAX_ERROR_CHARS`` characters of ``error``.
    """

    job_id: str
    token: str
    error: str = ""
    delay: float = 0.0

    def __post_init__(self) -> None:
        _require_text("job id", self.job_id, "job-1")
        _require_text("claim token", self.token, "c1")
        if not isinstance(self.error, str):
            raise TypeError(f"Fail.error must be a string, got {self.error!r}")
        _require_time("Fail.delay", self.delay)


@dataclass(frozen=True, slots=True)
class PurgeDead:
    """Remove dead letters for good: those whose job id is in ``job_ids`` (every id when
    None) and that died before ``before`` (``died_at < before``; any time when None).

    With both None it removes every dead letter. Live jobs are never touched, and the
    ``dead`` counter keeps counting the removed ones.
    """

    job_ids: tuple[str, ...] | None = None
    before: float | None = None

    def __post_init__(self) -> None:
        if self.job_ids is not None:
            if not isinstance(self.job_ids, tuple) or not self.job_ids:
                raise ValueError(
                    f"PurgeDead.job_ids must be None (every dead letter) or a non-empty tuple "
                    f"of job ids, got {self.job_ids!r}; for example ('job-7',)"
                )
            for job_id in self.job_ids:
                _require_text("job id in PurgeDead.job_ids", job_id, "job-7")
        if self.before is not None:
            before = self.before
            if isinstance(before, bool) or not isinstance(before, (int, float)) or not (
                    math.isfinite(before)):
                raise ValueError(
                    f"PurgeDead.before must be None or a finite time in seconds, got {before!r}")

    def matches(self, letter_job_id: str, died_at: float) -> bool:
        """True when the dead letter of ``letter_job_id`` that died at ``died_at`` goes."""

        if self.job_ids is not None and letter_job_id not in self.job_ids:
            return False
        return self.before is None or died_at < self.before


Mutation = Enqueue | Claim | Heartbeat | Complete | Fail | PurgeDead
MUTATION_TYPES = (Enqueue, Claim, Heartbeat, Complete, Fail, PurgeDead)


# ----------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enqueued:
    job_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claimed job and the token its heartbeat, complete and fail must carry."""

    job_id: str
    type: str
    payload: Any
    attempt: int
    max_attempts: int
    token: str


@dataclass(frozen=True, slots=True)
class NoJobAvailable:
    pass


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """A heartbeat or complete that took effect."""


@dataclass(frozen=True, slots=True)
class Returned:
    """A failed job that is back in the queue, claimable from ``visible_at`` on."""

    visible_at: float


@dataclass(frozen=True, slots=True)
class DeadLettered:
    reason: str


@dataclass(frozen=True, slots=True)
class Purged:
    """The number of dead letters a ``PurgeDead`` removed (0 when none matched)."""

    count: int


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectReason
    message: str


Result = (
    Enqueued | Claimed | NoJobAvailable | Acknowledged | Returned | DeadLettered | Purged
    | Rejected
)


# ----------------------------------------------------------------------------------------
# Model state
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    type: str
    payload: Any
    status: JobStatus
    attempts: int
    max_attempts: int
    position: int
    visible_at: float
    claim_token: str | None = None
    claimed_by: str | None = None
    heartbeat_at: float | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job that ran out of attempts, with the reason and the time it died."""

    job: Job
    reason: str
    died_at: float


@dataclass(frozen=True, slots=True)
class Counters:
    """Totals since the queue was created."""

    enqueued: int = 0
    claimed: int = 0
    completed: int = 0
    returned: int = 0
    expired: int = 0
    dead: int = 0


@dataclass(frozen=True, slots=True)
class QueueModel:
    """The queue: live jobs in position order, completed ids, dead letters and counters."""

    jobs: tuple[Job, ...] = ()
    done: tuple[str, ...] = ()
    dead_letters: tuple[DeadLetter, ...] = ()
    counters: Counters = field(default_factory=Counters)
    next_position: int = 0
    next_claim: int = 1
    next_job_number: int = 1

    def find(self, job_id: str) -> Job | None:
        for job in self.jobs:
            if job.id == job_id:
                return job
        return None


# ----------------------------------------------------------------------------------------
# Text shared with the implementation, so both produce the same results byte for byte.
# ----------------------------------------------------------------------------------------


def job_id_for(number: int) -> str:
    """Return the id given to the ``number``-th job enqueued without an id."""

    return f"job-{number}"


def claim_token_for(number: int) -> str:
    return f"c{number}"


MAX_ERROR_CHARS = 1000
"""``Fail.error`` text beyond this many characters is cut off in the dead-letter reason."""


def truncate_error(error: str) -> str:
    """Return ``error`` cut to ``MAX_ERROR_CHARS`` characters plus a marker saying so.

    Bounding the stored text keeps one long error from pushing the state over its size
    limit, which would otherwise hold up the unrelated mutations of the same commit.
    """

    if len(error) <= MAX_ERROR_CHARS:
        return error
    cut = len(error) - MAX_ERROR_CHARS
    return f"{error[:MAX_ERROR_CHARS]}... [{cut} more characters cut]"


def fail_reason(attempts: int, max_attempts: int, error: str) -> str:
    reason = f"failed on attempt {attempts} of {max_attempts}"
    return f"{reason}: {truncate_error(error)}" if error else reason


def undecodable_payload_reason(error: str) -> str:
    return f"stored payload is not valid JSON ({truncate_error(error)}); it cannot be claimed"


def expiry_reason(attempts: int, max_attempts: int, timeout: float) -> str:
    return (
        f"heartbeat older than {timeout:g} s on attempt {attempts} of {max_attempts}"
    )


def unknown_job(job_id: str) -> Rejected:
    return Rejected(
        RejectReason.UNKNOWN_JOB,
        f"job {job_id!r} is not in the queue: it was never enqueued, or it is already done "
        "or dead-lettered",
    )


def stale_claim(job_id: str, token: str) -> Rejected:
    return Rejected(
        RejectReason.STALE_CLAIM,
        f"claim token {token!r} is not the current claim of job {job_id!r}: the job expired "
        "or was failed and may belong to another worker now; stop working on it",
    )


def duplicate_id(job_id: str) -> Rejected:
    return Rejected(
        RejectReason.DUPLICATE_ID,
        f"job id {job_id!r} is already in the queue; choose another id or omit it to get one "
        "assigned",
    )


def accepts(types: tuple[str, ...] | None, job_type: str) -> bool:
    return types is None or job_type in types


# ----------------------------------------------------------------------------------------
# Operations
# ----------------------------------------------------------------------------------------


def apply(model: QueueModel, mutation: Mutation, now: float) -> tuple[QueueModel, Result]:
    """Apply one mutation at time ``now``; return the new model and the result."""

    if isinstance(mutation, Enqueue):
        return _enqueue(model, mutation)
    if isinstance(mutation, Claim):
        return _claim(model, mutation, now)
    if isinstance(mutation, Heartbeat):
        return _with_claim(model, mutation.job_id, mutation.token, lambda job: _heartbeat(
            model, job, now))
    if isinstance(mutation, Complete):
        return _with_claim(model, mutation.job_id, mutation.token, lambda job: _complete(
            model, job))
    if isinstance(mutation, Fail):
        return _with_claim(model, mutation.job_id, mutation.token, lambda job: _fail(
            model, job, mutation, now))
    if isinstance(mutation, PurgeDead):
        return _purge_dead(model, mutation)
    raise TypeError(f"not a queue mutation: {mutation!r}; use one of {MUTATION_TYPES}")


def apply_all(
    model: QueueModel, mutations: Iterable[Mutation], now: float
) -> tuple[QueueModel, list[Result]]:
    """Apply ``mutations`` in order at one time ``now`` (one batch)."""

    results = []
    for mutation in mutations:
        model, result = apply(model, mutation, now)
        results.append(result)
    return model, results


def expire(model: QueueModel, now: float, timeout: float) -> QueueModel:
    """Return or dead-letter every in-progress job whose heartbeat is over ``timeout`` old."""

    _require_time("heartbeat timeout", timeout)
    jobs: list[Job] = []
    dead: list[DeadLetter] = []
    expired = 0
    for job in model.jobs:
        stale = (
            job.status is JobStatus.IN_PROGRESS
            and job.heartbeat_at is not None
            and now - job.heartbeat_at > timeout
        )
        if not stale:
            jobs.append(job)
            continue
        expired += 1
        if job.attempts >= job.max_attempts:
            reason = expiry_reason(job.attempts, job.max_attempts, timeout)
            dead.append(DeadLetter(_released(job, JobStatus.DEAD, job.visible_at), reason, now))
        else:
            jobs.append(_released(job, JobStatus.UNCLAIMED, now))
    if not expired:
        return model
    counters = replace(
        model.counters,
        expired=model.counters.expired + expired,
        dead=model.counters.dead + len(dead),
    )
    return replace(
        model,
        jobs=tuple(jobs),
        dead_letters=model.dead_letters + tuple(dead),
        counters=counters,
    )


def eligible(model: QueueModel, now: float, types: tuple[str, ...] | None) -> list[Job]:
    """Return the jobs a claim at ``now`` may receive, best first."""

    return [
        job for job in model.jobs
        if job.status is JobStatus.UNCLAIMED and job.visible_at <= now and accepts(types, job.type)
    ]


def status_of(model: QueueModel, job_id: str) -> JobStatus | None:
    """Return the status of ``job_id``: live status, DONE, DEAD, or None if never seen."""

    job = model.find(job_id)
    if job is not None:
        return job.status
    if job_id in model.done:
        return JobStatus.DONE
    if any(letter.job.id == job_id for letter in model.dead_letters):
        return JobStatus.DEAD
    return None


def _enqueue(model: QueueModel, mutation: Enqueue) -> tuple[QueueModel, Result]:
    live = {job.id for job in model.jobs}
    for new in mutation.jobs:
        if new.id is not None and new.id in live:
            return model, duplicate_id(new.id)
        if new.id is not None:
            live.add(new.id)

    jobs = list(model.jobs)
    ids = []
    number = model.next_job_number
    position = model.next_position
    for new in mutation.jobs:
        job_id = new.id
        if job_id is None:
            job_id = job_id_for(number)
            number += 1
        jobs.append(Job(
            id=job_id, type=new.type, payload=new.payload, status=JobStatus.UNCLAIMED,
            attempts=0, max_attempts=new.max_attempts, position=position, visible_at=0.0,
        ))
        ids.append(job_id)
        position += 1

    counters = replace(model.counters, enqueued=model.counters.enqueued + len(ids))
    model = replace(
        model, jobs=tuple(jobs), counters=counters, next_position=position,
        next_job_number=number,
    )
    return model, Enqueued(tuple(ids))


def _claim(model: QueueModel, mutation: Claim, now: float) -> tuple[QueueModel, Result]:
    candidates = eligible(model, now, mutation.types)
    if not candidates:
        return model, NoJobAvailable()

    job = candidates[0]
    token = claim_token_for(model.next_claim)
    claimed = replace(
        job, status=JobStatus.IN_PROGRESS, attempts=job.attempts + 1, claim_token=token,
        claimed_by=mutation.worker, heartbeat_at=now,
    )
    counters = replace(model.counters, claimed=model.counters.claimed + 1)
    model = replace(
        model, jobs=_replace_job(model.jobs, claimed), counters=counters,
        next_claim=model.next_claim + 1,
    )
    result = Claimed(claimed.id, claimed.type, claimed.payload, claimed.attempts,
                     claimed.max_attempts, token)
    return model, result


def _with_claim(model, job_id, token, action) -> tuple[QueueModel, Result]:
    job = model.find(job_id)
    if job is None:
        return model, unknown_job(job_id)
    if job.status is not JobStatus.IN_PROGRESS or job.claim_token != token:
        return model, stale_claim(job_id, token)
    return action(job)


def _heartbeat(model: QueueModel, job: Job, now: float) -> tuple[QueueModel, Result]:
    job = replace(job, heartbeat_at=now)
    return replace(model, jobs=_replace_job(model.jobs, job)), Acknowledged()


def _complete(model: QueueModel, job: Job) -> tuple[QueueModel, Result]:
    counters = replace(model.counters, completed=model.counters.completed + 1)
    model = replace(
        model,
        jobs=tuple(other for other in model.jobs if other.id != job.id),
        done=model.done + (job.id,),
        counters=counters,
    )
    return model, Acknowledged()


def _fail(model: QueueModel, job: Job, mutation: Fail, now: float) -> tuple[QueueModel, Result]:
    if job.attempts >= job.max_attempts:
        reason = fail_reason(job.attempts, job.max_attempts, mutation.error)
        letter = DeadLetter(_released(job, JobStatus.DEAD, job.visible_at), reason, now)
        counters = replace(model.counters, dead=model.counters.dead + 1)
        model = replace(
            model,
            jobs=tuple(other for other in model.jobs if other.id != job.id),
            dead_letters=model.dead_letters + (letter,),
            counters=counters,
        )
        return model, DeadLettered(reason)

    visible_at = now + mutation.delay
    job = _released(job, JobStatus.UNCLAIMED, visible_at)
    counters = replace(model.counters, returned=model.counters.returned + 1)
    model = replace(model, jobs=_replace_job(model.jobs, job), counters=counters)
    return model, Returned(visible_at)


def _purge_dead(model: QueueModel, mutation: PurgeDead) -> tuple[QueueModel, Result]:
    kept = tuple(
        letter for letter in model.dead_letters
        if not mutation.matches(letter.job.id, letter.died_at)
    )
    removed = len(model.dead_letters) - len(kept)
    if not removed:
        return model, Purged(0)
    return replace(model, dead_letters=kept), Purged(removed)


def _released(job: Job, status: JobStatus, visible_at: float) -> Job:
    return replace(
        job, status=status, visible_at=visible_at, claim_token=None, claimed_by=None,
        heartbeat_at=None,
    )


def _replace_job(jobs: Sequence[Job], new: Job) -> tuple[Job, ...]:
    return tuple(new if job.id == new.id else job for job in jobs)
