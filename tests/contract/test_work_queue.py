"""The WorkQueue and LeaderLock contracts, written once, run on both adapters.

``any_store`` is the JetStream store (integration) or the in-memory twin; each
hands out its own work queue and leases. The twin's clock lets the last tests
jump past a lease without waiting for it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from blackboard.errors import StoreError
from blackboard.log.memory import MemoryEventStore
from blackboard.log.ports import StoreSettings
from tests import factories as f

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from blackboard.log.ports import Consumer, Delivery, EventStore, WorkQueue


@pytest.fixture
async def consumers() -> AsyncIterator[list[Consumer]]:
    """Consumers bound by a test, closed after it (a server connection drains)."""
    bound: list[Consumer] = []
    yield bound
    for consumer in bound:
        await consumer.close()


async def lane(
    store: EventStore,
    bound: list[Consumer],
    name: str = "local",
    lease_s: float = 30.0,
    max_ack_pending: int = 1000,
) -> tuple[WorkQueue, Consumer]:
    queue = store.work_queue()
    await queue.ensure_lane(name, lease_s=lease_s, max_ack_pending=max_ack_pending)
    consumer = await queue.consumer(name)
    bound.append(consumer)
    return queue, consumer


async def fetch_one(consumer: Consumer, timeout: float = 5) -> Delivery:
    got = await consumer.fetch(1, timeout=timeout)
    assert len(got) == 1, got
    return got[0]


async def test_published_work_is_delivered_once_and_acked_away(
    any_store: EventStore, consumers
):
    queue, consumer = await lane(any_store, consumers)
    seq = await queue.publish("local", b"w1", msg_id="work:1", traceparent="tp")
    assert await queue.lag("local") == 1
    msg = await fetch_one(consumer)
    assert (msg.seq, msg.data, msg.num_delivered) == (seq, b"w1", 1)
    assert msg.subject == "bb.work.local"
    assert msg.headers is not None and msg.headers["traceparent"] == "tp"
    assert msg.timestamp is not None
    assert await queue.lag("local") == 0
    await msg.ack()
    with pytest.raises(StoreError):
        await msg.ack()  # a delivery is settled once
    assert await consumer.fetch(1, timeout=0.3) == []


async def test_work_is_deduplicated_by_its_id(any_store: EventStore, consumers):
    queue, consumer = await lane(any_store, consumers)
    first = await queue.publish("local", b"w", msg_id="work:G:T:1")
    assert await queue.publish("local", b"w", msg_id="work:G:T:1") == first
    got = await consumer.fetch(10, timeout=0.5)
    assert [m.seq for m in got] == [first]


async def test_lanes_are_apart_and_work_waits_for_its_consumer(
    any_store: EventStore, consumers
):
    queue = any_store.work_queue()
    await queue.publish("frontier", b"f", msg_id="f1")  # before its consumer exists
    _, local = await lane(any_store, consumers, "local")
    await queue.publish("local", b"l", msg_id="l1")
    assert [m.data for m in await local.fetch(10, timeout=1)] == [b"l"]
    _, frontier = await lane(any_store, consumers, "frontier")
    assert [m.data for m in await frontier.fetch(10, timeout=1)] == [b"f"]


async def test_nak_redelivers_after_its_delay(any_store: EventStore, consumers):
    queue, consumer = await lane(any_store, consumers)
    await queue.publish("local", b"w", msg_id="w")
    first = await fetch_one(consumer)
    await first.nak(delay=0.6)
    assert await consumer.fetch(1, timeout=0.2) == []
    again = await fetch_one(consumer, timeout=5)
    assert (again.seq, again.num_delivered) == (first.seq, 2)
    await again.nak()  # no delay: at once
    third = await fetch_one(consumer, timeout=5)
    assert third.num_delivered == 3
    await third.term()
    assert await consumer.fetch(1, timeout=0.5) == []


async def test_unsettled_work_comes_back_after_the_lease_unless_kept_alive(
    any_store: EventStore, consumers
):
    queue, consumer = await lane(any_store, consumers, lease_s=1.0)
    await queue.publish("local", b"a", msg_id="a")
    await queue.publish("local", b"b", msg_id="b")
    a, b = await consumer.fetch(2, timeout=5)
    for _ in range(3):  # 1.5 s, each beat inside the lease
        await asyncio.sleep(0.5)
        await a.in_progress()
    back = await fetch_one(consumer, timeout=5)  # b's lease ran out long ago
    assert (back.data, back.num_delivered) == (b"b", 2)
    await a.ack()
    # An older delivery settles the message as well: b is gone for everyone.
    await b.ack()
    assert await consumer.fetch(1, timeout=1.5) == []


async def test_at_most_max_ack_pending_deliveries_are_out(
    any_store: EventStore, consumers
):
    queue, consumer = await lane(any_store, consumers, max_ack_pending=2)
    for i in range(4):
        await queue.publish("local", b"w", msg_id=f"w{i}")
    out = await consumer.fetch(10, timeout=1)
    assert len(out) == 2
    await out[0].ack()
    assert len(await consumer.fetch(10, timeout=1)) == 1


# --- the leader lock ----------------------------------------------------------


async def test_one_holder_at_a_time_and_release_hands_over(any_store: EventStore):
    a = any_store.leader_lock("scheduler", "a", ttl_s=5)
    b = any_store.leader_lock("scheduler", "b", ttl_s=5)
    assert await a.try_acquire()
    assert not await b.try_acquire()
    await a.release()
    stop = asyncio.Event()
    assert await asyncio.wait_for(b.acquire(stop), 5)
    await b.release()


async def test_a_standby_waits_until_stopped(any_store: EventStore):
    a = any_store.leader_lock("scheduler", "a", ttl_s=5)
    b = any_store.leader_lock("scheduler", "b", ttl_s=5)
    assert await a.try_acquire()
    stop = asyncio.Event()
    standby = asyncio.create_task(b.acquire(stop))
    await asyncio.sleep(0.3)
    stop.set()
    assert await asyncio.wait_for(standby, 5) is False
    await a.release()


async def test_a_holder_that_stops_renewing_loses_the_lease(any_store: EventStore):
    a = any_store.leader_lock("scheduler", "a", ttl_s=1.5)
    b = any_store.leader_lock("scheduler", "b", ttl_s=1.5)
    assert await a.try_acquire()
    renewer = a._renewer  # type: ignore[attr-defined]
    renewer.cancel()  # a paused process: no renewals
    stop = asyncio.Event()
    assert await asyncio.wait_for(b.acquire(stop), 10)  # after the TTL
    await b.release()


async def test_twin_leases_follow_the_injected_clock():
    now = [f.at(0)]
    store = MemoryEventStore(StoreSettings(), clock=lambda: now[0])
    a = store.leader_lock("scheduler", "a", ttl_s=1.2)
    b = store.leader_lock("scheduler", "b", ttl_s=1.2)
    assert await a.try_acquire()
    assert not await b.try_acquire()
    now[0] += timedelta(seconds=60)  # a paused past its TTL
    assert await b.try_acquire()
    await asyncio.sleep(0.6)  # a's next renewal finds b's lease
    assert a.lost.is_set()
    await a.release()
    await b.release()
