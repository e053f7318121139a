"""The wire format of the broker API: request and response bodies and errors.

Every body is JSON with camelCase field names, except ``GET /state``, which returns
``queue.json`` as stored. Request structs reject unknown fields and wrong types, so a
decoded request is valid apart from the checks of ``osqueue.spec.queue`` (a job id of the
reserved form ``job-<n>``, for example). NOTE: msgspec has no option to reject duplicate
object keys, so a body with a key given twice is accepted and the last value wins. The OpenAPI description is generated from these
structs (``osqueue.broker.openapi``), so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Raw, UnsetType

# ----------------------------------------------------------------------------------------
# Field types
# ----------------------------------------------------------------------------------------

NonEmptyText = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
"""Ids, types, worker ids and claim tokens: 1 to 1024 characters."""

JOB_ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
"""Job ids contain no control characters (NUL, newline, DEL...): they appear in logs, URLs
and tables, where such characters hide or forge text."""

JobId = Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern=JOB_ID_PATTERN)]
"""A job id: 1 to 1024 characters, none of them a control character."""

MaxAttempts = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]

RetryDelayMs = Annotated[int, msgspec.Meta(ge=0, le=10 ** 12)]
"""At most 10^12 ms (about 31 years), so that the visible time stays a finite float."""

DEFAULT_JOB_TYPE = "default"


class _Request(msgspec.Struct, forbid_unknown_fields=True, rename="camel", kw_only=True):
    """Base of request bodies: camelCase names, unknown fields rejected."""


class _Response(msgspec.Struct, rename="camel", kw_only=True):
    """Base of response bodies: camelCase names."""


# ----------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------


class JobIn(_Request):
    """One job to enqueue. ``id`` is optional; without it the queue assigns ``job-<n>``."""

    payload: Raw
    type: NonEmptyText = DEFAULT_JOB_TYPE
    max_attempts: MaxAttempts | UnsetType = UNSET
    id: JobId | UnsetType = UNSET


class EnqueueIn(_Request):
    """``POST /v1/jobs``: one job (``payload`` and options) or many (``jobs``), not both."""

    payload: Raw | UnsetType = UNSET
    type: NonEmptyText | UnsetType = UNSET
    max_attempts: MaxAttempts | UnsetType = UNSET
    id: JobId | UnsetType = UNSET
    jobs: Annotated[list[JobIn], msgspec.Meta(min_length=1)] | UnsetType = UNSET


class ClaimIn(_Request):
    """``POST /v1/jobs/claim``. ``types`` absent accepts every job type."""

    worker_id: NonEmptyText
    types: Annotated[list[NonEmptyText], msgspec.Meta(min_length=1)] | UnsetType = UNSET


class ClaimTokenIn(_Request):
    """``POST /v1/jobs/{id}/heartbeat`` and ``/complete``."""

    claim_token: NonEmptyText


class FailIn(_Request):
    """``POST /v1/jobs/{id}/fail``. ``retryDelayMs`` delays the next claim of the job."""

    claim_token: NonEmptyText
    error: str = ""
    retry_delay_ms: RetryDelayMs = 0


class JobClaimTokenIn(_Request):
    """WebSocket ``heartbeat`` and ``complete`` parameters."""

    job_id: JobId
    claim_token: NonEmptyText


class JobFailIn(_Request):
    """WebSocket ``fail`` parameters."""

    job_id: JobId
    claim_token: NonEmptyText
    error: str = ""
    retry_delay_ms: RetryDelayMs = 0


class PurgeDeadIn(_Request):
    """``DELETE /v1/dead``: remove the dead letters of ``jobIds`` (every one when absent)
    that died before ``diedBefore`` (Unix seconds; any time when absent). The body is
    optional, and an absent body removes every dead letter."""

    job_ids: Annotated[list[JobId], msgspec.Meta(min_length=1)] | UnsetType = UNSET
    died_before: Annotated[float, msgspec.Meta(ge=0, le=1e12)] | UnsetType = UNSET


class EmptyIn(_Request):
    """Parameters of a method that takes none (WebSocket ``stats``)."""


class WsRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One WebSocket request. ``id`` is any JSON value and comes back in the response."""

    method: NonEmptyText
    id: Any = None
    params: Raw | UnsetType = UNSET


# ----------------------------------------------------------------------------------------
# Responses
# ----------------------------------------------------------------------------------------


class HealthOut(_Response):
    """``GET /healthz``. ``epoch`` is the epoch this broker leads (null on a standby);
    ``leaderEpoch`` and ``leaderAddress`` describe the live leader this broker knows of,
    itself included, and are null when it knows of none."""

    status: Literal["ok"]
    leader: bool
    epoch: int | None
    address: str
    leader_epoch: int | None
    leader_address: str | None


class EnqueuedOut(_Response):
    job_id: str


class EnqueuedManyOut(_Response):
    job_ids: list[str]


class ClaimedJobOut(_Response):
    id: str
    type: str
    payload: Any
    attempts: int
    max_attempts: int
    claim_token: str


class ClaimOut(_Response):
    """The claimed job, or null when no job is available."""

    job: ClaimedJobOut | None


class OkOut(_Response):
    ok: bool


class ReturnedOut(_Response, tag_field="status", tag="returned"):
    """A failed job that is back in the queue, claimable from ``visibleAt`` (seconds)."""

    visible_at: float


class DeadOut(_Response, tag_field="status", tag="dead"):
    """A failed job that used all its attempts and is now a dead letter."""

    reason: str


FailOut = ReturnedOut | DeadOut


class JobOut(_Response):
    """A job as stored. ``claimedBy`` and ``heartbeatAt`` are null unless in progress."""

    id: str
    type: str
    status: Literal["unclaimed", "in_progress", "dead"]
    attempts: int
    max_attempts: int
    position: int
    visible_at: float
    claimed_by: str | None
    heartbeat_at: float | None
    payload: Raw


class JobsOut(_Response):
    jobs: list[JobOut]


class DeadLetterOut(_Response):
    job: JobOut
    reason: str
    died_at: float


class DeadLettersOut(_Response):
    dead: list[DeadLetterOut]


class PurgedOut(_Response):
    """The number of dead letters removed (0 when none matched)."""

    purged: int


class CountsOut(_Response):
    """Live jobs by status; ``delayed`` are unclaimed jobs not yet visible."""

    unclaimed: int
    delayed: int
    in_progress: int
    dead: int


class CountersOut(_Response):
    """Totals since the queue was created, from ``queue.json``."""

    enqueued: int
    claimed: int
    completed: int
    returned: int
    expired: int
    dead: int


class EngineStatsOut(_Response):
    """Counters of this broker's engine since it became leader; latencies in seconds."""

    commits: int
    write_attempts: int
    conflicts: int
    concurrent_requests: int
    indeterminate: int
    rate_limited: int
    reads: int
    mutations: int
    failed_batches: int
    batch_size_mean: float
    batch_size_max: int
    commit_latency_p50: float
    commit_latency_max: float


class BrokerOut(_Response):
    """This broker and the leader named by the last state it read.

    ``epoch`` is the epoch this broker leads, null on a standby. ``leaderAddress`` and
    ``leaderEpoch`` name the leader of the last state this broker read (this broker when
    it leads), or are null when that lease has expired. ``leaseExpiresAt`` is in seconds
    of the leader's clock (Unix time by default).
    """

    address: str
    role: Literal["leader", "standby", "stopped"]
    leader: bool
    epoch: int | None
    leader_address: str | None
    leader_epoch: int | None
    sequence: int | None
    lease_expires_at: float | None


class ThroughputOut(_Response):
    """Rates in jobs per second over the last ``windowSeconds``."""

    enqueued_per_second: float
    completed_per_second: float
    window_seconds: float


class StatsOut(_Response):
    """``GET /v1/stats``. ``counts`` and ``counters`` are null before any state was read;
    ``engine`` is null on a standby."""

    counts: CountsOut | None
    counters: CountersOut | None
    dead_letters: int
    engine: EngineStatsOut | None
    broker: BrokerOut
    throughput: ThroughputOut


class ThrottleOut(_Response, omit_defaults=True):
    """``GET /v1/throttle-stats``: only ``throttled`` (false) when storage is not throttled.

    Delays are seconds; ``utcDate`` is the ISO date that ``writesToday`` counts.
    """

    throttled: bool
    total_reads: int | None = None
    total_writes: int | None = None
    throttled_reads: int | None = None
    throttled_writes: int | None = None
    read_delay_seconds: float | None = None
    write_delay_seconds: float | None = None
    writes_today: int | None = None
    utc_date: str | None = None
    budget_exceeded: int | None = None


class ErrorOut(msgspec.Struct, kw_only=True, omit_defaults=True,
               rename={"tag": "_tag"}):
    """Every error body. ``leader`` is present on ``NotLeader`` only."""

    tag: str
    message: str
    leader: str | None | UnsetType = UNSET


class WsResultOut(msgspec.Struct, kw_only=True):
    id: Any
    ok: Literal[True]
    result: Any


class WsErrorOut(msgspec.Struct, kw_only=True):
    id: Any
    ok: Literal[False]
    error: ErrorOut


# ----------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error response: HTTP ``status`` and the body ``{"_tag": tag, "message": ...}``."""

    def __init__(self, status: int, tag: str, message: str, *,
                 leader: str | None | UnsetType = UNSET) -> None:
        super().__init__(message)
        self.status = status
        self.tag = tag
        self.message = message
        self.leader = leader

    def body(self) -> ErrorOut:
        return ErrorOut(tag=self.tag, message=self.message, leader=self.leader)


ERROR_STATUSES: dict[str, int] = {
    "InvalidRequest": 400,
    "Unauthorized": 401,
    "UnknownJob": 404,
    "NotFound": 404,
    "MethodNotAllowed": 405,
    "StaleClaim": 409,
    "DuplicateJobId": 409,
    "BodyTooLarge": 413,
    "InternalError": 500,
    "NotLeader": 503,
    "StorageUnavailable": 503,
    "Overloaded": 503,
    "CommitIndeterminate": 504,
    "StateTooLarge": 507,
}
"""Every ``_tag`` the broker sends, with its HTTP status."""


def invalid_request(message: str) -> ApiError:
    return ApiError(400, "InvalidRequest", message)


def decode_request(data: bytes, type_: type[Any], source: str) -> Any:
    """Decode ``data`` as ``type_``; raise ``ApiError`` 400 naming the invalid field."""

    if not data.strip():
        raise invalid_request(f"{source} is empty; send a JSON object")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise invalid_request(
            f"{source} is not valid UTF-8 (byte {error.object[error.start]:#04x} at offset "
            f"{error.start}); encode the JSON text as UTF-8") from None
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as error:
        # msgspec names the regular expression; say what it means instead.
        text = str(error).replace(
            f"Expected `str` matching regex {JOB_ID_PATTERN!r}",
            "Expected a job id without control characters")
        raise invalid_request(f"{source} is invalid: {text}") from None
    except msgspec.DecodeError as error:
        raise invalid_request(f"{source} is not valid JSON: {error}") from None
    except RecursionError:
        raise invalid_request(
            f"{source} is nested too deeply to decode; flatten the JSON") from None


def check_payload(payload: msgspec.Raw) -> None:
    """Raise ``ApiError`` 400 unless ``payload`` decodes back to Python values.

    Request decoding checks only the JSON syntax of a raw payload. A number out of range
    (``1e400``) would pass it and then fail when a claim decodes the payload, so it is
    rejected before it reaches the queue.
    """

    try:
        msgspec.json.decode(payload)
    except msgspec.DecodeError as error:
        raise invalid_request(f"payload cannot be decoded: {error}; {_hint(error)}") from None
    except RecursionError:
        raise invalid_request("payload is nested too deeply to decode; flatten it") from None


def _hint(error: msgspec.DecodeError) -> str:
    """Return the fix for a payload that passed the syntax check but does not decode."""

    text = str(error)
    if "out of range" in text:
        return "use numbers within the range of a 64-bit float or integer, or send them as strings"
    if "UTF-8" in text:
        return "encode the JSON text as UTF-8"
    if "surrogate" in text or "escape" in text:
        return "use \\uXXXX escapes of valid Unicode characters (no unpaired surrogates)"
    return "send a JSON value that a standard JSON parser accepts"


_encoder = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    return _encoder.encode(value)
