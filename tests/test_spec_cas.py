"""The executable CAS model in osqueue.spec.cas, alone and against MemoryBackend."""

from __future__ import annotations

import random

import anyio
import pytest
from osqueue.errors import CASConflictError, ConflictReason
from osqueue.spec.cas import (
    ABSENT,
    Conflict,
    ConflictKind,
    ObjectStoreSpec,
    StoredObject,
    StoreState,
    TokenPolicy,
    Written,
    content_token,
)
from osqueue.storage import MemoryBackend, StorageVersion

POLICIES = list(TokenPolicy)


@pytest.fixture(params=POLICIES, ids=lambda policy: policy.value)
def spec(request: pytest.FixtureRequest) -> ObjectStoreSpec:
    return ObjectStoreSpec(request.param)


def written_token(result: object) -> str:
    assert isinstance(result, Written), result
    return result.token


def test_initial_state_is_empty(spec: ObjectStoreSpec) -> None:
    state = spec.initial()

    assert spec.read(state, "k") is ABSENT
    assert state.writes == 0
    assert dict(state.objects) == {}
    assert repr(ABSENT) == "ABSENT"


def test_create_stores_object(spec: ObjectStoreSpec) -> None:
    state, result = spec.create_if_not_exists(spec.initial(), "k", b"A")

    token = written_token(result)
    assert spec.read(state, "k") == StoredObject(b"A", token)
    assert state.writes == 1


def test_create_existing_is_exists_conflict(spec: ObjectStoreSpec) -> None:
    state, _ = spec.create_if_not_exists(spec.initial(), "k", b"A")
    after, result = spec.create_if_not_exists(state, "k", b"B")

    assert result == Conflict(ConflictKind.EXISTS)
    assert after is state


def test_write_missing_is_missing_conflict(spec: ObjectStoreSpec) -> None:
    state = spec.initial()
    after, result = spec.write(state, "k", b"A", "v1")

    assert result == Conflict(ConflictKind.MISSING)
    assert after is state
    assert spec.read(after, "k") is ABSENT


def test_write_stale_is_stale_conflict(spec: ObjectStoreSpec) -> None:
    state, created = spec.create_if_not_exists(spec.initial(), "k", b"A")
    state, _ = spec.write(state, "k", b"B", written_token(created))
    after, result = spec.write(state, "k", b"C", written_token(created))

    assert result == Conflict(ConflictKind.STALE)
    assert after is state
    stored = spec.read(after, "k")
    assert isinstance(stored, StoredObject)
    assert stored.data == b"B"


def test_write_with_current_token_replaces(spec: ObjectStoreSpec) -> None:
    state, created = spec.create_if_not_exists(spec.initial(), "k", b"A")
    state, result = spec.write(state, "k", b"B", written_token(created))

    assert spec.read(state, "k") == StoredObject(b"B", written_token(result))
    assert state.writes == 2


def test_operations_leave_old_state_unchanged(spec: ObjectStoreSpec) -> None:
    empty = spec.initial()
    state, created = spec.create_if_not_exists(empty, "k", b"A")
    spec.write(state, "k", b"B", written_token(created))

    assert spec.read(empty, "k") is ABSENT
    assert spec.read(state, "k") == StoredObject(b"A", written_token(created))


def test_state_mapping_is_read_only(spec: ObjectStoreSpec) -> None:
    state, _ = spec.create_if_not_exists(spec.initial(), "k", b"A")

    with pytest.raises(TypeError):
        state.objects["k"] = StoredObject(b"B", "x")  # type: ignore[index]


def test_conflicts_do_not_count_as_writes(spec: ObjectStoreSpec) -> None:
    state, _ = spec.create_if_not_exists(spec.initial(), "k", b"A")
    state, _ = spec.create_if_not_exists(state, "k", b"B")
    state, _ = spec.write(state, "k", b"B", "wrong")

    assert state.writes == 1


def test_unique_tokens_differ_across_keys_and_bytes() -> None:
    spec = ObjectStoreSpec(TokenPolicy.UNIQUE)
    state, a = spec.create_if_not_exists(spec.initial(), "a", b"same")
    state, b = spec.create_if_not_exists(state, "b", b"same")
    state, again = spec.write(state, "a", b"same", written_token(a))

    tokens = [written_token(a), written_token(b), written_token(again)]
    assert tokens == ["v1", "v2", "v3"]


def test_unique_tokens_reject_aba() -> None:
    spec = ObjectStoreSpec(TokenPolicy.UNIQUE)
    state, created = spec.create_if_not_exists(spec.initial(), "k", b"A")
    held = written_token(created)
    state, b = spec.write(state, "k", b"B", held)
    state, _ = spec.write(state, "k", b"A", written_token(b))
    _, result = spec.write(state, "k", b"C", held)

    assert result == Conflict(ConflictKind.STALE)


def test_content_hash_tokens_follow_bytes() -> None:
    spec = ObjectStoreSpec(TokenPolicy.CONTENT_HASH)
    state, a = spec.create_if_not_exists(spec.initial(), "a", b"same")
    _, b = spec.create_if_not_exists(state, "b", b"same")

    assert written_token(a) == written_token(b) == content_token(b"same")
    assert content_token(b"") == "d41d8cd98f00b204e9800998ecf8427e"


def test_content_hash_allows_aba() -> None:
    spec = ObjectStoreSpec(TokenPolicy.CONTENT_HASH)
    state, created = spec.create_if_not_exists(spec.initial(), "k", b"A")
    held = written_token(created)
    state, b = spec.write(state, "k", b"B", held)
    state, restored = spec.write(state, "k", b"A", written_token(b))
    state, result = spec.write(state, "k", b"C", held)

    assert written_token(restored) == held
    assert isinstance(result, Written)
    stored = spec.read(state, "k")
    assert isinstance(stored, StoredObject)
    assert stored.data == b"C"


def test_default_policy_is_unique() -> None:
    assert ObjectStoreSpec().policy is TokenPolicy.UNIQUE
    assert StoreState().writes == 0


_REASON_OF_KIND = {
    ConflictKind.STALE: ConflictReason.STALE_VERSION,
    ConflictKind.MISSING: ConflictReason.MISSING,
    ConflictKind.EXISTS: ConflictReason.EXISTS,
}


def model_token(version: StorageVersion, policy: TokenPolicy) -> str:
    """Return the model's spelling of a memory-backend token."""

    if policy is TokenPolicy.UNIQUE:
        return f"v{version.value}"
    return str(version.value)


async def compare_with_memory(policy: TokenPolicy, seed: int, steps: int) -> None:
    """Run one random sequence of operations on the model and on MemoryBackend.

    Keys, bytes and tokens come from small pools, so conflicts, repeated bytes and ABA
    happen often. Every result must agree.
    """

    rng = random.Random(seed)
    spec = ObjectStoreSpec(policy)
    state = spec.initial()
    store = MemoryBackend(token_policy=policy)
    seen: list[StorageVersion] = [StorageVersion("memory", content_token(b"x"))]

    for _ in range(steps):
        key = rng.choice(["a", "b"])
        data = rng.choice([b"x", b"y", b"z"])
        operation = rng.choice(["read", "write", "create"])

        if operation == "read":
            expected_read = spec.read(state, key)
            result = await store.read(key)
            if expected_read is ABSENT:
                assert result is None
            else:
                assert result is not None
                assert result.data == expected_read.data
                assert model_token(result.version, policy) == expected_read.token
                seen.append(result.version)
            continue

        version = rng.choice(seen)
        if operation == "write":
            state, outcome = spec.write(state, key, data, model_token(version, policy))
            call = store.write(key, data, version)
        else:
            state, outcome = spec.create_if_not_exists(state, key, data)
            call = store.create_if_not_exists(key, data)

        try:
            new_version = await call
        except CASConflictError as error:
            assert isinstance(outcome, Conflict), f"model wrote {outcome}, memory raised {error}"
            assert error.reason is _REASON_OF_KIND[outcome.kind]
        else:
            assert isinstance(outcome, Written), f"model {outcome}, memory wrote {new_version}"
            assert model_token(new_version, policy) == outcome.token
            seen.append(new_version)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda policy: policy.value)
@pytest.mark.parametrize("seed", range(5))
def test_memory_backend_matches_model(policy: TokenPolicy, seed: int) -> None:
    anyio.run(compare_with_memory, policy, seed, 300)
