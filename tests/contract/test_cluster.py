"""The embedded 3-node cluster: R3 streams, appends and reads, a node's return."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import TYPE_CHECKING, TypeVar

import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from blackboard.errors import StoreError
from blackboard.log.ports import lock_bucket, snapshot_bucket
from blackboard.log.store import JetStreamEventStore, StoreSettings, connect
from blackboard.log.workqueue import JetStreamDelivery
from tests import factories as f

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from blackboard.log.server import EmbeddedCluster

pytestmark = pytest.mark.integration


T = TypeVar("T")


async def test_r3_streams_survive_a_killed_node_that_then_rejoins(
    nats_cluster: EmbeddedCluster,
):
    assert len(nats_cluster.urls) == 3
    assert nats_cluster.url.count(",") == 2
    nc = await connect(nats_cluster.url, name="test")
    try:
        store = JetStreamEventStore(nc, StoreSettings(replicas=3))
        # Creating an R3 stream waits for its first leader; a split vote costs
        # another election timeout (4-9 s), beyond the JetStream API's 5 s.
        # ensure() is idempotent, so a deployment's restart (or we) just retry.
        await eventually(store.ensure, attempt_s=20, timeout_s=40)
        for name in (store.events_stream, store.work_stream):
            info = await store.js.stream_info(name)
            assert info.config.num_replicas == 3
            assert info.cluster is not None
            assert len(info.cluster.replicas or []) == 2  # besides the leader
        # The scheduler's lease has the streams' replicas too.
        lock = store.leader_lock("scheduler", "test", ttl_s=10)
        assert await eventually(lock.try_acquire, attempt_s=20, timeout_s=40)
        info = await store.js.stream_info(f"KV_{lock_bucket(store.settings.prefix)}")
        assert info.config.num_replicas == 3
        await lock.release()
        # And so have the scheduler's snapshots.
        await eventually(
            lambda: store.snapshots().save("scheduler", b"x" * 200_000),
            attempt_s=20,
            timeout_s=40,
        )
        bucket = snapshot_bucket(store.settings.prefix)
        info = await store.js.stream_info(f"OBJ_{bucket}")
        assert info.config.num_replicas == 3
        assert await store.snapshots().load("scheduler") == b"x" * 200_000

        # Just after creation the new streams may not answer yet (no responders
        # until their leader is elected and known on our node), and a reader's
        # fresh R1 consumer can answer 503 while its placement is applied. The
        # store does not retry those (yet): we do; appends are idempotent.
        goal = f.goal("G1")
        await eventually(lambda: store.append(goal))
        await store.append(f.created("G1", "T1"))
        assert await eventually(lambda: count(store)) == 2

        # A node dies that is neither ours nor the meta leader (losing that one
        # means seconds without consumer creation, until a new one is elected):
        # the other two are a quorum, so writes and reads go on.
        assert nc.connected_url is not None
        connected = nats_cluster.urls.index(
            f"nats://{nc.connected_url.hostname}:{nc.connected_url.port}"
        )
        leader = nats_cluster.server_names.index(nats_cluster.meta_leader())
        victim = ({0, 1, 2} - {connected, leader}).pop()
        nats_cluster.kill(victim)
        # If it led a stream, that stream answers nothing until the two left
        # elect a new leader (a few seconds): wait for that, as a client must.
        for name in (store.events_stream, store.work_stream):
            await stream_led_by_other(store, name, nats_cluster.server_names[victim])
        await store.append(f.created("G1", "T2"))
        # A reader's consumer may still be placed on the dead node for a few
        # seconds (the meta leader has not marked it offline yet): retry.
        assert await eventually(lambda: count(store)) == 3

        # Back on the same ports and store, it rejoins and catches up: its own
        # copy of the stream holds the event written while it was down.
        nats_cluster.restart(victim)
        url = f"{nats_cluster.monitor_urls[victim]}/jsz?streams=true"
        deadline = time.monotonic() + 10
        while (held := await asyncio.to_thread(local_messages, url)) != 3:
            assert time.monotonic() < deadline, f"node holds {held} of 3 events"
            await asyncio.sleep(0.05)
        info = await store.js.stream_info(store.events_stream)
        assert info.cluster is not None
        current = {p.name for p in info.cluster.replicas or [] if p.current}
        assert nats_cluster.server_names[victim] in {info.cluster.leader, *current}
    finally:
        await nc.drain()


async def count(store: JetStreamEventStore) -> int:
    return len([x async for x in store.read()])


async def eventually(
    attempt: Callable[[], Awaitable[T]],
    *,
    attempt_s: float = 3,
    timeout_s: float = 20,
) -> T:
    """The result of the first attempt that neither times out nor fails."""
    deadline = time.monotonic() + timeout_s
    while True:
        started = time.monotonic()
        try:
            return await asyncio.wait_for(attempt(), attempt_s)
        except (nats.errors.Error, StoreError, TimeoutError) as e:
            if time.monotonic() > deadline:
                raise
            took = time.monotonic() - started
            print(f"{type(e).__name__} after {took:.1f}s; retrying")
            await asyncio.sleep(0.1)


async def stream_led_by_other(
    store: JetStreamEventStore, stream: str, gone: str, timeout_s: float = 15
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            info = await asyncio.wait_for(store.js.stream_info(stream), 1)
        except (nats.errors.Error, TimeoutError):  # no leader to answer yet
            info = None
        if info and info.cluster and info.cluster.leader not in (None, gone):
            return
        assert time.monotonic() < deadline, f"{stream} has no leader but {gone}"
        await asyncio.sleep(0.1)


def local_messages(jsz_url: str, stream: str = "BB_EVENTS") -> int | None:
    """Messages in one node's own replica of ``stream``, from its /jsz."""
    with urllib.request.urlopen(jsz_url, timeout=1) as r:
        jsz = json.loads(r.read())
    for account in jsz.get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            if detail["name"] == stream:
                return int(detail["state"]["messages"])
    return None


def test_paused_node_answers_nothing_until_resumed_and_stop_still_works(
    nats_cluster: EmbeddedCluster,
):
    health = f"{nats_cluster.monitor_urls[1]}/healthz"
    nats_cluster.pause(1)
    with pytest.raises(OSError, match="timed out"):
        urllib.request.urlopen(health, timeout=0.3)
    nats_cluster.resume(1)
    nats_cluster.wait_formed(timeout_s=10)  # healthy, routed, one meta leader
    nats_cluster.pause(2)
    procs = [node.proc for node in nats_cluster.nodes]
    nats_cluster.stop()  # resumes the paused node first, so SIGTERM lands
    assert all(node.proc is None for node in nats_cluster.nodes)
    # Each node shut down on its SIGTERM: none had to be killed (a paused one
    # left paused would ignore the signal until stop() gave up on it).
    assert [p.returncode if p else None for p in procs] == [0, 0, 0]


async def test_a_nak_sent_as_its_consumers_leader_dies_is_not_lost(
    nats_cluster: EmbeddedCluster,
):
    """A worker's nak right after the node leading its lane's consumer died:
    confirmed by the next leader, so the message comes back at once, not when
    its lease (120 s here) runs out. A plain publish of it went to nobody."""
    nc = await connect(nats_cluster.url, name="test")
    try:
        js = nc.jetstream(timeout=10)
        await eventually(
            lambda: js.add_stream(name="NAKT", subjects=["nakt.>"], num_replicas=3),
            attempt_s=20,
            timeout_s=40,
        )
        await eventually(lambda: js.publish("nakt.a", b"work"))
        cfg = ConsumerConfig(
            durable_name="lane", ack_policy=AckPolicy.EXPLICIT, ack_wait=120
        )
        sub = await eventually(
            lambda: js.pull_subscribe("nakt.a", "lane", config=cfg),
            attempt_s=20,
            timeout_s=40,
        )
        [msg] = await eventually(lambda: sub.fetch(1, timeout=5))
        info = await js.consumer_info("NAKT", "lane")
        assert info.cluster is not None and info.cluster.leader
        nats_cluster.kill(nats_cluster.server_names.index(info.cluster.leader))

        await JetStreamDelivery(msg).nak()  # returns once a leader took it

        again = await eventually(lambda: sub.fetch(1, timeout=5), timeout_s=40)
        assert [m.data for m in again] == [b"work"]
        assert again[0].metadata.num_delivered == 2
    finally:
        await nc.close()
