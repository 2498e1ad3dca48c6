"""The scheduler writes a step's TaskReady events in one atomic batch.

One round trip for many dispatches; and when one of them is stale (its task
moved since the fold), the batch is refused whole and each is written on its
own: the stale one meets its conflict alone, the others are dispatched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blackboard import ids
from blackboard.engine.decide import AppendBatch, Decider, Dispatch
from blackboard.engine.scheduler import Scheduler
from blackboard.engine.state import evolve
from blackboard.log.events import TaskCancelled, TaskReady
from blackboard.log.memory import MemoryEventStore
from tests.engine.conftest import events_of, spec, submit

if TYPE_CHECKING:
    from blackboard.runtime import config


async def _dispatches(
    store: MemoryEventStore, settings: config.Settings, n: int
) -> tuple[Scheduler, str, list[Dispatch]]:
    """A scheduler whose fold has a goal of ``n`` created tasks, and their
    dispatches as decided (not written yet)."""
    goal_id = await submit(store, settings, [spec(f"t{i}") for i in range(n)])
    sched = Scheduler(store, Decider("sched-test"))
    await sched.rebuild()
    now = ids.utcnow()
    for action in sched.decider.decide(sched.state, {goal_id}, set(), now, set()):
        assert isinstance(action, AppendBatch)
        await store.append_batch(action.items)
    await sched.rebuild()
    tasks = {(goal_id, f"t{i}") for i in range(n)}
    decided = sched.decider.decide(sched.state, set(), tasks, now, set())
    dispatches = [a for a in decided if isinstance(a, Dispatch)]
    assert len(dispatches) == n
    return sched, goal_id, dispatches


def _count_writes(store: MemoryEventStore) -> dict[str, int]:
    """How many appends and batches ``store`` is asked for from now on."""
    calls = {"append": 0, "append_batch": 0}
    for name in calls:
        real = getattr(store, name)

        async def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return await _real(*args, **kwargs)

        setattr(store, name, counted)
    return calls


async def _readies(store: MemoryEventStore, goal_id: str) -> list[TaskReady]:
    return [e for e in await events_of(store, goal_id) if isinstance(e, TaskReady)]


async def test_a_steps_dispatches_land_in_one_batch(settings: config.Settings):
    store = MemoryEventStore()
    sched, goal_id, dispatches = await _dispatches(store, settings, 5)
    before = await store.events_last_seq()
    calls = _count_writes(store)
    items = await sched._dispatch(dispatches)
    assert calls == {"append": 0, "append_batch": 1}  # one round trip
    readies = await _readies(store, goal_id)
    assert [r.task_id for r in readies] == [f"t{i}" for i in range(5)]
    # Each work item names its own TaskReady's sequence, contiguous.
    assert [i.ready_seq for i in items if i is not None] == list(
        range(before + 1, before + 6)
    )


async def test_a_stale_dispatch_fails_alone(settings: config.Settings):
    store = MemoryEventStore()
    sched, goal_id, dispatches = await _dispatches(store, settings, 4)
    # Task t2 is cancelled after the fold: its dispatch is stale.
    cancel = TaskCancelled(
        event_id="cancel-t2",
        goal_id=goal_id,
        task_id="t2",
        at=ids.utcnow(),
        actor="operator",
        reason="test",
    )
    await store.append(cancel)
    calls = _count_writes(store)
    items = await sched._dispatch(dispatches)
    # The batch refused, then each on its own.
    assert calls == {"append": 4, "append_batch": 1}
    assert [i.task_id if i is not None else None for i in items] == [
        "t0",
        "t1",
        None,
        "t3",
    ]
    readies = await _readies(store, goal_id)
    assert sorted(r.task_id or "" for r in readies) == ["t0", "t1", "t3"]
    # What was written is what the fold shows, the stale task untouched.
    async for env in store.read(from_seq=sched.state.last_seq + 1):
        evolve(sched.state, env)
    goal = sched.state.goals[goal_id]
    assert goal.tasks["t2"].status == "cancelled"
    assert {goal.tasks[t].status for t in ("t0", "t1", "t3")} == {"ready"}
