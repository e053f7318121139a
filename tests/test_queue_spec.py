"""Tests of the pure queue model in osqueue.spec.queue."""

from __future__ import annotations

import pytest
from osqueue.spec import queue as spec
from osqueue.spec.queue import (
    Acknowledged,
    Claim,
    Claimed,
    Complete,
    DeadLettered,
    Enqueue,
    Enqueued,
    Fail,
    Heartbeat,
    JobStatus,
    NewJob,
    NoJobAvailable,
    QueueModel,
    Rejected,
    RejectReason,
    Returned,
)


def enqueue(model: QueueModel, *types: str, **options) -> tuple[QueueModel, list[str]]:
    model, result = spec.apply(model, Enqueue(tuple(NewJob(t, **options) for t in types)), 0.0)
    assert isinstance(result, Enqueued)
    return model, list(result.job_ids)


def claim(model: QueueModel, now: float = 0.0, types=None) -> tuple[QueueModel, Claimed]:
    model, result = spec.apply(model, Claim("w", types), now)
    assert isinstance(result, Claimed), result
    return model, result


def test_claims_follow_enqueue_order():
    model, ids = enqueue(QueueModel(), "a", "a", "a")

    claimed = []
    for _ in ids:
        model, result = claim(model)
        claimed.append(result.job_id)

    assert claimed == ids
    assert spec.apply(model, Claim("w"), 0.0)[1] == NoJobAvailable()


def test_assigned_ids_count_up():
    model, first = enqueue(QueueModel(), "a", id="order-1")
    model, second = enqueue(model, "a", "a")

    assert first == ["order-1"]
    assert second == ["job-1", "job-2"]


def test_explicit_id_in_assigned_form_is_invalid():
    with pytest.raises(ValueError, match="reserved for ids the queue assigns"):
        NewJob("a", id="job-7")


def test_type_filter_skips_other_types():
    model, ids = enqueue(QueueModel(), "a", "b", "a")

    model, first = claim(model, types=("b",))
    model, second = claim(model, types=("a", "c"))

    assert first.job_id == ids[1]
    assert second.job_id == ids[0]


def test_failed_job_keeps_its_position():
    model, ids = enqueue(QueueModel(), "a", "a")
    model, first = claim(model)

    model, result = spec.apply(model, Fail(first.job_id, first.token, "boom"), 1.0)
    model, again = claim(model, now=1.0)

    assert result == Returned(1.0)
    assert again.job_id == ids[0]
    assert again.attempt == 2
    assert again.token != first.token


def test_delayed_job_does_not_block_later_jobs():
    model, ids = enqueue(QueueModel(), "a", "a")
    model, first = claim(model)
    model, _ = spec.apply(model, Fail(first.job_id, first.token, delay=5.0), 1.0)

    model, second = claim(model, now=2.0)
    model, third = claim(model, now=6.0)

    assert second.job_id == ids[1]
    assert third.job_id == ids[0]


def test_fail_on_last_attempt_dead_letters():
    model, ids = enqueue(QueueModel(), "a", max_attempts=1)
    model, first = claim(model)

    model, result = spec.apply(model, Fail(first.job_id, first.token, "boom"), 3.0)

    assert isinstance(result, DeadLettered)
    assert result.reason == "failed on attempt 1 of 1: boom"
    assert model.jobs == ()
    assert model.dead_letters[0].job.id == ids[0]
    assert model.dead_letters[0].job.status is JobStatus.DEAD
    assert model.dead_letters[0].died_at == 3.0
    assert spec.status_of(model, ids[0]) is JobStatus.DEAD


def test_expiry_returns_then_dead_letters():
    model, _ = enqueue(QueueModel(), "a", max_attempts=2)
    model, _ = claim(model, now=0.0)

    model = spec.expire(model, now=10.0, timeout=10.0)
    assert model.jobs[0].status is JobStatus.IN_PROGRESS

    model = spec.expire(model, now=10.5, timeout=10.0)
    assert model.jobs[0].status is JobStatus.UNCLAIMED
    assert model.counters.expired == 1

    model, _ = claim(model, now=11.0)
    model = spec.expire(model, now=30.0, timeout=10.0)
    assert model.jobs == ()
    assert model.dead_letters[0].reason == "heartbeat older than 10 s on attempt 2 of 2"
    assert model.counters.dead == 1


def test_heartbeat_delays_expiry():
    model, _ = enqueue(QueueModel(), "a")
    model, first = claim(model, now=0.0)

    model, result = spec.apply(model, Heartbeat(first.job_id, first.token), 8.0)
    model = spec.expire(model, now=15.0, timeout=10.0)

    assert result == Acknowledged()
    assert model.jobs[0].status is JobStatus.IN_PROGRESS


def test_stale_worker_is_rejected():
    model, ids = enqueue(QueueModel(), "a")
    model, worker_a = claim(model, now=0.0)
    model = spec.expire(model, now=20.0, timeout=10.0)
    model, worker_b = claim(model, now=20.0)

    model, late = spec.apply(model, Complete(ids[0], worker_a.token), 21.0)
    model, done = spec.apply(model, Complete(ids[0], worker_b.token), 22.0)
    model, again = spec.apply(model, Complete(ids[0], worker_b.token), 23.0)

    assert isinstance(late, Rejected)
    assert late.reason is RejectReason.STALE_CLAIM
    assert done == Acknowledged()
    assert isinstance(again, Rejected)
    assert again.reason is RejectReason.UNKNOWN_JOB
    assert model.done == (ids[0],)
    assert model.counters.completed == 1


def test_foreign_token_is_rejected():
    model, _ = enqueue(QueueModel(), "a", "a")
    model, first = claim(model)
    model, second = claim(model)

    model, result = spec.apply(model, Complete(first.job_id, second.token), 1.0)

    assert isinstance(result, Rejected)
    assert result.reason is RejectReason.STALE_CLAIM
    assert spec.status_of(model, first.job_id) is JobStatus.IN_PROGRESS


def test_duplicate_id_rejects_whole_enqueue():
    model, _ = enqueue(QueueModel(), "a", id="x")

    batch = Enqueue((NewJob("a", id="y"), NewJob("a", id="x")))
    after, result = spec.apply(model, batch, 0.0)

    assert isinstance(result, Rejected)
    assert result.reason is RejectReason.DUPLICATE_ID
    assert after == model


def test_duplicate_id_inside_one_enqueue_is_rejected():
    batch = Enqueue((NewJob("a", id="x"), NewJob("a", id="x")))

    _, result = spec.apply(QueueModel(), batch, 0.0)

    assert isinstance(result, Rejected)
    assert result.reason is RejectReason.DUPLICATE_ID


@pytest.mark.parametrize(
    "build",
    [
        lambda: NewJob("a", max_attempts=0),
        lambda: NewJob("a", max_attempts=True),
        lambda: NewJob(""),
        lambda: NewJob("a", id=""),
        lambda: Enqueue(()),
        lambda: Claim(""),
        lambda: Claim("w", ()),
        lambda: Claim("w", ["a"]),
        lambda: Fail("j", "c1", delay=-1),
        lambda: Fail("j", "c1", delay=float("nan")),
        lambda: Complete("j", ""),
    ],
)
def test_invalid_mutations_raise(build):
    with pytest.raises((ValueError, TypeError)):
        build()


def test_max_attempts_message_names_value():
    with pytest.raises(ValueError, match="max_attempts must be >= 1, got 0"):
        NewJob("a", max_attempts=0)


def test_claim_tokens_never_repeat_for_reused_id():
    model, _ = enqueue(QueueModel(), "a", id="x")
    model, first = claim(model)
    model, _ = spec.apply(model, Complete("x", first.token), 0.0)
    model, _ = enqueue(model, "a", id="x")
    model, second = claim(model)

    assert first.token != second.token
    _, stale = spec.apply(model, Complete("x", first.token), 0.0)
    assert isinstance(stale, Rejected)
