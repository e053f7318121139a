"""MemoryBackend: both token policies, fault injection and input checks.

The async tests run under asyncio and trio through anyio's pytest plugin.
"""

from __future__ import annotations

import random

import anyio
import pytest
import trio
import trio.testing
from osqueue.errors import (
    CASConflictError,
    ConflictReason,
    IndeterminateWriteError,
    InvalidDataError,
    InvalidKeyError,
    InvalidVersionError,
    OsqueueError,
    StorageBackendError,
)
from osqueue.spec.cas import TokenPolicy, content_token
from osqueue.storage import (
    MAX_KEY_BYTES,
    MemoryBackend,
    StorageBackend,
    StorageVersion,
    SupportsDelete,
)
from osqueue.storage.memory import Fault

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


async def stored(store: MemoryBackend, key: str) -> bytes | None:
    result = await store.read(key)
    return None if result is None else result.data


def test_implements_protocols() -> None:
    store = MemoryBackend()

    assert isinstance(store, StorageBackend)
    assert isinstance(store, SupportsDelete)
    assert store.name == "memory"


async def test_read_missing_returns_none() -> None:
    assert await MemoryBackend().read("queue.json") is None


async def test_create_then_read() -> None:
    store = MemoryBackend()
    version = await store.create_if_not_exists("queue.json", b"{}")
    result = await store.read("queue.json")

    assert result is not None
    assert result.data == b"{}"
    assert result.version == version
    assert version.backend == "memory"


async def test_write_with_current_token() -> None:
    store = MemoryBackend()
    first = await store.create_if_not_exists("k", b"1")
    second = await store.write("k", b"2", first)

    assert second != first
    assert await stored(store, "k") == b"2"


async def test_write_with_stale_token_conflicts() -> None:
    store = MemoryBackend()
    first = await store.create_if_not_exists("k", b"1")
    second = await store.write("k", b"2", first)

    with pytest.raises(CASConflictError) as raised:
        await store.write("k", b"3", first)

    assert raised.value.reason is ConflictReason.STALE_VERSION
    assert raised.value.key == "k"
    assert not raised.value.retry_same_request
    result = await store.read("k")
    assert result is not None
    assert result.data == b"2"
    assert result.version == second


async def test_write_to_missing_key_conflicts() -> None:
    store = MemoryBackend()

    with pytest.raises(CASConflictError) as raised:
        await store.write("k", b"1", StorageVersion("memory", 1))

    assert raised.value.reason is ConflictReason.MISSING
    assert store.keys() == []


async def test_create_existing_conflicts() -> None:
    store = MemoryBackend()
    version = await store.create_if_not_exists("k", b"1")

    with pytest.raises(CASConflictError) as raised:
        await store.create_if_not_exists("k", b"2")

    assert raised.value.reason is ConflictReason.EXISTS
    result = await store.read("k")
    assert result is not None
    assert result.data == b"1"
    assert result.version == version


async def test_unique_tokens_never_repeat() -> None:
    store = MemoryBackend(token_policy=TokenPolicy.UNIQUE)
    a1 = await store.create_if_not_exists("k", b"A")
    b = await store.write("k", b"B", a1)
    a2 = await store.write("k", b"A", b)
    other = await store.create_if_not_exists("other", b"A")

    assert len({a1, b, a2, other}) == 4


async def test_unique_tokens_prevent_aba() -> None:
    store = MemoryBackend(token_policy=TokenPolicy.UNIQUE)
    held = await store.create_if_not_exists("k", b"A")
    b = await store.write("k", b"B", held)
    await store.write("k", b"A", b)

    with pytest.raises(CASConflictError) as raised:
        await store.write("k", b"C", held)

    assert raised.value.reason is ConflictReason.STALE_VERSION
    assert await stored(store, "k") == b"A"


async def test_content_hash_token_is_md5() -> None:
    store = MemoryBackend(token_policy=TokenPolicy.CONTENT_HASH)
    version = await store.create_if_not_exists("k", b"hello")

    assert version == StorageVersion("memory", content_token(b"hello"))
    assert version.value == "5d41402abc4b2a76b9719d911017c592"


async def test_content_hash_allows_aba() -> None:
    store = MemoryBackend(token_policy=TokenPolicy.CONTENT_HASH)
    held = await store.create_if_not_exists("k", b"A")
    b = await store.write("k", b"B", held)
    restored = await store.write("k", b"A", b)

    # A -> B -> A gives back A's token, so a writer that read A before B still wins.
    assert restored == held
    await store.write("k", b"C", held)
    assert await stored(store, "k") == b"C"


async def test_content_hash_same_bytes_keep_token() -> None:
    store = MemoryBackend(token_policy=TokenPolicy.CONTENT_HASH)
    held = await store.create_if_not_exists("k", b"A")
    again = await store.write("k", b"A", held)

    assert again == held
    await store.write("k", b"B", held)
    assert await stored(store, "k") == b"B"


async def test_concurrent_writers_one_wins() -> None:
    store = MemoryBackend(latency=0.001)
    version = await store.create_if_not_exists("k", b"0")
    outcomes: list[str] = []

    async def attempt(index: int) -> None:
        try:
            await store.write("k", str(index).encode(), version)
            outcomes.append("won")
        except CASConflictError as error:
            assert error.reason is ConflictReason.STALE_VERSION
            outcomes.append("lost")

    async with anyio.create_task_group() as group:
        for index in range(1, 9):
            group.start_soon(attempt, index)

    assert outcomes.count("won") == 1
    assert outcomes.count("lost") == 7


async def test_drop_request_on_write_not_applied() -> None:
    store = MemoryBackend()
    version = await store.create_if_not_exists("k", b"1")
    store.inject(Fault.DROP_REQUEST)

    with pytest.raises(IndeterminateWriteError) as raised:
        await store.write("k", b"2", version)

    assert raised.value.key == "k"
    result = await store.read("k")
    assert result is not None
    assert result.data == b"1"
    assert result.version == version
    assert store.faults_injected[Fault.DROP_REQUEST] == 1


async def test_drop_response_on_write_applied() -> None:
    store = MemoryBackend()
    version = await store.create_if_not_exists("k", b"1")
    store.inject(Fault.DROP_RESPONSE)

    with pytest.raises(IndeterminateWriteError):
        await store.write("k", b"2", version)

    result = await store.read("k")
    assert result is not None
    assert result.data == b"2"
    assert result.version != version
    assert store.faults_injected[Fault.DROP_RESPONSE] == 1


async def test_drop_request_on_create_not_applied() -> None:
    store = MemoryBackend()
    store.inject(Fault.DROP_REQUEST, operations=("create",))

    with pytest.raises(IndeterminateWriteError):
        await store.create_if_not_exists("k", b"1")

    assert store.keys() == []


async def test_drop_response_on_create_applied() -> None:
    store = MemoryBackend()
    store.inject(Fault.DROP_RESPONSE, operations=("create",))

    with pytest.raises(IndeterminateWriteError):
        await store.create_if_not_exists("k", b"1")

    assert await stored(store, "k") == b"1"


async def test_unavailable_read_is_retryable() -> None:
    store = MemoryBackend()
    await store.create_if_not_exists("k", b"1")
    store.inject(Fault.UNAVAILABLE, operations=("read",))

    with pytest.raises(StorageBackendError) as raised:
        await store.read("k")

    assert raised.value.retryable
    assert raised.value.status == 503
    assert raised.value.key == "k"
    assert await stored(store, "k") == b"1"


async def test_unavailable_write_not_applied() -> None:
    store = MemoryBackend()
    version = await store.create_if_not_exists("k", b"1")
    store.inject(Fault.UNAVAILABLE, operations=("write",))

    with pytest.raises(StorageBackendError) as raised:
        await store.write("k", b"2", version)

    assert raised.value.retryable
    assert await stored(store, "k") == b"1"


async def test_concurrent_request_fault_can_be_retried() -> None:
    store = MemoryBackend()
    version = await store.create_if_not_exists("k", b"1")
    store.inject(Fault.CONCURRENT_REQUEST)

    with pytest.raises(CASConflictError) as raised:
        await store.write("k", b"2", version)

    assert raised.value.reason is ConflictReason.CONCURRENT_REQUEST
    assert raised.value.retry_same_request
    assert await stored(store, "k") == b"1"
    await store.write("k", b"2", version)
    assert await stored(store, "k") == b"2"


async def test_write_only_fault_skips_reads() -> None:
    store = MemoryBackend()
    version = await store.create_if_not_exists("k", b"1")
    store.inject(Fault.DROP_REQUEST)

    assert await stored(store, "k") == b"1"
    assert store.faults_injected[Fault.DROP_REQUEST] == 0
    with pytest.raises(IndeterminateWriteError):
        await store.write("k", b"2", version)


async def test_fault_hits_only_named_operations() -> None:
    store = MemoryBackend()
    store.inject(Fault.UNAVAILABLE, times=2, operations=("create",))

    assert await store.read("k") is None
    for _ in range(2):
        with pytest.raises(StorageBackendError):
            await store.create_if_not_exists("k", b"1")
    await store.create_if_not_exists("k", b"1")

    assert store.faults_injected[Fault.UNAVAILABLE] == 2


async def test_queued_faults_hit_in_order() -> None:
    store = MemoryBackend()
    version = await store.create_if_not_exists("k", b"1")
    store.inject(Fault.UNAVAILABLE, operations=("write",))
    store.inject(Fault.DROP_RESPONSE, operations=("write",))

    with pytest.raises(StorageBackendError):
        await store.write("k", b"2", version)
    with pytest.raises(IndeterminateWriteError):
        await store.write("k", b"2", version)
    assert await stored(store, "k") == b"2"


def test_write_only_fault_on_reads_rejected() -> None:
    store = MemoryBackend()

    with pytest.raises(ValueError, match="drop_response"):
        store.inject(Fault.DROP_RESPONSE, operations=("read",))


def test_fault_rates_need_seeded_rng() -> None:
    with pytest.raises(ValueError, match="rng"):
        MemoryBackend(fault_rates={Fault.UNAVAILABLE: 0.5})


async def run_with_fault_rates(seed: int) -> list[str]:
    store = MemoryBackend(
        fault_rates={Fault.UNAVAILABLE: 0.2, Fault.DROP_RESPONSE: 0.2},
        rng=random.Random(seed),
    )
    outcomes: list[str] = []
    for index in range(40):
        try:
            await store.create_if_not_exists(f"k{index}", b"x")
            outcomes.append("ok")
        except OsqueueError as error:
            outcomes.append(type(error).__name__)
    return outcomes


async def test_fault_rates_replay_with_same_seed() -> None:
    first = await run_with_fault_rates(7)
    second = await run_with_fault_rates(7)
    other = await run_with_fault_rates(8)

    assert first == second
    assert first != other
    assert "ok" in first
    assert "StorageBackendError" in first
    assert "IndeterminateWriteError" in first


async def test_fault_rates_spare_reads_from_write_faults() -> None:
    store = MemoryBackend(fault_rates={Fault.DROP_REQUEST: 1.0}, rng=random.Random(1))
    for _ in range(10):
        assert await store.read("k") is None

    with pytest.raises(IndeterminateWriteError):
        await store.create_if_not_exists("k", b"x")
    assert store.keys() == []
    assert store.faults_injected[Fault.DROP_REQUEST] == 1


async def test_ignore_preconditions_overwrites() -> None:
    store = MemoryBackend(ignore_preconditions=True)
    first = await store.create_if_not_exists("k", b"1")
    await store.write("k", b"2", first)

    await store.write("k", b"3", first)
    assert await stored(store, "k") == b"3"
    await store.create_if_not_exists("k", b"4")
    assert await stored(store, "k") == b"4"
    await store.write("new", b"5", first)
    assert await stored(store, "new") == b"5"


def test_latency_follows_mock_clock() -> None:
    async def main() -> None:
        store = MemoryBackend(latency=2.5)
        await store.create_if_not_exists("k", b"1")
        await store.read("k")
        assert trio.current_time() == pytest.approx(5.0)

        delays = iter([1.0, 3.0])
        varying = MemoryBackend(latency=lambda: next(delays))
        await varying.read("k")
        await varying.read("k")
        assert trio.current_time() == pytest.approx(9.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_delete_and_keys() -> None:
    store = MemoryBackend()
    await store.create_if_not_exists("b", b"1")
    await store.create_if_not_exists("a", b"1")

    assert store.keys() == ["a", "b"]
    await store.delete("a")
    await store.delete("missing")
    assert store.keys() == ["b"]
    await store.create_if_not_exists("a", b"2")
    assert await stored(store, "a") == b"2"


async def test_key_of_max_bytes_accepted() -> None:
    store = MemoryBackend()
    key = "é" * (MAX_KEY_BYTES // 2)

    await store.create_if_not_exists(key, b"1")
    assert store.keys() == [key]


@pytest.mark.parametrize(
    "key",
    ["", "é" * (MAX_KEY_BYTES // 2) + "x", "k" * (MAX_KEY_BYTES + 1), b"queue.json", None],
    ids=["empty", "1025-utf8-bytes", "1025-ascii", "bytes", "none"],
)
async def test_invalid_key_changes_nothing(key: object) -> None:
    store = MemoryBackend()
    version = await store.create_if_not_exists("k", b"1")
    store.inject(Fault.UNAVAILABLE)

    with pytest.raises(InvalidKeyError) as raised:
        await store.read(key)  # type: ignore[arg-type]
    assert isinstance(raised.value, ValueError)
    with pytest.raises(InvalidKeyError):
        await store.write(key, b"2", version)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        await store.create_if_not_exists(key, b"2")  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        await store.delete(key)  # type: ignore[arg-type]

    assert store.keys() == ["k"]
    assert store.faults_injected[Fault.UNAVAILABLE] == 0


async def test_long_key_message_names_limit() -> None:
    with pytest.raises(InvalidKeyError, match="1025 bytes of UTF-8, more than the maximum of 1024"):
        await MemoryBackend().read("k" * 1025)


@pytest.mark.parametrize("data", ["text", bytearray(b"1"), memoryview(b"1"), None])
async def test_non_bytes_data_changes_nothing(data: object) -> None:
    store = MemoryBackend()
    version = await store.create_if_not_exists("k", b"1")

    with pytest.raises(InvalidDataError) as raised:
        await store.write("k", data, version)  # type: ignore[arg-type]
    assert isinstance(raised.value, TypeError)
    with pytest.raises(InvalidDataError):
        await store.create_if_not_exists("new", data)  # type: ignore[arg-type]

    assert store.keys() == ["k"]
    assert await stored(store, "k") == b"1"


@pytest.mark.parametrize(
    "token",
    [StorageVersion("s3", '"5d41402abc4b2a76b9719d911017c592"'), StorageVersion("gcs", 1), 1, "1"],
    ids=["s3-token", "gcs-token", "int", "str"],
)
async def test_foreign_token_changes_nothing(token: object) -> None:
    store = MemoryBackend()
    version = await store.create_if_not_exists("k", b"1")
    assert version.value == 1

    with pytest.raises(InvalidVersionError) as raised:
        await store.write("k", b"2", token)  # type: ignore[arg-type]

    assert isinstance(raised.value, TypeError)
    assert await stored(store, "k") == b"1"
    result = await store.read("k")
    assert result is not None
    assert result.version == version


async def test_set_fault_rates_changes_faults() -> None:
    store = MemoryBackend(rng=random.Random(1))
    await store.create_if_not_exists("k", b"x")

    store.set_fault_rates({Fault.UNAVAILABLE: 1.0})
    with pytest.raises(StorageBackendError):
        await store.read("k")

    store.set_fault_rates(None)
    assert (await store.read("k")).data == b"x"
    assert store.faults_injected[Fault.UNAVAILABLE] == 1


@pytest.mark.parametrize(
    ("rates", "error", "message"),
    [({Fault.UNAVAILABLE: 1.5}, ValueError, "from 0 to 1"),
     ({Fault.UNAVAILABLE: -0.1}, ValueError, "from 0 to 1"),
     ({Fault.UNAVAILABLE: "0.5"}, TypeError, "from 0 to 1"),
     ({"unavailable": 0.5}, TypeError, "not a Fault")],
)
def test_set_fault_rates_rejects_invalid(rates, error, message) -> None:
    store = MemoryBackend(rng=random.Random(1))

    with pytest.raises(error, match=message):
        store.set_fault_rates(rates)


def test_set_fault_rates_needs_seeded_rng() -> None:
    store = MemoryBackend()

    with pytest.raises(ValueError, match="rng"):
        store.set_fault_rates({Fault.UNAVAILABLE: 0.5})
    store.set_fault_rates({})
