"""A model of the job queue for the linearizability checker, built on ``osqueue.spec.queue``.

Each operation is one mutation a producer or worker sent to a broker, with the result the
broker's engine produced, or ``UNKNOWN`` when no result was produced (the broker crashed
while committing, or the commit was indeterminate). Requests that never reached an engine
or certainly did not take effect (``NotLeaderError``, ``EngineStoppedError``,
``CommitFailedError``) are left out. ``osqueue.sim.queue_checks.queue_operations`` builds
the history.

What the model abstracts, and why that is sound
-----------------------------------------------
The spec's results depend on the broker's clock: heartbeat expiry releases a job whose
worker stopped sending heartbeats. Clients do not observe when a commit ran, so the model
does not know the time. It treats expiry as something that may have happened to any
in-progress job at any moment, and only as far as the results show:

- a job is ``u`` (certainly unclaimed and visible: enqueued and never claimed), ``p`` (in
  progress under a known claim token, possibly expired since), or ``x`` (returned by
  ``Fail``, released by expiry, or claimed by an operation whose result no client
  received). An ``x`` job may be unclaimed, not yet visible, or held under a token no
  client knows;
- a returned job becomes visible at ``visible_at`` on the clock of the broker that commits
  the claim, and brokers' clocks may disagree, so a returned job never blocks a claim in
  the model (the commit-chain check of ``osqueue.sim.queue_checks`` still checks FIFO for
  it with the committing broker's own time);
- a claim may receive a ``p`` or ``x`` job (it expired), but never skip a ``u`` job of a
  type it accepts that has a lower position (the FIFO guarantee of the spec);
- ``STALE_CLAIM`` for the current token of a ``p`` job means it expired: the job becomes
  ``x``; ``UNKNOWN_JOB`` for it means it expired on its last attempt and was
  dead-lettered: the job leaves the model;
- ``Acknowledged``, ``Returned`` and ``DeadLettered`` need the job in ``p`` under exactly
  that token; ``DeadLettered`` needs the attempt of that claim to be its last;
- claim tokens are ``c<n>`` from one counter, so every claim result must carry the next
  number, and jobs enqueued without an id get ``job-<n>`` from another counter.

Every behaviour the spec allows is accepted (so the check has no false alarms), while a
claim that skips a waiting job, a token handed out twice or out of order, a job claimed
twice without a release, a completion with a stale token, or an enqueue applied twice is
rejected.

The model is not partitioned: claim tokens, job ids and the FIFO order are shared by all
jobs, so no split by job would be sound.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from osqueue.checker import UNKNOWN, Model
from osqueue.spec import queue as spec

# Job tuple fields, in order.
_ID, _TYPE, _TAG, _STATUS, _ATTEMPTS, _MAX, _TOKEN = range(7)

UNCLAIMED = "u"
IN_PROGRESS = "p"
UNCERTAIN = "x"


def _token_number(token: str) -> int:
    if not token.startswith("c") or not token[1:].isdigit():
        raise ValueError(f"claim token {token!r} does not have the form c<n>")
    return int(token[1:])


def _job_number(job_id: str) -> int | None:
    if job_id.startswith("job-") and job_id[4:].isdigit():
        return int(job_id[4:])
    return None


def payload_tag(payload: Any) -> str:
    """Return the tag the simulated producers put in every payload (``{"tag": ...}``)."""

    if isinstance(payload, dict) and isinstance(payload.get("tag"), str):
        return payload["tag"]
    return repr(payload)


def encode_input(mutation: spec.Mutation) -> tuple:
    """Return the checker input of ``mutation``.

    A claim's worker is left out: the model does not need it, and equal inputs let the
    checker treat concurrent unobserved claims as interchangeable.
    """

    if isinstance(mutation, spec.Enqueue):
        return ("enqueue", tuple(
            (job.type, payload_tag(job.payload), job.max_attempts) for job in mutation.jobs))
    if isinstance(mutation, spec.Claim):
        return ("claim", mutation.types)
    if isinstance(mutation, spec.Heartbeat):
        return ("heartbeat", mutation.job_id, _token_number(mutation.token))
    if isinstance(mutation, spec.Complete):
        return ("complete", mutation.job_id, _token_number(mutation.token))
    if isinstance(mutation, spec.Fail):
        return ("fail", mutation.job_id, _token_number(mutation.token))
    raise TypeError(f"not a queue mutation: {mutation!r}")


def encode_output(result: Any) -> Any:
    """Return the checker output of a ``spec.queue`` result (``UNKNOWN`` stays ``UNKNOWN``)."""

    if result is UNKNOWN:
        return UNKNOWN
    if isinstance(result, spec.Enqueued):
        return ("enqueued", result.job_ids)
    if isinstance(result, spec.Claimed):
        return ("claimed", result.job_id, result.type, payload_tag(result.payload),
                result.attempt, result.max_attempts, _token_number(result.token))
    if isinstance(result, spec.NoJobAvailable):
        return ("none",)
    if isinstance(result, spec.Acknowledged):
        return ("ack",)
    if isinstance(result, spec.Returned):
        return ("returned",)
    if isinstance(result, spec.DeadLettered):
        return ("dead",)
    if isinstance(result, spec.Rejected):
        return ("rejected", result.reason.value)
    raise TypeError(f"not a queue result: {result!r}")


def initial_state() -> tuple:
    """Return the empty queue: no jobs, next claim token 1, next job number 1."""

    return ((), 1, 1)


def _find(jobs: tuple, job_id: str) -> int | None:
    for index, job in enumerate(jobs):
        if job[_ID] == job_id:
            return index
    return None


def _with(jobs: tuple, index: int, job: tuple | None) -> tuple:
    if job is None:
        return jobs[:index] + jobs[index + 1:]
    return jobs[:index] + (job,) + jobs[index + 1:]


def _accepts(types: tuple[str, ...] | None, job_type: str) -> bool:
    return types is None or job_type in types


def _first_unclaimed(jobs: tuple, types: tuple[str, ...] | None) -> int | None:
    for index, job in enumerate(jobs):
        if job[_STATUS] == UNCLAIMED and _accepts(types, job[_TYPE]):
            return index
    return None


def _step_enqueue(state: tuple, input: tuple, output: Any) -> tuple[bool, tuple]:
    jobs, next_claim, next_number = state
    if isinstance(output, tuple) and output[0] == "rejected":
        # Only a state too large rejects an enqueue without explicit ids; nothing changes.
        return output[1] == spec.RejectReason.STATE_TOO_LARGE.value, state
    if output is not UNKNOWN and output[0] != "enqueued":
        return False, state

    new_jobs = []
    for offset, (job_type, tag, max_attempts) in enumerate(input[1]):
        job_id = spec.job_id_for(next_number + offset)
        new_jobs.append((job_id, job_type, tag, UNCLAIMED, 0, max_attempts, 0))
    ids = tuple(job[_ID] for job in new_jobs)
    if output is not UNKNOWN and output[1] != ids:
        return False, state
    return True, (jobs + tuple(new_jobs), next_claim, next_number + len(new_jobs))


def _step_claim(state: tuple, input: tuple, output: Any) -> tuple[bool, tuple]:
    jobs, next_claim, next_number = state
    types = input[1]
    first = _first_unclaimed(jobs, types)

    if output is UNKNOWN:
        # The claim took the first unclaimed job, or a job that had expired, or nothing.
        # Marking the first unclaimed job uncertain and counting a token covers all three
        # without branching (leaving the operation out covers "nothing").
        if first is None:
            if not any(job[_STATUS] != UNCLAIMED and _accepts(types, job[_TYPE])
                       for job in jobs):
                return True, state
            return True, (jobs, next_claim + 1, next_number)
        job = jobs[first]
        uncertain = job[:_STATUS] + (UNCERTAIN, job[_ATTEMPTS], job[_MAX], 0)
        return True, (_with(jobs, first, uncertain), next_claim + 1, next_number)

    if output[0] == "none":
        return first is None, state
    if output[0] != "claimed":
        return False, state

    _, job_id, job_type, tag, attempt, max_attempts, token = output
    if token != next_claim:
        return False, state
    index = _find(jobs, job_id)
    if index is None:
        return False, state
    job = jobs[index]
    if (job[_TYPE], job[_TAG], job[_MAX]) != (job_type, tag, max_attempts):
        return False, state
    if not _accepts(types, job_type) or not 1 <= attempt <= max_attempts:
        return False, state
    # An unclaimed job's attempts are exact. A claimed or uncertain job may have been
    # claimed again by claims whose results no client received.
    if job[_STATUS] == UNCLAIMED and attempt != job[_ATTEMPTS] + 1:
        return False, state
    if job[_STATUS] != UNCLAIMED and attempt <= job[_ATTEMPTS]:
        return False, state
    # FIFO: no certainly unclaimed job of an accepted type may come before it.
    if first is not None and first < index:
        return False, state
    claimed = job[:_STATUS] + (IN_PROGRESS, attempt, max_attempts, token)
    return True, (_with(jobs, index, claimed), next_claim + 1, next_number)


def _step_with_token(state: tuple, input: tuple, output: Any) -> tuple[bool, tuple]:
    jobs, next_claim, next_number = state
    kind, job_id, token = input
    index = _find(jobs, job_id)
    job = None if index is None else jobs[index]
    current = job is not None and job[_STATUS] == IN_PROGRESS and job[_TOKEN] == token
    last_attempt = current and job[_ATTEMPTS] >= job[_MAX]

    if output is UNKNOWN:
        # Leaving the operation out covers every other outcome (a rejection changes nothing
        # and an expiry is already allowed at any time).
        if not current or kind == "heartbeat":
            return True, state
        if kind == "complete" or last_attempt:
            return True, (_with(jobs, index, None), next_claim, next_number)
        returned = job[:_STATUS] + (UNCERTAIN, job[_ATTEMPTS], job[_MAX], 0)
        return True, (_with(jobs, index, returned), next_claim, next_number)

    result = output[0]
    if result == "rejected":
        reason = output[1]
        if reason == spec.RejectReason.UNKNOWN_JOB.value:
            if job is None:
                return True, state
            # A live job is unknown only after it expired on its last attempt.
            if job[_STATUS] == UNCLAIMED:
                return False, state
            if job[_STATUS] == IN_PROGRESS and job[_ATTEMPTS] < job[_MAX]:
                return False, state
            return True, (_with(jobs, index, None), next_claim, next_number)
        if reason == spec.RejectReason.STALE_CLAIM.value:
            if job is None:
                return False, state
            if current:
                # The claim expired: released, and perhaps claimed since by an unseen claim.
                uncertain = job[:_STATUS] + (UNCERTAIN, job[_ATTEMPTS], job[_MAX], 0)
                return True, (_with(jobs, index, uncertain), next_claim, next_number)
            return True, state
        return False, state

    if not current:
        return False, state
    if kind == "heartbeat":
        return result == "ack", state
    if kind == "complete":
        return result == "ack", (_with(jobs, index, None), next_claim, next_number)
    if result == "dead":
        return last_attempt, (_with(jobs, index, None), next_claim, next_number)
    if result == "returned":
        returned = job[:_STATUS] + (UNCERTAIN, job[_ATTEMPTS], job[_MAX], 0)
        return not last_attempt, (_with(jobs, index, returned), next_claim, next_number)
    return False, state


def step(state: tuple, input: tuple, output: Any) -> tuple[bool, tuple]:
    """Return whether ``output`` is possible for ``input`` in ``state``, and the new state."""

    kind = input[0]
    if kind == "enqueue":
        return _step_enqueue(state, input, output)
    if kind == "claim":
        return _step_claim(state, input, output)
    if kind in ("heartbeat", "complete", "fail"):
        return _step_with_token(state, input, output)
    raise ValueError(f"unknown queue operation {input!r}")


def describe_operation(input: tuple, output: Any) -> str:
    kind = input[0]
    result = "?" if output is UNKNOWN else " ".join(str(part) for part in output)
    if kind == "enqueue":
        tags = ",".join(tag for _type, tag, _max in input[1])
        return f"enqueue({tags}) -> {result}"
    if kind == "claim":
        types = "any" if input[1] is None else "|".join(input[1])
        return f"claim({types}) -> {result}"
    return f"{kind}({input[1]}, c{input[2]}) -> {result}"


def describe_state(state: tuple) -> str:
    jobs, next_claim, next_number = state
    parts = []
    for job in jobs:
        text = f"{job[_ID]}:{job[_STATUS]}"
        if job[_STATUS] == IN_PROGRESS:
            text += f"@c{job[_TOKEN]}#{job[_ATTEMPTS]}"
        parts.append(text)
    return f"[{' '.join(parts)}] next c{next_claim} job-{next_number}"


def queue_model() -> Model:
    """Return the checker model of the queue (see the module docstring)."""

    return Model(
        name="queue",
        init=initial_state,
        step=step,
        describe_operation=describe_operation,
        describe_state=describe_state,
    )


def job_ids_of(jobs: Sequence[tuple]) -> list[str]:
    return [job[_ID] for job in jobs]


__all__ = [
    "describe_operation",
    "encode_input",
    "encode_output",
    "initial_state",
    "payload_tag",
    "queue_model",
    "step",
]
