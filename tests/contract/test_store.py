"""The JetStream event store against a real nats-server."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import nats
import pytest
from nats.js.api import StreamConfig

from blackboard.errors import (
    BatchRejected,
    ConcurrencyConflict,
    MalformedEvent,
    StreamConfigDrift,
)
from blackboard.log import codec
from blackboard.log.events import GoalSubmitted, TaskCompleted
from blackboard.log.store import JetStreamEventStore, StoreSettings
from tests import factories as f


async def collect(aiter) -> list[Any]:
    return [x async for x in aiter]


async def stream_messages(store: JetStreamEventStore) -> int:
    info = await store.js.stream_info(store.events_stream)
    return info.state.messages


async def test_ensure_is_idempotent_and_reports_drift(store: JetStreamEventStore):
    await store.ensure()  # second time: finds what it needs
    other = JetStreamEventStore(store.nc, StoreSettings(prefix="drift"))
    await store.js.add_stream(
        StreamConfig(name=other.events_stream, subjects=["drift.evt.>"], max_msgs=5)
    )
    # Same subjects but no atomic batches: using it silently would break spawns.
    with pytest.raises(StreamConfigDrift, match="allow_atomic"):
        await other.ensure()


async def test_resent_event_is_stored_once(store: JetStreamEventStore):
    event = f.goal("G1")
    first = await store.append(event)
    again = await store.append(event)
    assert again == first
    assert await stream_messages(store) == 1


async def test_concurrent_claims_one_wins_other_gets_typed_conflict(
    store: JetStreamEventStore,
):
    seq = await store.append(f.created("G1", "T1"))
    results = await asyncio.gather(
        store.append(f.claimed("G1", "T1", "w1"), expect=seq),
        store.append(f.claimed("G1", "T1", "w2"), expect=seq),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, int)]
    losses = [r for r in results if isinstance(r, ConcurrencyConflict)]
    assert len(wins) == 1
    assert len(losses) == 1
    assert losses[0].expected == seq
    assert losses[0].actual == wins[0]
    events = await collect(store.read_goal("G1"))
    assert [type(e.event).__name__ for e in events] == ["TaskCreated", "TaskClaimed"]
    assert events[1].seq == wins[0]


async def test_retry_of_a_landed_guarded_write_is_success(store: JetStreamEventStore):
    seq = await store.append(f.created("G1", "T1"))
    claim = f.claimed("G1", "T1")
    landed = await store.append(claim, expect=seq)
    # The ack was "lost": the writer retries with the same event and guard.
    assert await store.append(claim, expect=seq) == landed
    assert await stream_messages(store) == 2


async def test_guard_zero_means_task_has_no_events(store: JetStreamEventStore):
    await store.append(f.created("G1", "T1"), expect=0)
    with pytest.raises(ConcurrencyConflict):
        await store.append(f.created("G1", "T1"), expect=0)


async def test_atomic_batch_lands_whole(store: JetStreamEventStore):
    seq = await store.append(f.created("G1", "P"))
    claim = await store.append(f.claimed("G1", "P"), expect=seq)
    children = [f.created("G1", f"C{i}", depth=1, parent_id="P") for i in range(3)]
    followup = f.completed("G1", "P")
    seqs = await store.append_batch([*((c, 0) for c in children), (followup, claim)])
    assert seqs == list(range(claim + 1, claim + 5))
    got = await collect(store.read_goal("G1"))
    assert [e.seq for e in got][-4:] == seqs


async def test_atomic_batch_with_stale_guard_lands_nothing(store: JetStreamEventStore):
    seq = await store.append(f.created("G1", "P"))
    await store.append(f.claimed("G1", "P", "w1"), expect=seq)
    before = await stream_messages(store)
    children = [f.created("G1", f"C{i}") for i in range(3)]
    with pytest.raises(ConcurrencyConflict):
        # w2 still believes the task is at `seq`: its whole batch is refused.
        await store.append_batch(
            [*((c, None) for c in children), (f.completed("G1", "P"), seq)]
        )
    assert await stream_messages(store) == before
    assert [e.event.task_id for e in await collect(store.read_goal("G1"))] == ["P", "P"]


async def test_resent_atomic_batch_is_recognised(store: JetStreamEventStore):
    items = [(f.created("G1", f"C{i}"), None) for i in range(3)]
    first = await store.append_batch(items)
    assert await store.append_batch(items) == first
    assert await stream_messages(store) == 3


async def test_batch_over_server_limit_is_refused_before_sending(
    store: JetStreamEventStore,
):
    items = [(f.created("G1", f"C{i}"), None) for i in range(1001)]
    with pytest.raises(ValueError, match="at most 1000"):
        await store.append_batch(items)


async def test_goal_events_read_back_in_order(store: JetStreamEventStore):
    written = []
    for i in range(60):
        goal_id = "GA" if i % 3 else "GB"
        event = f.created(goal_id, f"T{i}")
        seq = await store.append(event)
        if goal_id == "GA":
            written.append((seq, event))
    got = await collect(store.read_goal("GA"))
    assert [(e.seq, e.event) for e in got] == written
    tail = await collect(store.read(from_seq=written[-1][0]))
    assert [e.event for e in tail] == [written[-1][1]]


async def test_two_mib_payload_round_trips_through_object_store(
    store: JetStreamEventStore,
):
    big = "x" * (2 * 1024 * 1024)
    event = f.completed("G1", "T1", result={"text": big})
    seq = await store.append(event)
    raw = await store.js.get_msg(store.events_stream, seq)
    assert len(raw.data or b"") < 1024  # the log holds a reference...
    assert raw.headers and raw.headers["Bb-Blob"] == codec.sha256(codec.encode(event))
    (env,) = await collect(store.read_goal("G1"))  # ...readers get the event
    assert env.event == event
    assert isinstance(env.event, TaskCompleted)
    assert len(env.event.result["text"]) == len(big)


async def test_garbage_on_an_event_subject_is_reported_and_skipped(
    store: JetStreamEventStore, nats_url: str
):
    await store.append(f.goal("G1"))
    other = await nats.connect(nats_url)
    js = other.jetstream()
    await js.publish("bb.in.evt.G1._.goal_submitted", b"\x00not json")
    await js.publish("bb.in.evt.G1._.goal_completed", b'{"type": "goal_completed"}')
    await js.publish("bb.in.evt.G1.T1.task_created", codec.encode(f.goal("G1")))
    await other.close()
    await store.append(f.created("G1", "T9"))

    bad: list[MalformedEvent] = []
    got = await collect(store.read_goal("G1", on_bad=bad.append))
    assert [type(e.event).__name__ for e in got] == ["GoalSubmitted", "TaskCreated"]
    assert [b.seq for b in bad] == [2, 3, 4]
    assert "subject" in bad[2].reason  # body and subject disagree

    followed: list[Any] = []
    bad_live: list[MalformedEvent] = []

    async def follow() -> None:
        async for env in store.follow(from_seq=1, on_bad=bad_live.append):
            followed.append(env)
            if len(followed) == 2:
                return

    await asyncio.wait_for(follow(), 10)
    assert len(bad_live) == 3


async def test_plain_subscriber_decodes_what_bb_submit_wrote(
    nats_url: str, cli_env: dict[str, str], bb_exe: list[str], store
):
    got: asyncio.Queue[Any] = asyncio.Queue()
    nc = await nats.connect(nats_url)  # not our code: any service can do this
    await nc.subscribe("bb.evt.>", cb=got.put)
    proc = await asyncio.create_subprocess_exec(
        *bb_exe,
        "submit",
        "audit these 400 documents",
        "--json",
        env=cli_env,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    goal_id = msgspec.json.decode(out)["goal_id"]
    msg = await asyncio.wait_for(got.get(), 10)
    await nc.close()
    body = msgspec.json.decode(msg.data)
    assert msg.subject == f"bb.evt.{goal_id}._.goal_submitted"
    assert body["type"] == "goal_submitted"
    assert body["text"] == "audit these 400 documents"
    assert msg.headers["Nats-Msg-Id"] == body["event_id"]
    assert msgspec.json.decode(msg.data, type=GoalSubmitted).goal_id == goal_id


async def test_batch_to_a_stream_without_atomic_is_a_typed_rejection(
    store: JetStreamEventStore,
):
    other = JetStreamEventStore(store.nc, StoreSettings(prefix="plain"))
    await store.js.add_stream(
        StreamConfig(name=other.events_stream, subjects=["plain.in.evt.>"])
    )
    with pytest.raises(BatchRejected) as err:
        await other.append_batch(
            [(f.created("G1", "T1"), None), (f.created("G1", "T2"), None)]
        )
    assert err.value.err_code > 0


# --- reads never return part of the history silently -----------------------


async def test_read_whose_reader_vanishes_mid_way_still_reads_to_the_end(
    store: JetStreamEventStore,
):
    await store.append(f.goal("G1"))
    await store.append_many([f.created("G1", f"T{i:03d}") for i in range(120)])
    got = []
    async for env in store.read(store.subjects.goal_events("G1"), batch=10):
        got.append(env)
        if len(got) == 5:
            # Every consumer of the stream is deleted under the reader (an
            # ephemeral one is lost like this when its node restarts).
            names = [c.name async for c in _consumers(store)]
            for name in names:
                await store.js.delete_consumer(store.events_stream, name)
    assert [e.seq for e in got] == list(range(1, 122))


async def _consumers(store: JetStreamEventStore):
    for info in await store.js.consumers_info(store.events_stream):
        yield info


async def test_read_from_a_server_that_went_away_raises_instead_of_ending(
    nats_server, tmp_path
):
    from blackboard.errors import LogUnavailable
    from blackboard.log.store import connect

    nc = await connect(nats_server.url, name="test")
    s = JetStreamEventStore(nc, StoreSettings(transient_s=1.5))
    await s.ensure()
    await s.append(f.goal("G1"))
    await s.append_many([f.created("G1", f"T{i:03d}") for i in range(50)])
    got = []

    async def read_all() -> None:
        async for env in s.read(s.subjects.goal_events("G1"), batch=10):
            got.append(env)
            if len(got) == 1:
                nats_server.kill()

    with pytest.raises(LogUnavailable, match="still to read"):
        await read_all()
    assert 0 < len(got) < 51
    await nc.close()
