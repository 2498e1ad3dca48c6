"""Waiting for a condition rather than for a time: helpers the tests share.

A fixed sleep is either too short on a loaded machine (a flaky test) or too
long everywhere else (a slow one). Wait for what the test needs instead: a
goal's state (followed from the log, no polling), or a predicate polled at a
short interval until a deadline, which names what was awaited when it passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

from blackboard.engine.state import BoardState, GoalState, evolve

if TYPE_CHECKING:
    from collections.abc import Callable

    from blackboard.log.store import JetStreamEventStore

__all__ = [
    "EVERY_S",
    "bb_status_until",
    "goal_until",
    "task_status",
    "until",
    "until_async",
]

EVERY_S = 0.05
"""How often a predicate is polled."""


def until(
    predicate: Callable[[], object], timeout_s: float = 30, what: str = "condition"
) -> None:
    """Return once ``predicate()`` is true; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout_s} s")
        time.sleep(EVERY_S)


async def until_async(
    predicate: Callable[[], object], timeout_s: float = 30, what: str = "condition"
) -> None:
    """:func:`until` for async code: the loop runs while it waits."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout_s} s")
        await asyncio.sleep(EVERY_S)


def task_status(goal: GoalState, task_id: str) -> str:
    """A task's status, or ``"none"`` before it is created."""
    task = goal.tasks.get(task_id)
    return task.status if task is not None else "none"


async def goal_until(
    store: JetStreamEventStore,
    goal_id: str,
    predicate: Callable[[GoalState], object],
    timeout_s: float = 30,
) -> GoalState:
    """Follow a goal's events until ``predicate(goal)`` holds; return the goal."""
    state = BoardState()
    batches = store.follow_batches(store.subjects.goal_events(goal_id), 1)
    async with asyncio.timeout(timeout_s), contextlib.aclosing(batches):
        async for batch in batches:
            for env in batch:
                evolve(state, env)
            goal = state.goals.get(goal_id)
            if goal is not None and predicate(goal):
                return goal
    raise AssertionError("unreachable: follow_batches never ends")


def bb_status_until(
    env: dict[str, str],
    goal_id: str,
    ok: Callable[[dict[str, Any]], object] = lambda doc: doc["status"] != "running",
    timeout_s: float = 30,
) -> dict[str, Any]:
    """Poll ``bb status <goal> --json`` until ``ok(doc)`` (by default: the goal
    ended); the last document, even on a timeout, for the caller to assert on."""
    from tests.e2e.test_cli_basics import bb

    deadline = time.monotonic() + timeout_s
    while True:
        r = bb(["status", goal_id, "--json"], env)
        assert r.returncode == 0, r.stderr
        doc: dict[str, Any] = json.loads(r.stdout)
        if ok(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(4 * EVERY_S)
