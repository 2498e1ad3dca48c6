"""What a user does to goals, at the edge: look, wait, approve, resume, cancel.

The CLI is a thin layer over these; another program can call them directly.
A command (``blackboard.engine.commands``) is carried out by ``handle``: fold
the goal, ``decide_command`` (pure), append. Every write is guarded on the
sequence the decision was made on, so two people approving the same task at
once cannot both succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from blackboard import ids
from blackboard.engine.commands import (
    FINAL,
    ApproveTask,
    CancelGoal,
    DenyTask,
    Guarded,
    NotFound,
    ResumeGoal,
    decide_command,
)
from blackboard.engine.state import (
    BoardState,
    GoalState,
    TaskState,
    evolve,
    fold,
    fold_task,
)
from blackboard.errors import ConcurrencyConflict, ConfigError
from blackboard.log.ports import MAX_BATCH

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import datetime

    from blackboard.log.codec import Envelope
    from blackboard.log.ports import EventStore

__all__ = [
    "FINAL",
    "NotFound",
    "approve",
    "cancel",
    "find_task",
    "goal_state",
    "goals",
    "handle",
    "resume",
    "wait_goal",
]


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


async def handle(
    store: EventStore,
    cmd: ApproveTask | DenyTask | ResumeGoal | CancelGoal,
    *,
    now: Callable[[], datetime] = ids.utcnow,
    new_id: Callable[[], str] = ids.new_id,
) -> tuple[GoalState, list[Guarded]]:
    """Carry out one command: fold its goal, decide, append.

    Returns the goal as the command saw it and the events it appended. A
    guarded write that lost its race means someone acted on the goal in
    between: the command is refused in one line, to be looked at again.
    """
    state = fold([env async for env in store.read_goal(cmd.goal_id)])
    events = decide_command(state, cmd, now=now(), new_id=new_id)
    try:
        if len(events) == 1:
            event, expect = events[0]
            await store.append(event, expect=expect)
        else:
            # The first batch holds the command's own event, guarded: all of
            # it lands, or none does. Any rest is unguarded (a cancel's fence).
            for start in range(0, len(events), MAX_BATCH):
                await store.append_batch(events[start : start + MAX_BATCH])
    except ConcurrencyConflict as e:
        what = (
            f"task {cmd.task_id}"
            if isinstance(cmd, ApproveTask | DenyTask)
            else f"goal {cmd.goal_id}"
        )
        raise ConfigError(f"{what} changed meanwhile; look again") from e
    return state.goals[cmd.goal_id], events


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
    if goal_id is None:
        goal_id = await store.goal_of_task(task_id)
        if goal_id is None:
            raise NotFound(f"no task {task_id!r} in the log")
    cls = DenyTask if deny else ApproveTask
    goal, _ = await handle(
        store, cls(goal_id=goal_id, task_id=task_id, note=note, by=by)
    )
    return goal.tasks[task_id]


async def resume(
    store: EventStore,
    goal_id: str,
    overrides: Mapping[str, Any],
    *,
    by: str = "",
) -> GoalState:
    """Raise a halted goal's limits; its held tasks are admitted again."""
    cmd = ResumeGoal(goal_id=goal_id, overrides=dict(overrides), by=by)
    for _ in range(5):
        try:
            goal, _ = await handle(store, cmd)
        except ConfigError as e:
            if isinstance(e.__cause__, ConcurrencyConflict):
                # A goal-level event landed meanwhile (a call in flight
                # settling its budget entry): look again.
                continue
            raise
        return goal
    raise ConfigError(f"goal {goal_id} kept changing; try again")


async def cancel(
    store: EventStore,
    goal_id: str,
    *,
    reason: str = "",
    by: str = "",
    compensate: bool = False,
) -> tuple[GoalState, int]:
    """Cancel an open goal and every open task of it, at once.

    The goal's cancellation and a ``TaskCancelled`` for each open task are one
    atomic batch (see ``commands.decide_command``): from there on every later
    guarded write of those tasks is refused by the server. ``compensate`` is
    recorded on the cancellation; undoing the effects is the caller's next
    step (``agents.compensate.compensate_goal``: it needs the workspace).

    Returns the goal as it was and how many open tasks were cancelled.
    """
    cmd = CancelGoal(goal_id=goal_id, reason=reason, by=by, compensate=compensate)
    for _ in range(5):
        try:
            goal, events = await handle(store, cmd)
        except ConfigError as e:
            if isinstance(e.__cause__, ConcurrencyConflict):
                continue  # a goal-level event landed meanwhile: look again
            raise
        return goal, len(events) - 1
    raise ConfigError(f"goal {goal_id} kept changing; try again")
