"""The EventStore contract, written once and run on both adapters.

Every test on ``any_store`` runs on the JetStream store against a real
nats-server (marked integration) and on the in-memory twin. Those at the end
are about JetStream itself (stream configuration, the object store, readers
lost with their server) and run on it alone.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec
import nats
import pytest
from nats.js.api import StreamConfig

from blackboard.errors import (
    BatchRejected,
    ConcurrencyConflict,
    InvalidEvent,
    MalformedEvent,
    StreamConfigDrift,
)
from blackboard.log import codec
from blackboard.log.events import GoalSubmitted, TaskCompleted
from blackboard.log.memory import MemoryEventStore
from blackboard.log.store import JetStreamEventStore, StoreSettings
from tests import factories as f

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from blackboard.log.ports import EventStore


async def collect(aiter) -> list[Any]:
    return [x async for x in aiter]


async def count(store: EventStore) -> int:
    return len(await collect(store.read()))


# --- writes -------------------------------------------------------------------


async def test_resent_event_is_stored_once(any_store: EventStore):
    event = f.goal("G1")
    first = await any_store.append(event)
    again = await any_store.append(event)
    assert again == first == 1
    assert await any_store.events_last_seq() == 1


async def test_concurrent_claims_one_wins_other_gets_typed_conflict(
    any_store: EventStore,
):
    store = any_store
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
    assert losses[0].subject == "bb.evt.G1.T1.*"
    events = await collect(store.read_goal("G1"))
    assert [type(e.event).__name__ for e in events] == ["TaskCreated", "TaskClaimed"]
    assert events[1].seq == wins[0]


async def test_retry_of_a_landed_guarded_write_is_success(any_store: EventStore):
    seq = await any_store.append(f.created("G1", "T1"))
    claim = f.claimed("G1", "T1")
    landed = await any_store.append(claim, expect=seq)
    # The ack was "lost": the writer retries with the same event and guard.
    assert await any_store.append(claim, expect=seq) == landed
    assert await any_store.events_last_seq() == 2


async def test_guard_zero_means_task_has_no_events(any_store: EventStore):
    await any_store.append(f.created("G1", "T1"), expect=0)
    with pytest.raises(ConcurrencyConflict) as err:
        await any_store.append(f.created("G1", "T1"), expect=0)
    assert (err.value.expected, err.value.actual) == (0, 1)


async def test_guard_scope_is_the_task_and_goal_events_have_their_own(
    any_store: EventStore,
):
    store = any_store
    await store.append(f.goal("G1"), expect=0)  # goal-level: the `_` token
    await store.append(f.created("G1", "T1"), expect=0)  # another task: unaffected
    await store.append(f.created("G2", "T1"), expect=0)  # same task id, other goal
    assert await store.last_seq("G1", None) == 1
    assert await store.last_seq("G1", "T1") == 2
    assert await store.last_seq("G2", "T1") == 3
    assert await store.last_seq("G2", "T9") == 0


async def test_events_that_can_never_be_written_are_refused_before_sending(
    any_store: EventStore,
):
    with pytest.raises(InvalidEvent, match="not a legal subject token"):
        await any_store.append(f.created("G1", "a.b"))
    with pytest.raises(InvalidEvent, match="goal id"):
        await any_store.append(f.goal("G 1"))
    with pytest.raises(InvalidEvent):
        await any_store.append_batch(
            [(f.created("G1", "ok"), 0), (f.created("G1", "*"), 0)]
        )
    assert await any_store.events_last_seq() == 0


async def test_atomic_batch_lands_whole(any_store: EventStore):
    store = any_store
    seq = await store.append(f.created("G1", "P"))
    claim = await store.append(f.claimed("G1", "P"), expect=seq)
    children = [f.created("G1", f"C{i}", depth=1, parent_id="P") for i in range(3)]
    followup = f.completed("G1", "P")
    seqs = await store.append_batch([*((c, 0) for c in children), (followup, claim)])
    assert seqs == list(range(claim + 1, claim + 5))
    got = await collect(store.read_goal("G1"))
    assert [e.seq for e in got][-4:] == seqs


async def test_atomic_batch_with_stale_guard_lands_nothing(any_store: EventStore):
    store = any_store
    seq = await store.append(f.created("G1", "P"))
    await store.append(f.claimed("G1", "P", "w1"), expect=seq)
    before = await store.events_last_seq()
    children = [f.created("G1", f"C{i}") for i in range(3)]
    with pytest.raises(ConcurrencyConflict):
        # w2 still believes the task is at `seq`: its whole batch is refused.
        await store.append_batch(
            [*((c, None) for c in children), (f.completed("G1", "P"), seq)]
        )
    assert await store.events_last_seq() == before
    assert [e.event.task_id for e in await collect(store.read_goal("G1"))] == ["P", "P"]


async def test_resent_atomic_batch_is_recognised(any_store: EventStore):
    items = [(f.created("G1", f"C{i}"), None) for i in range(3)]
    first = await any_store.append_batch(items)
    assert await any_store.append_batch(items) == first
    assert await any_store.events_last_seq() == 3


async def test_batch_over_server_limit_is_refused_before_sending(any_store: EventStore):
    items = [(f.created("G1", f"C{i}"), None) for i in range(1001)]
    with pytest.raises(ValueError, match="at most 1000"):
        await any_store.append_batch(items)
    assert await any_store.append_batch([]) == []


async def test_append_many_stores_each_once(any_store: EventStore):
    events = [f.created("G1", f"T{i:03d}") for i in range(40)]
    seqs = await any_store.append_many(events)
    assert sorted(seqs) == list(range(1, 41))
    assert sorted(await any_store.append_many(events)) == sorted(seqs)
    assert await count(any_store) == 40


async def test_large_event_round_trips(any_store: EventStore):
    big = "x" * (2 * 1024 * 1024)
    event = f.completed("G1", "T1", result={"text": big})
    seq = await any_store.append(event)
    (env,) = await collect(any_store.read_goal("G1"))
    assert env.event == event and env.seq == seq
    last = await any_store.last_event("G1", "T1")
    assert last is not None and last.event == event


# --- reads and lookups ------------------------------------------------------


async def test_goal_events_read_back_in_order(any_store: EventStore):
    store = any_store
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
    assert await collect(store.read_goal("nosuch")) == []


async def test_last_on_filters_with_wildcards(any_store: EventStore):
    store = any_store
    g = await store.append(f.goal("G1"))
    c1 = await store.append(f.created("G1", "T1"))
    c2 = await store.append(f.created("G2", "T2"))
    cl = await store.append(f.claimed("G1", "T1"))
    s = store.subjects
    last = await store.last_on(s.task_events("G1", "T1"))
    assert last is not None and (last.seq, last.subject) == (
        cl,
        "bb.evt.G1.T1.task_claimed",
    )
    assert (await store.last_on(s.goal_events("G1"))).seq == cl  # type: ignore[union-attr]
    assert (await store.last_on(s.kind_filter("task_created"))).seq == c2  # type: ignore[union-attr]
    assert (await store.last_on(s.kind_filter("task_created", "G1"))).seq == c1  # type: ignore[union-attr]
    assert (await store.last_on(s.task_events("G1", None))).seq == g  # type: ignore[union-attr]
    assert (await store.last_on(s.events_all)).seq == cl  # type: ignore[union-attr]
    assert await store.last_on(s.task_events("G1", "T9")) is None
    assert await store.last_on("bb.evt.G1.*") is None  # `*` is exactly one token
    assert await store.goal_of_task("T2") == "G2"
    assert await store.goal_of_task("T9") is None
    env = await store.last_event("G1", "T1", "task_created")
    assert env is not None and env.seq == c1
    assert await store.last_event("G1", "T1", "task_completed") is None
    got = await store.get(c2)
    assert got is not None and got.event.goal_id == "G2"
    assert await store.events_last_seq() == cl


async def test_follow_from_now_and_from_a_sequence(any_store: EventStore):
    store = any_store
    await store.append(f.goal("G1"))
    seen_new: list[int] = []
    seen_all: list[int] = []

    async def follow(into: list[int], from_seq: int | None, want: int) -> None:
        async for env in store.follow(store.subjects.goal_events("G1"), from_seq):
            into.append(env.seq)
            if len(into) == want:
                return

    new = asyncio.create_task(follow(seen_new, None, 2))
    every = asyncio.create_task(follow(seen_all, 1, 3))
    await asyncio.sleep(0.5)  # both readers in place before the writes
    await store.append(f.created("G2", "X"))  # another goal: not followed
    a = await store.append(f.created("G1", "A"))
    b = await store.append(f.created("G1", "B"))
    await asyncio.wait_for(asyncio.gather(new, every), 10)
    assert seen_new == [a, b]
    assert seen_all == [1, a, b]


async def test_follow_batches_are_empty_while_the_log_is_idle(any_store: EventStore):
    batches = any_store.follow_batches(from_seq=1, idle_s=0.05)
    first = await asyncio.wait_for(anext(batches), 5)
    assert first == []
    seq = await any_store.append(f.goal("G1"))
    for _ in range(100):
        got = await asyncio.wait_for(anext(batches), 5)
        if got:
            break
    assert [e.seq for e in got] == [seq]
    await batches.aclose()


async def test_garbage_on_an_event_subject_is_reported_and_skipped(
    any_store: EventStore, raw_publish: Callable[[str, bytes], Awaitable[None]]
):
    store = any_store
    await store.append(f.goal("G1"))
    await raw_publish("bb.in.evt.G1._.goal_submitted", b"\x00not json")
    await raw_publish("bb.in.evt.G1._.goal_completed", b'{"type": "goal_completed"}')
    await raw_publish("bb.in.evt.G1.T1.task_created", codec.encode(f.goal("G1")))
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


async def test_a_guard_taken_from_a_fold_is_not_blocked_by_garbage(
    any_store: EventStore, raw_publish: Callable[[str, bytes], Awaitable[None]]
):
    store = any_store
    seq = await store.append(f.created("G1", "T1"))
    await raw_publish("bb.in.evt.G1.T1.task_claimed", b"junk")
    # The fold never saw the junk: it still believes the task is at `seq`.
    landed = await store.append(f.claimed("G1", "T1"), expect=seq)
    assert landed == seq + 2
    done = await store.append_batch([(f.completed("G1", "T1"), landed)])
    assert done == [landed + 1]


# --- live subscriptions and durable readers -----------------------------------


async def test_watchers_see_stored_events_only(any_store: EventStore):
    store = any_store
    seen: list[str] = []

    async def got(subject: str) -> None:
        seen.append(subject)

    sub = await store.watch(store.subjects.kind_filter("task_claimed"), got)
    await asyncio.sleep(0.2)
    seq = await store.append(f.created("G1", "T1"))
    await store.append(f.claimed("G1", "T1", "w1"), expect=seq)
    with pytest.raises(ConcurrencyConflict):
        await store.append(f.claimed("G1", "T1", "w2"), expect=seq)  # refused
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # anything extra would arrive by now
    await sub.close()
    assert seen == ["bb.evt.G1.T1.task_claimed"]


async def test_durable_reader_starts_where_asked_and_follows(any_store: EventStore):
    store = any_store
    for i in range(5):
        await store.append(f.created("G1", f"T{i}"))
    reader = await store.durable("bb-test", 3)
    got = await reader.fetch(10, timeout=1)
    assert [m.seq for m in got] == [3, 4, 5]
    envs = [await store.decode(m) for m in got]
    assert [e.event.task_id for e in envs if e is not None] == ["T2", "T3", "T4"]
    await got[-1].ack()
    assert await reader.fetch(10, timeout=0.2) == []
    await store.append(f.created("G1", "T5"))
    (late,) = await reader.fetch(10, timeout=5)
    assert late.seq == 6
    await reader.close()
    await store.drop_durable("bb-test")
    await store.drop_durable("bb-test")  # gone already: nothing to do


# --- the twin's own clock ---------------------------------------------------


async def test_twin_dedupes_only_within_the_window():
    now = [f.at(0)]
    store = MemoryEventStore(
        StoreSettings(duplicate_window_s=120), clock=lambda: now[0]
    )
    event = f.goal("G1")
    assert await store.append(event) == 1
    now[0] += timedelta(seconds=119)
    assert await store.append(event) == 1
    now[0] += timedelta(seconds=2)  # past the window: a new message
    assert await store.append(event) == 2


# --- JetStream itself -------------------------------------------------------


async def stream_messages(store: JetStreamEventStore) -> int:
    info = await store.js.stream_info(store.events_stream)
    return info.state.messages


@pytest.mark.integration
async def test_ensure_is_idempotent_and_reports_drift(store: JetStreamEventStore):
    await store.ensure()  # second time: finds what it needs
    other = JetStreamEventStore(store.nc, StoreSettings(prefix="drift"))
    await store.js.add_stream(
        StreamConfig(name=other.events_stream, subjects=["drift.evt.>"], max_msgs=5)
    )
    # Same subjects but no atomic batches: using it silently would break spawns.
    with pytest.raises(StreamConfigDrift, match="allow_atomic"):
        await other.ensure()


@pytest.mark.integration
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
    assert await stream_messages(store) == 1


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
async def test_follow_from_now_whose_reader_vanishes_skips_nothing(
    store: JetStreamEventStore,
):
    """A follower "from now" that lost its reader before its first event."""
    import contextlib

    await store.append(f.goal("G0"))  # before: not to be seen
    batches = store.follow_batches(store.subjects.goal_events("G1"))
    async with contextlib.aclosing(batches):
        assert await anext(batches) == []  # the reader exists, nothing yet
        for info in await store.js.consumers_info(store.events_stream):
            await store.js.delete_consumer(store.events_stream, info.name)
        await store.append(f.goal("G1"))  # while no reader is there
        got: list[Any] = []
        while not got:
            got = await anext(batches)
    assert [type(e.event).__name__ for e in got] == ["GoalSubmitted"]
    assert got[0].event.goal_id == "G1"


async def _consumers(store: JetStreamEventStore):
    for info in await store.js.consumers_info(store.events_stream):
        yield info


@pytest.mark.integration
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
