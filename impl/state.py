"""The schema of ``queue.json``: the whole queue state, encoded and decoded with msgspec.

One JSON object contains everything. Its fields, in the order they are written:

``schema_version``
    ``SCHEMA_VERSION``; a reader rejects any other value rather than guess.
``sequence``
    incremented by exactly 1 on every commit. The bytes of two commits therefore always
    differ, so a content-hash version token (an S3 ETag) never comes back (no ABA).
``broker``
    the leader's ``address``, its ``epoch`` (the fencing token), the time of its last
    commit (``heartbeat_at``) and the ``lease_seconds`` after which others may take over.
``next_position``, ``next_claim``, ``next_job_number``
    counters for job positions, claim tokens and assigned job ids.
``counters``
    totals since the queue was created.
``recent_commits``
    ``[sequence, commit_id]`` of the last commits, oldest first, bounded in length. A
    writer whose write had an unknown outcome looks for its commit id here.
``jobs``
    live jobs (unclaimed or in progress) in position order.
``dead_letters``
    jobs that ran out of attempts, with the reason, oldest first. They stay until a
    ``PurgeDead`` mutation removes them.

Payloads are kept as raw JSON (``msgspec.Raw``), so a commit re-encodes the jobs without
decoding and re-encoding every payload. Job fields that are null or at their default are
left out of the JSON. The records are not tracked by Python's cyclic garbage collector
(``gc=False``): they hold only scalars and raw JSON, so they cannot form cycles, and a
state of 100,000 jobs would otherwise make every full collection slow.

Decoding validates the whole document and raises ``StateDecodeError`` naming the first
invalid field (for example ``$.jobs[3].attempts``). Unknown fields are invalid too: they
may come from a newer osqueue, and a commit that dropped them would destroy its data. A ``queue.json`` that does not decode
must never be overwritten; the engine stops with that error.
"""

from __future__ import annotations

import logging
import math
from typing import Annotated, Any, Literal

import msgspec
from osqueue.errors import OsqueueError
from osqueue.spec import queue as spec

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_KEY = "queue.json"

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class StateDecodeError(OsqueueError, ValueError):
    """``queue.json`` is not a valid queue state. The message names the invalid field."""

    tag = "StateDecodeError"


class JobRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False, forbid_unknown_fields=True):
    """One job. ``status`` is ``unclaimed`` or ``in_progress`` in ``jobs``, ``dead`` in a
    dead letter. ``claim_token``, ``claimed_by`` and ``heartbeat_at`` are set exactly while
    the job is in progress."""

    id: str
    type: str
    status: Literal["unclaimed", "in_progress", "dead"]
    attempts: NonNegative
    max_attempts: Positive
    position: NonNegative
    visible_at: float
    claim_token: str | None = None
    claimed_by: str | None = None
    heartbeat_at: float | None = None
    payload: msgspec.Raw


class DeadLetterRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False, forbid_unknown_fields=True):
    job: JobRecord
    reason: str
    died_at: float


class BrokerRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False, forbid_unknown_fields=True):
    """The current leader. ``address`` is None before any broker took over, and after the
    leader of ``epoch`` released the lease at a clean stop; either way the lease is free."""

    address: str | None
    epoch: NonNegative
    heartbeat_at: float
    lease_seconds: Annotated[float, msgspec.Meta(gt=0)]


class CommitRecord(msgspec.Struct, frozen=True, array_like=True, gc=False, forbid_unknown_fields=True):
    sequence: NonNegative
    commit_id: str


class Counters(msgspec.Struct, frozen=True, kw_only=True, gc=False, forbid_unknown_fields=True):
    """Totals since the queue was created; the same fields as ``spec.queue.Counters``."""

    enqueued: NonNegative = 0
    claimed: NonNegative = 0
    completed: NonNegative = 0
    returned: NonNegative = 0
    expired: NonNegative = 0
    dead: NonNegative = 0


class QueueState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The decoded ``queue.json``. See the module docstring for each field.

    Instances are never changed in place (the lists included): a commit builds a new state,
    so the last committed state stays intact if the write fails.
    """

    schema_version: int
    sequence: NonNegative
    broker: BrokerRecord
    next_position: NonNegative = 0
    next_claim: Positive = 1
    next_job_number: Positive = 1
    counters: Counters = msgspec.field(default_factory=Counters)
    recent_commits: list[CommitRecord] = msgspec.field(default_factory=list)
    jobs: list[JobRecord] = msgspec.field(default_factory=list)
    dead_letters: list[DeadLetterRecord] = msgspec.field(default_factory=list)

    def find_commit(self, commit_id: str) -> CommitRecord | None:
        """Return the record of ``commit_id`` if it is among the recent commits."""

        for record in reversed(self.recent_commits):
            if record.commit_id == commit_id:
                return record
        return None

    def commit_at(self, sequence: int) -> CommitRecord | None:
        """Return the record of the commit that produced ``sequence``, if still recorded."""

        for record in reversed(self.recent_commits):
            if record.sequence == sequence:
                return record
            if record.sequence < sequence:
                return None
        return None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(QueueState)


def initial_state(
    *, address: str | None = None, epoch: int = 0, now: float = 0.0, lease_seconds: float = 10.0
) -> QueueState:
    """Return an empty queue at sequence 0 with the given broker record."""

    broker = BrokerRecord(
        address=address, epoch=epoch, heartbeat_at=now, lease_seconds=lease_seconds
    )
    return QueueState(schema_version=SCHEMA_VERSION, sequence=0, broker=broker)


def encode_state(state: QueueState) -> bytes:
    return _encoder.encode(state)


def encode_payload(payload: Any) -> msgspec.Raw:
    """Return ``payload`` as raw JSON, or raise ``ValueError`` naming an invalid value.

    A payload is JSON when it is a dict with str keys, a list or tuple, a str, an int, a
    finite float, a bool or None, recursively. Everything else is rejected, never converted
    (msgspec alone would turn NaN into null, bytes into base64 and a set into a list). A
    ``msgspec.Raw`` payload is decoded once, so malformed JSON or a number out of range
    (``1e400``) never reaches ``queue.json``. Cost: O(payload size).
    """

    if isinstance(payload, msgspec.Raw):
        return _checked_raw(payload)
    kind = type(payload)
    if kind is str or kind is int or kind is bool or payload is None:
        return msgspec.Raw(_encoder.encode(payload))

    # Fast path, in C: every conversion msgspec makes (NaN to null, bytes to base64, a set
    # to a list, a datetime, UUID or Decimal to a string, an int key to a str key) changes
    # the value, so the decoded copy compares unequal. Tuples also compare unequal to the
    # lists they decode to, and take the slow path below, which accepts them.
    try:
        data = _encoder.encode(payload)
        if msgspec.json.decode(data) == payload:
            return msgspec.Raw(data)
    except (TypeError, msgspec.EncodeError, msgspec.DecodeError, RecursionError):
        pass

    problem = _json_problem(payload)
    if problem is not None:
        path, message = problem
        raise ValueError(
            f"payload{path}: {message} is not JSON; use dicts with str keys, lists, strings, "
            "ints, finite floats, booleans and None"
        )
    try:
        return msgspec.Raw(_encoder.encode(payload))
    except (TypeError, msgspec.EncodeError) as error:
        raise ValueError(
            f"payload {payload!r:.80} cannot be encoded as JSON ({error}); use dicts, "
            "lists, strings, numbers, booleans and None"
        ) from error


def _checked_raw(payload: msgspec.Raw) -> msgspec.Raw:
    try:
        msgspec.json.decode(payload)
    except msgspec.DecodeError as error:
        raise ValueError(
            f"raw payload {bytes(payload)!r:.80} is not valid JSON ({error}); send complete "
            "JSON with numbers within the range of a 64-bit float"
        ) from None
    except RecursionError:
        raise ValueError("raw payload is nested too deeply to decode; flatten it") from None
    return payload


def _json_problem(value: Any) -> tuple[str, str] | None:
    """Return the path and description of a value that is not JSON, or None.

    Containers are walked with an explicit stack, so deep nesting cannot exhaust Python's
    recursion limit. A path is a linked list ``(segment, parent path)`` that costs O(1) per
    value and is rendered only for the invalid value, so a valid payload costs O(size).
    """

    stack: list[tuple[Any, tuple[Any, Any] | None]] = [(value, None)]
    while stack:
        item, path = stack.pop()
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is float:
            if not math.isfinite(item):
                return _render_path(path), f"float {item!r}"
            continue
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return _render_path(path), f"dict key {key!r} of type {type(key).__name__}"
                stack.append((child, (key, path)))
            continue
        if isinstance(item, (list, tuple)):
            for index, child in enumerate(item):
                stack.append((child, (index, path)))
            continue
        # Subclasses (IntEnum, StrEnum) encode as their int or str value, as in Python's json.
        if isinstance(item, (str, int)):
            continue
        if isinstance(item, float) and math.isfinite(item):
            continue
        return _render_path(path), f"{type(item).__name__} {item!r:.60}"
    return None


def _render_path(path: tuple[Any, Any] | None) -> str:
    segments = []
    while path is not None:
        segment, path = path
        segments.append(f"[{segment!r}]")
    return "".join(reversed(segments))


def decode_payload(raw: msgspec.Raw) -> Any:
    return msgspec.json.decode(raw)


def decode_state(data: bytes) -> QueueState:
    """Decode and validate ``queue.json``; raise ``StateDecodeError`` naming the bad field."""

    try:
        state = _decoder.decode(data)
    except msgspec.ValidationError as error:
        raise StateDecodeError(f"queue.json is invalid: {error}") from error
    except msgspec.DecodeError as error:
        raise StateDecodeError(f"queue.json is not valid JSON: {error}") from error
    validate_state(state)
    return state


def validate_state(state: QueueState) -> None:
    """Check the invariants the schema types cannot express; raise ``StateDecodeError``."""

    if state.schema_version != SCHEMA_VERSION:
        _invalid(
            "$.schema_version",
            f"is {state.schema_version}, this osqueue reads only {SCHEMA_VERSION}; upgrade "
            "osqueue or restore a queue.json written by this version",
        )

    seen: set[str] = set()
    last_position = -1
    for index, job in enumerate(state.jobs):
        where = f"$.jobs[{index}]"
        if job.id in seen:
            _invalid(f"{where}.id", f"{job.id!r} appears twice among the live jobs")
        seen.add(job.id)
        if job.status == "dead":
            _invalid(f"{where}.status", "is 'dead' but dead jobs belong in dead_letters")
        if job.position <= last_position:
            _invalid(f"{where}.position", f"{job.position} is not above {last_position}")
        if job.position >= state.next_position:
            _invalid(f"{where}.position", f"{job.position} is not below next_position")
        last_position = job.position
        _validate_job(where, job)

    for index, letter in enumerate(state.dead_letters):
        if letter.job.status != "dead":
            _invalid(f"$.dead_letters[{index}].job.status", f"is {letter.job.status!r}, not 'dead'")

    previous = -1
    for index, record in enumerate(state.recent_commits):
        if record.sequence <= previous or record.sequence > state.sequence:
            _invalid(
                f"$.recent_commits[{index}]",
                f"sequence {record.sequence} is out of order or above the state's sequence "
                f"{state.sequence}",
            )
        previous = record.sequence


def _validate_job(where: str, job: JobRecord) -> None:
    if job.attempts > job.max_attempts:
        _invalid(f"{where}.attempts", f"{job.attempts} exceeds max_attempts {job.max_attempts}")
    claimed = (job.claim_token, job.claimed_by, job.heartbeat_at)
    if job.status == "in_progress" and None in claimed:
        _invalid(f"{where}.claim_token", "an in-progress job needs a claim token, worker and heartbeat")
    if job.status == "in_progress" and job.attempts < 1:
        _invalid(f"{where}.attempts", "an in-progress job has at least one attempt")
    if job.status == "unclaimed" and claimed != (None, None, None):
        _invalid(f"{where}.claim_token", "an unclaimed job has no claim token, worker or heartbeat")


def _invalid(path: str, problem: str) -> None:
    raise StateDecodeError(f"queue.json is invalid: {path} {problem}")


def to_model(state: QueueState, done: tuple[str, ...] = ()) -> spec.QueueModel:
    """Return the spec model of ``state``. The state keeps no done ids; pass them if known."""

    return spec.QueueModel(
        jobs=tuple(_to_spec_job(job) for job in state.jobs),
        done=done,
        dead_letters=tuple(
            spec.DeadLetter(_to_spec_job(letter.job), letter.reason, letter.died_at)
            for letter in state.dead_letters
        ),
        counters=spec.Counters(**msgspec.structs.asdict(state.counters)),
        next_position=state.next_position,
        next_claim=state.next_claim,
        next_job_number=state.next_job_number,
    )


def _to_spec_job(job: JobRecord) -> spec.Job:
    return spec.Job(
        id=job.id,
        type=job.type,
        payload=decode_payload(job.payload),
        status=spec.JobStatus(job.status),
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        position=job.position,
        visible_at=job.visible_at,
        claim_token=job.claim_token,
        claimed_by=job.claimed_by,
        heartbeat_at=job.heartbeat_at,
    )
