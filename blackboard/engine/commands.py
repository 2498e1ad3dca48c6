"""What a user does to goals: look, wait, approve, resume, cancel.

The CLI is a thin layer over these; another program can call them directly.
Every write is guarded on the sequence the decision was made on, so two
people approving the same task at once cannot both succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from blackboard import ids
from blackboard.engine.state import (
    BoardState,
    GoalState,
    TaskState,
    evolve,
    fold,
    fold_task,
)
from blackboard.engine.submission import resolve_limits
from blackboard.errors import ConcurrencyConflict, ConfigError
from blackboard.log.events import (
    ApprovalDenied,
    ApprovalGranted,
    Event,
    GoalCancelled,
    GoalResumed,
    TaskCancelled,
)
from blackboard.log.ports import MAX_BATCH

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from blackboard.log.codec import Envelope
    from blackboard.log.ports import EventStore

FINAL = frozenset({"done", "failed", "cancelled"})


class NotFound(ConfigError):
    """No such goal or task."""


async def goal_state(store: EventStore, goal_id: str) -> GoalState:
    """Fold one goal's events into its current state."""
    state = fold([env async for env in store.read_goal(goal_id)])
    goal = state.goals.get(goal_id)
    if goal is None:
        raise NotFound(f"no goal {goal_id!r} in the log")
    return goal


async def goals(store: EventStore) -> list[GoalState]:
    """Every goal with its current state, oldest first."""
    state = fold([env async for env in store.read()])
    return list(state.goals.values())


async def wait_goal(
    store: EventStore,
    goal_id: str,
    *,
    until: frozenset[str] = FINAL | {"halted"},
    on_batch: Callable[[GoalState, list[Envelope]], None] | None = None,
    timeout_s: float | None = None,
    goal_level_only: bool = False,
) -> GoalState:
    """Follow a goal until its status is one of ``until``; return its state.

    With ``goal_level_only`` only the goal's own events are read (its status,
    not its tasks'): a cheap wait for a goal of many tasks.
    """
    state = BoardState()
    subject = (
        store.subjects.task_events(goal_id, None)
        if goal_level_only
        else store.subjects.goal_events(goal_id)
    )

    async def follow() -> GoalState:
        batches = store.follow_batches(subject, 1)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for env in batch:
                    evolve(state, env)
                goal = state.goals.get(goal_id)
                if goal is None:
                    continue
                if on_batch is not None:
                    on_batch(goal, batch)
                if goal.status in until:
                    return goal
        raise AssertionError("unreachable: follow_batches never ends")

    return await asyncio.wait_for(follow(), timeout_s)


async def find_task(
    store: EventStore, task_id: str, goal_id: str | None = None
) -> TaskState:
    """A task's state; its goal is found from the log when not given."""
    if goal_id is None:
        goal_id = await store.goal_of_task(task_id)
        if goal_id is None:
            raise NotFound(f"no task {task_id!r} in the log")
    envs = [
        env async for env in store.read(store.subjects.task_events(goal_id, task_id))
    ]
    task = fold_task(goal_id, envs)
    if task is None:
        raise NotFound(f"no task {task_id!r} in goal {goal_id}")
    return task


async def approve(
    store: EventStore,
    task_id: str,
    *,
    goal_id: str | None = None,
    deny: bool = False,
    note: str = "",
    by: str = "",
) -> TaskState:
    """Grant (or deny) a task that awaits approval."""
    task = await find_task(store, task_id, goal_id)
    if task.status != "awaiting_approval":
        raise ConfigError(f"task {task_id} is {task.status}, not awaiting approval")
    cls = ApprovalDenied if deny else ApprovalGranted
    event = cls(
        event_id=ids.new_id(),
        goal_id=task.goal_id,
        task_id=task_id,
        at=ids.utcnow(),
        actor=f"cli:{by}",
        by=by,
        note=note,
    )
    try:
        await store.append(event, expect=task.last_seq)
    except ConcurrencyConflict as e:
        raise ConfigError(f"task {task_id} changed meanwhile; look again") from e
    return task


async def resume(
    store: EventStore,
    goal_id: str,
    overrides: Mapping[str, Any],
    *,
    by: str = "",
) -> GoalState:
    """Raise a halted goal's limits; its held tasks are admitted again."""
    goal = await goal_state(store, goal_id)
    if goal.status != "halted":
        raise ConfigError(f"goal {goal_id} is {goal.status}, not halted")
    limits = resolve_limits(goal.limits, overrides)
    event = GoalResumed(
        event_id=ids.new_id(),
        goal_id=goal_id,
        at=ids.utcnow(),
        actor=f"cli:{by}",
        limits=limits,
        by=by,
    )
    try:
        await store.append(event, expect=goal.last_seq)
    except ConcurrencyConflict as e:
        raise ConfigError(f"goal {goal_id} changed meanwhile; look again") from e
    return goal


async def cancel(
    store: EventStore, goal_id: str, *, reason: str = "", by: str = ""
) -> tuple[GoalState, int]:
    """Cancel an open goal and every open task of it, at once.

    The goal's cancellation and a ``TaskCancelled`` for each open task are
    written as one atomic batch (claimed and ready tasks first when a goal has
    more than one batch holds; the rest follow in the next batches). The task
    events are written unguarded on purpose: they are a fence. Once they are
    in the log every later guarded write of those tasks is refused by the
    server: no claim, no dispatch, no side effect, no spawn, no completion.

    Returns the goal as it was and how many open tasks were cancelled.
    """
    for _ in range(5):
        goal = await goal_state(store, goal_id)
        if goal.status in FINAL:
            raise ConfigError(f"goal {goal_id} is already {goal.status}")
        now = ids.utcnow()
        why = reason or f"cancelled by {by}"
        open_tasks = sorted(
            (t for t in goal.tasks.values() if t.status not in FINAL),
            key=lambda t: (t.status not in ("claimed", "ready"), t.ordinal),
        )
        items: list[tuple[Event, int | None]] = [
            (
                GoalCancelled(
                    event_id=ids.new_id(),
                    goal_id=goal_id,
                    at=now,
                    actor=f"cli:{by}",
                    reason=why,
                    by=by,
                ),
                goal.last_seq,
            )
        ]
        items.extend(
            (
                TaskCancelled(
                    event_id=f"cancel:{goal_id}:{t.task_id}",
                    goal_id=goal_id,
                    task_id=t.task_id,
                    at=now,
                    actor=f"cli:{by}",
                    reason=f"goal cancelled: {why}",
                ),
                None,
            )
            for t in open_tasks
        )
        try:
            await store.append_batch(items[:MAX_BATCH])
        except ConcurrencyConflict:
            continue  # a goal-level event landed meanwhile: look again
        for start in range(MAX_BATCH, len(items), MAX_BATCH):
            await store.append_batch(items[start : start + MAX_BATCH])
        return goal, len(open_tasks)
    raise ConfigError(f"goal {goal_id} kept changing; try again")
