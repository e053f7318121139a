"""Tests of the queue.json schema (osqueue.state) and batch application (osqueue.mutations)."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from osqueue.mutations import apply_batch
from osqueue.spec import queue as spec
from osqueue.state import (
    SCHEMA_VERSION,
    StateDecodeError,
    decode_state,
    encode_payload,
    encode_state,
    initial_state,
    to_model,
)

TIMEOUT = 10.0


def commit(state, mutations, now=0.0, commit_id="c", **options):
    return apply_batch(
        state, mutations, now=now, commit_id=commit_id, heartbeat_timeout=TIMEOUT, **options
    )


def test_round_trip_keeps_every_field():
    state = initial_state(address="broker-a", epoch=3, now=5.0, lease_seconds=7.5)
    state = commit(state, [spec.Enqueue.one("email", {"to": "x", "n": [1, 2]})]).state
    state = commit(state, [spec.Claim("w1")], now=1.0).state

    decoded = decode_state(encode_state(state))

    assert decoded == state
    assert decoded.schema_version == SCHEMA_VERSION
    assert decoded.broker.epoch == 3
    assert to_model(decoded).jobs[0].payload == {"to": "x", "n": [1, 2]}


def test_sequence_increases_and_records_commit():
    state = initial_state()

    first = commit(state, [], commit_id="a").state
    second = commit(first, [], commit_id="b").state

    assert (first.sequence, second.sequence) == (1, 2)
    assert second.find_commit("a").sequence == 1
    assert second.commit_at(2).commit_id == "b"
    assert encode_state(first) != encode_state(second)


def test_recent_commits_are_bounded():
    state = initial_state()
    for number in range(10):
        state = commit(state, [], commit_id=f"id-{number}", max_recent_commits=4).state

    assert [record.commit_id for record in state.recent_commits] == [
        "id-6", "id-7", "id-8", "id-9"]
    assert state.find_commit("id-5") is None


def document(**changes) -> bytes:
    state = commit(initial_state(), [spec.Enqueue.one("email", 1)]).state
    raw = json.loads(encode_state(state))
    for path, value in changes.items():
        target = raw
        parts = path.split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        target[parts[-1]] = value
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("jobs.0.attempts", "two", "$.jobs[0].attempts"),
        ("jobs.0.max_attempts", 0, "$.jobs[0].max_attempts"),
        ("jobs.0.status", "lost", "$.jobs[0].status"),
        ("jobs.0.attempts", 5, "$.jobs[0].attempts"),
        ("jobs.0.position", 99, "$.jobs[0].position"),
        ("jobs.0.claim_token", "c1", "$.jobs[0].claim_token"),
        ("sequence", -1, "$.sequence"),
        ("broker.epoch", None, "$.broker.epoch"),
        ("schema_version", 99, "$.schema_version"),
    ],
)
def test_decode_names_invalid_field(path, value, named):
    with pytest.raises(StateDecodeError) as caught:
        decode_state(document(**{path: value}))

    assert named in str(caught.value)


def test_decode_rejects_duplicate_ids():
    raw = json.loads(document())
    second = dict(raw["jobs"][0], position=1)
    raw["jobs"].append(second)
    raw["next_position"] = 2

    with pytest.raises(StateDecodeError, match=r"\$\.jobs\[1\]\.id"):
        decode_state(json.dumps(raw).encode())


def test_decode_rejects_broken_json():
    with pytest.raises(StateDecodeError, match="not valid JSON"):
        decode_state(b'{"schema_version": 1,')


def test_apply_leaves_input_state_unchanged():
    state = commit(initial_state(), [spec.Enqueue.one("a"), spec.Enqueue.one("a")]).state
    before = encode_state(state)

    outcome = commit(state, [spec.Claim("w"), spec.Complete("job-1", "c1")], now=1.0)

    assert encode_state(state) == before
    assert outcome.results[1] == spec.Acknowledged()
    assert [job.id for job in outcome.state.jobs] == ["job-2"]


def test_rejected_indexes_are_skipped():
    state = initial_state()
    rejection = spec.Rejected(spec.RejectReason.STATE_TOO_LARGE, "too large")

    outcome = commit(state, [spec.Enqueue.one("a"), spec.Claim("w")], rejected={0: rejection})

    assert outcome.results == [rejection, spec.NoJobAvailable()]
    assert outcome.state.jobs == []


def test_failed_job_in_same_batch_is_claimed_first():
    state = commit(initial_state(), [spec.Enqueue((spec.NewJob("a"), spec.NewJob("a")))]).state

    outcome = commit(state, [
        spec.Claim("w"),
        spec.Fail("job-1", "c1"),
        spec.Claim("w"),
    ], now=1.0)

    assert outcome.results[2].job_id == "job-1"


def test_large_batch_of_claims_on_large_queue():
    jobs = tuple(spec.NewJob("a" if n % 2 else "b") for n in range(20_000))
    state = commit(initial_state(), [spec.Enqueue(jobs)]).state

    claims = [spec.Claim("w", ("b",)) for _ in range(10_000)] + [spec.Claim("w")]
    outcome = commit(state, claims, now=1.0)

    claimed = [result.job_id for result in outcome.results[:-1]]
    assert claimed == [f"job-{n + 1}" for n in range(0, 20_000, 2)]
    assert outcome.results[-1].job_id == "job-2"


# ------------------------------------------------------------------------------------------
# Equivalence with the spec: random batches applied to both must give the same results.
# ------------------------------------------------------------------------------------------

TYPES = ("a", "b", "c")

operation = st.one_of(
    st.tuples(st.just("enqueue"), st.lists(st.sampled_from(TYPES), min_size=1, max_size=3),
              st.sampled_from([None, "x", "y"]), st.integers(1, 3)),
    st.tuples(st.just("claim"), st.sampled_from([None, ("a",), ("b", "c")])),
    st.tuples(st.sampled_from(["heartbeat", "complete", "stale"]), st.integers(0, 50)),
    st.tuples(st.just("fail"), st.integers(0, 50), st.sampled_from([0.0, 0.0, 3.0])),
)
batches = st.lists(
    st.tuples(st.sampled_from([0.0, 1.0, 6.0, 11.0]), st.lists(operation, max_size=8)),
    max_size=12,
)


def concrete(op, claims: list[spec.Claimed]) -> spec.Mutation | None:
    kind = op[0]
    if kind == "enqueue":
        _, types, explicit, max_attempts = op
        jobs = tuple(
            spec.NewJob(job_type, {"n": index}, max_attempts, explicit if index == 0 else None)
            for index, job_type in enumerate(types)
        )
        return spec.Enqueue(jobs)
    if kind == "claim":
        return spec.Claim("w", op[1])
    if not claims:
        return None
    held = claims[op[1] % len(claims)]
    if kind == "heartbeat":
        return spec.Heartbeat(held.job_id, held.token)
    if kind == "complete":
        return spec.Complete(held.job_id, held.token)
    if kind == "stale":
        return spec.Complete(held.job_id, "c999999")
    return spec.Fail(held.job_id, held.token, "boom", op[2])


@settings(max_examples=150, deadline=None)
@given(batches)
def test_apply_batch_matches_spec(plan):
    model = spec.QueueModel()
    state = initial_state()
    claims: list[spec.Claimed] = []
    now = 0.0

    for step, (advance, ops) in enumerate(plan):
        now += advance
        mutations = [m for m in (concrete(op, claims) for op in ops) if m is not None]

        model = spec.expire(model, now, TIMEOUT)
        model, expected = spec.apply_all(model, mutations, now)
        outcome = commit(state, mutations, now=now, commit_id=f"id-{step}")
        state = decode_state(encode_state(outcome.state))

        assert outcome.results == expected
        assert to_model(state, model.done) == model
        claims += [result for result in expected if isinstance(result, spec.Claimed)]


def test_payload_must_be_json():
    with pytest.raises(ValueError, match="is not JSON"):
        commit(initial_state(), [spec.Enqueue.one("a", object())])


def test_raw_payload_is_kept_verbatim():
    payload = msgspec.Raw(b'{"k":[1,2]}')

    state = commit(initial_state(), [spec.Enqueue.one("a", payload)]).state

    assert b'"payload":{"k":[1,2]}' in encode_state(state)


@pytest.mark.parametrize("raw", [b"[1,", b"1e400", b'{"a": 1} x', b""])
def test_raw_payload_invalid_rejected(raw):
    with pytest.raises(ValueError, match="raw payload .* is not valid JSON"):
        encode_payload(msgspec.Raw(raw))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"a": [1, 2, float("nan")]}, r"payload\['a'\]\[2\]: float nan is not JSON"),
        (float("inf"), r"payload: float inf is not JSON"),
        ([b"x"], r"payload\[0\]: bytes b'x' is not JSON"),
        ({"s": {1, 2}}, r"payload\['s'\]: set \{1, 2\} is not JSON"),
        ({1: "x"}, r"payload: dict key 1 of type int is not JSON"),
        ({"t": datetime.datetime(2026, 1, 1)}, r"payload\['t'\]: datetime .* is not JSON"),
        (uuid.UUID(int=1), r"payload: UUID .* is not JSON"),
        ({"d": [decimal.Decimal("1.5")]}, r"payload\['d'\]\[0\]: Decimal .* is not JSON"),
        ({"r": msgspec.Raw(b"1")}, r"payload\['r'\]: Raw"),
    ],
)
def test_payload_not_json_names_path(payload, message):
    with pytest.raises(ValueError, match=message):
        encode_payload(payload)


def test_payload_json_values_accepted():
    payload = {"a": [1, 2.5, None, True, "s", (3, 4)], "b": {"c": -1}, "big": 2**80}

    raw = encode_payload(payload)

    assert msgspec.json.decode(raw) == {**payload, "a": [1, 2.5, None, True, "s", [3, 4]]}


def test_payload_deep_nesting_checked():
    payload: list = []
    for _ in range(5000):
        payload = [payload]

    with pytest.raises(ValueError, match=r"float nan is not JSON"):
        encode_payload([payload, float("nan")])


def test_undecodable_stored_payload_dead_lettered():
    state = commit(initial_state(), [spec.Enqueue.one("a", 1), spec.Enqueue.one("a", 2)]).state
    bad = msgspec.structs.replace(state.jobs[0], payload=msgspec.Raw(b"1e400"))
    state = msgspec.structs.replace(state, jobs=[bad, state.jobs[1]])

    outcome = commit(state, [spec.Claim("w1")], now=1.0)

    claimed = outcome.results[0]
    assert isinstance(claimed, spec.Claimed)
    assert claimed.job_id == state.jobs[1].id
    assert claimed.payload == 2
    assert [letter.job.id for letter in outcome.state.dead_letters] == [bad.id]
    assert "stored payload is not valid JSON" in outcome.state.dead_letters[0].reason
    assert outcome.state.counters.dead == 1


def test_undecodable_payload_only_job_gives_none():
    state = commit(initial_state(), [spec.Enqueue.one("a", 1)]).state
    bad = msgspec.structs.replace(state.jobs[0], payload=msgspec.Raw(b"[1,"))
    state = msgspec.structs.replace(state, jobs=[bad])

    outcome = commit(state, [spec.Claim("w1")], now=1.0)

    assert outcome.results == [spec.NoJobAvailable()]
    assert outcome.state.jobs == []
    assert len(outcome.state.dead_letters) == 1


@pytest.mark.parametrize("where", ["top", "broker", "job", "counters"])
def test_unknown_field_rejected(where):
    state = commit(initial_state(address="b"), [spec.Enqueue.one("a", 1)]).state
    document = json.loads(encode_state(state))
    target = {"top": document, "broker": document["broker"], "job": document["jobs"][0],
              "counters": document["counters"]}[where]
    target["added_by_newer_version"] = 1

    with pytest.raises(StateDecodeError, match="added_by_newer_version"):
        decode_state(json.dumps(document).encode())


def test_fail_error_truncated_in_reason():
    state = commit(initial_state(), [spec.Enqueue.one("a", 1, max_attempts=1)]).state
    token = commit(state, [spec.Claim("w")]).results[0].token
    state = commit(state, [spec.Claim("w")]).state

    result = commit(state, [spec.Fail(state.jobs[0].id, token, "x" * 100_000)]).results[0]

    assert isinstance(result, spec.DeadLettered)
    assert len(result.reason) < spec.MAX_ERROR_CHARS + 100
    assert result.reason.endswith(f"... [{100_000 - spec.MAX_ERROR_CHARS} more characters cut]")


def _with_dead_letters(count):
    state = initial_state()
    for number in range(count):
        state = commit(state, [spec.Enqueue.one("a", number, max_attempts=1)], now=number).state
        claimed = commit(state, [spec.Claim("w")], now=number).results[0]
        state = commit(state, [spec.Claim("w"), spec.Fail(claimed.job_id, claimed.token, "e")],
                       now=number).state
    return state


@pytest.mark.parametrize(
    ("purge", "kept"),
    [
        (spec.PurgeDead(), []),
        (spec.PurgeDead(job_ids=("job-2",)), ["job-1", "job-3"]),
        (spec.PurgeDead(before=2.0), ["job-3"]),
        (spec.PurgeDead(job_ids=("job-1", "job-3"), before=1.0), ["job-2", "job-3"]),
        (spec.PurgeDead(job_ids=("nope",)), ["job-1", "job-2", "job-3"]),
    ],
)
def test_purge_dead_matches_model(purge, kept):
    state = _with_dead_letters(3)
    model = to_model(state)

    outcome = commit(state, [purge], now=10.0)
    model_after, expected = spec.apply(model, purge, 10.0)

    assert [letter.job.id for letter in outcome.state.dead_letters] == kept
    assert outcome.results == [expected]
    assert outcome.results[0] == spec.Purged(3 - len(kept))
    assert to_model(decode_state(encode_state(outcome.state))) == model_after
    assert outcome.state.counters.dead == 3


def test_purge_dead_same_batch_letter():
    state = commit(initial_state(), [spec.Enqueue.one("a", 1, max_attempts=1)]).state
    claimed = commit(state, [spec.Claim("w")]).results[0]
    state = commit(state, [spec.Claim("w")]).state

    outcome = commit(state, [spec.Fail(claimed.job_id, claimed.token), spec.PurgeDead()])

    assert outcome.results[1] == spec.Purged(1)
    assert outcome.state.dead_letters == []


@pytest.mark.parametrize(
    "options", [{"job_ids": ()}, {"job_ids": ["a"]}, {"job_ids": ("",)},
                {"before": float("nan")}, {"before": "1"}, {"before": True}])
def test_purge_dead_invalid_fields(options):
    with pytest.raises(ValueError, match="PurgeDead|job id"):
        spec.PurgeDead(**options)
