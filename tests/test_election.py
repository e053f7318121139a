"""Tests of broker election (osqueue.election) on MemoryBackend."""

from __future__ import annotations

import anyio
import pytest
import trio.testing
from osqueue.election import (
    LeaseHeldError,
    acquire,
    holds_lease,
    lease_expired,
    take_over,
)
from osqueue.state import BrokerRecord, StateDecodeError, initial_state
from osqueue.storage.memory import Fault, MemoryBackend

from tests.engine_support import KEY, Clock, stored_state

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


def candidate(backend, clock, address, commit_id, **options):
    return acquire(
        backend, key=KEY, address=address, clock=clock, lease_seconds=10.0,
        commit_id=commit_id, max_recent_commits=8, **options,
    )


def test_lease_expiry_rule():
    broker = BrokerRecord(address="a", epoch=3, heartbeat_at=100.0, lease_seconds=10.0)

    assert not lease_expired(broker, 110.0)
    assert lease_expired(broker, 110.5)
    assert lease_expired(BrokerRecord(address=None, epoch=0, heartbeat_at=0.0,
                                      lease_seconds=1.0), 0.0)


def test_take_over_increments_epoch_and_keeps_jobs():
    state = initial_state(address="a", epoch=7, now=0.0)

    new_state = take_over(state, address="b", now=20.0, lease_seconds=5.0, commit_id="t",
                          max_recent_commits=8)

    assert new_state.broker == BrokerRecord(address="b", epoch=8, heartbeat_at=20.0,
                                            lease_seconds=5.0)
    assert new_state.sequence == state.sequence + 1
    assert holds_lease(new_state, "b", 8)
    assert not holds_lease(new_state, "a", 7)


async def test_first_broker_creates_queue():
    backend = MemoryBackend()

    leadership = await candidate(backend, Clock(), "a", "first")

    state = await stored_state(backend)
    assert leadership.epoch == 1
    assert state.broker.address == "a"
    assert state.find_commit("first") is not None


async def test_live_lease_is_not_taken():
    backend = MemoryBackend()
    clock = Clock()
    await candidate(backend, clock, "a", "a-1")
    clock.jump(9.0)

    with pytest.raises(LeaseHeldError) as caught:
        await candidate(backend, clock, "b", "b-1")

    assert caught.value.address == "a"
    assert caught.value.expires_at == pytest.approx(10.0)


async def test_racing_candidates_one_wins():
    backend = MemoryBackend(latency=0.01)
    clock = Clock()
    await candidate(backend, clock, "a", "a-1")
    clock.jump(11.0)
    outcomes: dict[str, object] = {}

    async def run(address):
        try:
            outcomes[address] = await candidate(backend, clock, address, f"{address}-take")
        except LeaseHeldError as error:
            outcomes[address] = error

    async with anyio.create_task_group() as group:
        group.start_soon(run, "b")
        group.start_soon(run, "c")

    winners = [value for value in outcomes.values() if not isinstance(value, LeaseHeldError)]
    state = await stored_state(backend)
    assert len(winners) == 1
    assert winners[0].epoch == 2
    assert state.broker.epoch == 2
    assert state.broker.address == winners[0].address


async def test_takeover_with_dropped_response_is_settled():
    backend = MemoryBackend()
    clock = Clock()
    await candidate(backend, clock, "a", "a-1")
    clock.jump(11.0)
    backend.inject(Fault.DROP_RESPONSE, operations=("write",))

    leadership = await candidate(backend, clock, "b", "b-take")

    assert leadership.epoch == 2
    assert (await stored_state(backend)).broker.epoch == 2


async def test_create_with_dropped_response_is_settled():
    backend = MemoryBackend()
    backend.inject(Fault.DROP_RESPONSE, operations=("create",))

    leadership = await candidate(backend, Clock(), "a", "a-1")

    assert leadership.epoch == 1


async def test_undecodable_queue_is_not_taken_over():
    backend = MemoryBackend()
    await backend.create_if_not_exists(KEY, b"[]")

    with pytest.raises(StateDecodeError):
        await candidate(backend, Clock(), "a", "a-1")

    assert (await backend.read(KEY)).data == b"[]"


async def test_wait_for_expired_lease():
    backend = MemoryBackend()
    clock = Clock()
    await candidate(backend, clock, "a", "a-1")

    leadership = await candidate(backend, clock, "b", "b-1", wait=True)

    assert leadership.epoch == 2
    assert anyio.current_time() > 10.0
