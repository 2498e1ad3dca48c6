"""A scheduler taking the lead starts from the latest snapshot of its fold.

On the twins: the leader saves snapshots as the log grows; a new leader
restores the latest, reads only the log after it, and holds the state a fold
of the whole log gives, then goes on deciding. A snapshot of another log (the
event at its sequence is not the one it names), of other code, or one that
cannot be read is passed over with a line saying why, and the whole log is
folded instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec
import pytest

from blackboard.engine import control as client
from blackboard.engine import snapshot
from blackboard.engine.scheduler import SNAPSHOT
from blackboard.engine.state import BoardState, evolve, retire
from blackboard.log.memory import MemoryEventStore
from blackboard.runtime.inprocess import running
from tests.engine.conftest import spec, submit
from tests.engine_handlers import HANDLERS

if TYPE_CHECKING:
    from blackboard.log.events import TaskSpec
    from blackboard.log.ports import EventStore
    from blackboard.log.store import JetStreamEventStore
    from blackboard.runtime import config


async def _whole_fold(store: EventStore) -> BoardState:
    """The log's fold as a scheduler keeps it: finished goals let go."""
    state = BoardState()
    async for env in store.read():
        evolve(state, env)
        retire(state, env.event.goal_id)
    return state


async def _lead_once(store: MemoryEventStore, settings: config.Settings) -> BoardState:
    """Start a fresh scheduler, let it lead and settle, and return its fold."""
    async with running(store, settings, HANDLERS, lanes=[]) as stack:
        assert stack.scheduler is not None
        await asyncio.wait_for(stack.scheduler.leading.wait(), 10)
        await asyncio.sleep(0.3)
        return stack.scheduler.state


def _chain(n: int, prefix: str = "t") -> list[TaskSpec]:
    return [spec(f"{prefix}0")] + [
        spec(f"{prefix}{i}", "echo", "local", f"{prefix}{i - 1}") for i in range(1, n)
    ]


async def _ran_a_chain(
    settings: config.Settings, every: int, n: int = 10
) -> MemoryEventStore:
    """A twin log holding one done chain of ``n`` tasks, snapshots every ``every``."""
    settings.engine.snapshot_every = every
    store = MemoryEventStore()
    async with running(store, settings, HANDLERS, concurrency=8):
        goal_id = await submit(store, settings, _chain(n))
        goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "done", goal.reason
    return store


async def test_a_new_leader_restores_the_snapshot_and_reads_only_the_tail(
    settings: config.Settings, caplog: pytest.LogCaptureFixture
):
    settings.engine.snapshot_every = 40
    store = MemoryEventStore()
    async with running(store, settings, HANDLERS, concurrency=8):
        first = await submit(store, settings, _chain(30))
        goal = await client.wait_goal(store, first, timeout_s=30)
    assert goal.status == "done", goal.reason
    snaps = store.snapshots()
    assert snaps.saves >= 2  # the log grew past 40 events, then past 80
    saved = snapshot.decode(snaps.blobs[SNAPSHOT])
    assert 40 <= saved.last_seq <= await store.events_last_seq()

    caplog.set_level(logging.INFO, logger="blackboard.scheduler")
    reads: list[int] = []
    real_read = store.read

    def read(*args, **kwargs):
        reads.append(kwargs.get("from_seq", args[1] if len(args) > 1 else 1))
        return real_read(*args, **kwargs)

    store.read = read  # type: ignore[method-assign]
    # A second goal after the restore: the restored leader decides it through.
    async with running(store, settings, HANDLERS, concurrency=8) as stack:
        assert stack.scheduler is not None
        await asyncio.wait_for(stack.scheduler.leading.wait(), 10)
        second = await submit(store, settings, _chain(5, "u"))
        goal = await client.wait_goal(store, second, timeout_s=30)
        restored_from = reads[0]
    assert goal.status == "done", goal.reason
    assert f"fold restored at sequence {saved.last_seq}" in caplog.text
    assert restored_from == saved.last_seq + 1  # the tail only, not from 1
    store.read = real_read  # type: ignore[method-assign]
    assert await _lead_once(store, settings) == await _whole_fold(store)


async def test_a_snapshot_of_another_log_is_passed_over(
    settings: config.Settings, caplog: pytest.LogCaptureFixture
):
    store = await _ran_a_chain(settings, every=20)
    snaps = store.snapshots()
    saved = snapshot.decode(snaps.blobs[SNAPSHOT])
    # The same fold, said to be taken after an event this log does not have
    # there (a stream deleted and recreated under the same prefix).
    snaps.blobs[SNAPSHOT] = snapshot.encode(
        saved.state, saved.usage, "someone-else", saved.position
    )
    caplog.set_level(logging.INFO, logger="blackboard.scheduler")
    state = await _lead_once(store, settings)
    assert f"snapshot at {saved.last_seq} is not of this log" in caplog.text
    assert state == await _whole_fold(store)


async def test_other_codes_snapshot_and_an_unreachable_store_cost_only_a_fold(
    settings: config.Settings, caplog: pytest.LogCaptureFixture
):
    store = await _ran_a_chain(settings, every=20)
    snaps = store.snapshots()
    snaps.blobs[SNAPSHOT] = msgspec.msgpack.encode({"fingerprint": "old"})
    caplog.set_level(logging.INFO, logger="blackboard.scheduler")
    whole = await _whole_fold(store)
    assert await _lead_once(store, settings) == whole
    assert "snapshot not used: written by other code" in caplog.text
    snaps.unreachable = True
    assert await _lead_once(store, settings) == whole
    assert "no snapshot read (snapshots: no server answered)" in caplog.text


async def test_no_snapshots_when_turned_off(settings: config.Settings):
    store = await _ran_a_chain(settings, every=0, n=20)
    assert store.snapshots().saves == 0


@pytest.mark.integration
async def test_on_jetstream_the_snapshot_is_in_the_bucket_and_restored(
    jetstream_store: JetStreamEventStore,
    settings: config.Settings,
    caplog: pytest.LogCaptureFixture,
):
    settings.engine.snapshot_every = 40
    store = jetstream_store
    async with running(store, settings, HANDLERS, concurrency=8):
        goal_id = await submit(store, settings, _chain(30))
        goal = await client.wait_goal(store, goal_id, timeout_s=60)
    assert goal.status == "done", goal.reason
    data = await store.snapshots().load(SNAPSHOT)
    assert data is not None
    saved = snapshot.decode(data)
    assert saved.last_seq >= 40
    caplog.set_level(logging.INFO, logger="blackboard.scheduler")
    async with running(store, settings, HANDLERS, lanes=[]) as stack:
        assert stack.scheduler is not None
        await asyncio.wait_for(stack.scheduler.leading.wait(), 10)
        await asyncio.sleep(0.3)
        state = stack.scheduler.state
    assert f"fold restored at sequence {saved.last_seq}" in caplog.text
    assert state == await _whole_fold(store)


async def test_finished_goals_are_let_go_and_not_taken_again(settings: config.Settings):
    """The scheduler's fold holds the live goals only; a re-sent submission of
    a finished goal (a new event id, the same goal) runs nothing again."""
    settings.engine.snapshot_every = 20
    store = MemoryEventStore()
    async with running(store, settings, HANDLERS, concurrency=8) as stack:
        assert stack.scheduler is not None
        done = [await submit(store, settings, _chain(5, f"g{i}t")) for i in range(6)]
        for goal_id in done:
            goal = await client.wait_goal(store, goal_id, timeout_s=30)
            assert goal.status == "done", goal.reason
        await asyncio.sleep(0.3)
        sched = stack.scheduler.state
        assert sched.goals == {}
        assert set(sched.retired) == set(done)
        first = [env.event async for env in store.read_goal(done[0])]
        again = msgspec.structs.replace(first[0], event_id="resent-submission")
        await store.append(again)
        await asyncio.sleep(0.5)
        after = [env.event async for env in store.read_goal(done[0])]
    assert len(after) == len(first) + 1  # the submission only: nothing ran
    assert done[0] not in sched.goals
    # The last snapshot holds no finished goal's tasks.
    saved = snapshot.decode(store.snapshots().blobs[SNAPSHOT])
    assert saved.state.goals == {} and set(saved.state.retired) <= set(done)


async def test_a_snapshot_past_the_end_of_the_log_is_passed_over(
    settings: config.Settings, caplog: pytest.LogCaptureFixture
):
    """A snapshot of a longer log (this one was recreated and is shorter)."""
    store = await _ran_a_chain(settings, every=20)
    snaps = store.snapshots()
    saved = snapshot.decode(snaps.blobs[SNAPSHOT])
    saved.state.last_seq = await store.events_last_seq() + 1000
    snaps.blobs[SNAPSHOT] = snapshot.encode(
        saved.state, saved.usage, "far-ahead", saved.state.last_seq
    )
    caplog.set_level(logging.INFO, logger="blackboard.scheduler")
    state = await _lead_once(store, settings)
    assert "not checked against the log" in caplog.text
    assert state == await _whole_fold(store)
