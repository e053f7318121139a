"""Queue operations in wire terms, shared by the HTTP routes and the WebSocket methods.

Each function takes a decoded request struct and returns a response struct, or raises
``ApiError`` with the status and tag of the failure. Rejections of ``osqueue.spec.queue``
map to errors: ``UNKNOWN_JOB`` 404 ``UnknownJob``, ``STALE_CLAIM`` 409 ``StaleClaim``,
``DUPLICATE_ID`` 409 ``DuplicateJobId``, ``STATE_TOO_LARGE`` 507 ``StateTooLarge``.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

from msgspec import UNSET
from osqueue.broker import wire
from osqueue.broker.service import Broker
from osqueue.election import lease_expires_at
from osqueue.spec import queue as spec
from osqueue.state import JobRecord, QueueState

logger = logging.getLogger(__name__)

_REJECTIONS = {
    spec.RejectReason.UNKNOWN_JOB: (404, "UnknownJob"),
    spec.RejectReason.STALE_CLAIM: (409, "StaleClaim"),
    spec.RejectReason.DUPLICATE_ID: (409, "DuplicateJobId"),
    spec.RejectReason.STATE_TOO_LARGE: (507, "StateTooLarge"),
}

MAX_LIST_LIMIT = 10_000
DEFAULT_LIST_LIMIT = 100

JobStatusFilter = Literal["unclaimed", "in_progress", "dead"]

logger = logging.getLogger(__name__)


def _rejected(result: spec.Result) -> None:
    if isinstance(result, spec.Rejected):
        status, tag = _REJECTIONS[result.reason]
        raise wire.ApiError(status, tag, result.message)


def _unexpected(result: spec.Result, operation: str) -> wire.ApiError:
    return wire.ApiError(500, "InternalError",
                         f"{operation} returned an unexpected result {type(result).__name__}")


def _new_job(job: wire.JobIn | wire.EnqueueIn) -> spec.NewJob:
    options: dict[str, Any] = {}
    if job.max_attempts is not UNSET:
        options["max_attempts"] = job.max_attempts
    if job.id is not UNSET:
        options["id"] = job.id
    job_type = job.type if job.type is not UNSET else wire.DEFAULT_JOB_TYPE
    wire.check_payload(job.payload)
    try:
        return spec.NewJob(job_type, job.payload, **options)
    except (ValueError, TypeError) as error:
        raise wire.invalid_request(str(error)) from None


async def enqueue(broker: Broker, request: wire.EnqueueIn
                  ) -> wire.EnqueuedOut | wire.EnqueuedManyOut:
    single_fields = [name for name in ("payload", "type", "max_attempts", "id")
                     if getattr(request, name) is not UNSET]
    if request.jobs is not UNSET:
        if single_fields:
            raise wire.invalid_request(
                "send either one job (payload, type, maxAttempts, id) or a batch (jobs), not "
                "both; move the fields into the objects of jobs")
        jobs = tuple(_new_job(job) for job in request.jobs)
    elif request.payload is UNSET:
        raise wire.invalid_request(
            'the body needs "payload" (any JSON value, null included) or "jobs"; for '
            'example {"payload": {"to": "a@example.com"}, "type": "email"}')
    else:
        jobs = (_new_job(request),)

    result = await broker.submit(spec.Enqueue(jobs))
    _rejected(result)
    if not isinstance(result, spec.Enqueued):
        raise _unexpected(result, "enqueue")
    if request.jobs is UNSET:
        return wire.EnqueuedOut(job_id=result.job_ids[0])
    return wire.EnqueuedManyOut(job_ids=list(result.job_ids))


async def claim(broker: Broker, request: wire.ClaimIn) -> wire.ClaimOut:
    types = None if request.types is UNSET else tuple(request.types)
    result = await broker.submit(spec.Claim(request.worker_id, types))
    if isinstance(result, spec.NoJobAvailable):
        return wire.ClaimOut(job=None)
    _rejected(result)
    if not isinstance(result, spec.Claimed):
        raise _unexpected(result, "claim")
    return wire.ClaimOut(job=wire.ClaimedJobOut(
        id=result.job_id, type=result.type, payload=result.payload, attempts=result.attempt,
        max_attempts=result.max_attempts, claim_token=result.token,
    ))


async def heartbeat(broker: Broker, job_id: str, claim_token: str) -> wire.OkOut:
    result = await broker.submit(spec.Heartbeat(job_id, claim_token))
    _rejected(result)
    return wire.OkOut(ok=True)


async def complete(broker: Broker, job_id: str, claim_token: str) -> wire.OkOut:
    result = await broker.submit(spec.Complete(job_id, claim_token))
    _rejected(result)
    return wire.OkOut(ok=True)


async def fail(broker: Broker, job_id: str, request: wire.FailIn | wire.JobFailIn
               ) -> wire.ReturnedOut | wire.DeadOut:
    mutation = spec.Fail(job_id, request.claim_token, request.error,
                         request.retry_delay_ms / 1000)
    result = await broker.submit(mutation)
    _rejected(result)
    if isinstance(result, spec.Returned):
        return wire.ReturnedOut(visible_at=result.visible_at)
    if isinstance(result, spec.DeadLettered):
        return wire.DeadOut(reason=result.reason)
    raise _unexpected(result, "fail")


async def purge_dead(broker: Broker, request: wire.PurgeDeadIn) -> wire.PurgedOut:
    job_ids = None if request.job_ids is UNSET else tuple(request.job_ids)
    before = None if request.died_before is UNSET else request.died_before
    result = await broker.submit(spec.PurgeDead(job_ids, before))
    if not isinstance(result, spec.Purged):
        raise _unexpected(result, "purge of dead letters")
    logger.info("purged %d dead letters (job ids %s, died before %s)", result.count,
                "any" if job_ids is None else ", ".join(job_ids),
                "any time" if before is None else before)
    return wire.PurgedOut(purged=result.count)


def validate_job_id(job_id: str) -> str:
    if not job_id or len(job_id) > 1024:
        raise wire.invalid_request(
            f"job id in the path must be 1 to 1024 characters, got {len(job_id)}")
    if not re.fullmatch(wire.JOB_ID_PATTERN, job_id):
        raise wire.invalid_request(
            f"job id {job_id!r} in the path contains control characters; job ids never do")
    return job_id


# Views ----------------------------------------------------------------------------------


def health(broker: Broker) -> wire.HealthOut:
    return wire.HealthOut(status="ok", leader=broker.is_leader, epoch=broker.epoch,
                          address=broker.address, leader_epoch=broker.leader_epoch(),
                          leader_address=broker.leader_address())


def state(broker: Broker) -> QueueState:
    current = broker.current_state()
    if current is None:
        raise wire.ApiError(
            503, "StorageUnavailable",
            f"broker {broker.address} has not read {broker.settings.queue_key!r} yet; the "
            "storage may be unreachable or the queue not created, retry shortly")
    return current


def job_out(job: JobRecord) -> wire.JobOut:
    return wire.JobOut(
        id=job.id, type=job.type, status=job.status, attempts=job.attempts,
        max_attempts=job.max_attempts, position=job.position, visible_at=job.visible_at,
        claimed_by=job.claimed_by, heartbeat_at=job.heartbeat_at, payload=job.payload,
    )


def jobs(broker: Broker, status: JobStatusFilter | None, limit: int) -> wire.JobsOut:
    current = state(broker)
    if status == "dead":
        letters = current.dead_letters[:limit]
        return wire.JobsOut(jobs=[job_out(letter.job) for letter in letters])
    selected: list[wire.JobOut] = []
    for job in current.jobs:
        if len(selected) >= limit:
            break
        if status is None or job.status == status:
            selected.append(job_out(job))
    return wire.JobsOut(jobs=selected)


def dead(broker: Broker, limit: int) -> wire.DeadLettersOut:
    """Return the newest ``limit`` dead letters, oldest first."""

    letters = state(broker).dead_letters[-limit:]
    return wire.DeadLettersOut(dead=[
        wire.DeadLetterOut(job=job_out(letter.job), reason=letter.reason,
                           died_at=letter.died_at)
        for letter in letters
    ])


def stats(broker: Broker) -> wire.StatsOut:
    current = broker.current_state()
    counts = counters = None
    dead_letters = 0
    if current is not None:
        counts = _counts(current, broker.now())
        counters = wire.CountersOut(**_fields(current.counters))
        dead_letters = len(current.dead_letters)

    engine = broker.engine_stats()
    engine_out = None
    if engine is not None:
        engine_out = wire.EngineStatsOut(
            **{name: engine.get(name, 0) for name in wire.EngineStatsOut.__struct_fields__})

    enqueued_rate, completed_rate, window = broker.throughput.rates()
    return wire.StatsOut(
        counts=counts,
        counters=counters,
        dead_letters=dead_letters,
        engine=engine_out,
        broker=wire.BrokerOut(
            address=broker.address,
            role=broker.role,  # type: ignore[arg-type]
            leader=broker.is_leader,
            epoch=broker.epoch,
            leader_address=broker.leader_address(),
            leader_epoch=broker.leader_epoch(),
            sequence=None if current is None else current.sequence,
            lease_expires_at=None if current is None else lease_expires_at(current.broker),
        ),
        throughput=wire.ThroughputOut(enqueued_per_second=enqueued_rate,
                                      completed_per_second=completed_rate,
                                      window_seconds=window),
    )


def _counts(current: QueueState, now: float) -> wire.CountsOut:
    unclaimed = delayed = in_progress = 0
    for job in current.jobs:
        if job.status == "in_progress":
            in_progress += 1
        elif job.visible_at > now:
            delayed += 1
        else:
            unclaimed += 1
    return wire.CountsOut(unclaimed=unclaimed, delayed=delayed, in_progress=in_progress,
                          dead=len(current.dead_letters))


def _fields(struct: Any) -> dict[str, Any]:
    return {name: getattr(struct, name) for name in struct.__struct_fields__}


def throttle(broker: Broker) -> wire.ThrottleOut:
    stats = broker.throttle_stats()
    if stats is None:
        return wire.ThrottleOut(throttled=False)
    return wire.ThrottleOut(
        throttled=True,
        total_reads=stats.total_reads,
        total_writes=stats.total_writes,
        throttled_reads=stats.throttled_reads,
        throttled_writes=stats.throttled_writes,
        read_delay_seconds=stats.read_delay_seconds,
        write_delay_seconds=stats.write_delay_seconds,
        writes_today=stats.writes_today,
        utc_date=stats.utc_date.isoformat(),
        budget_exceeded=stats.budget_exceeded,
    )
