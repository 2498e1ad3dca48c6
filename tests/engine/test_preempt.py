"""Preemption of queued work: ``[engine] preempt = "requeue"``.

A lane's window full of background work, some of it dispatched but not yet
claimed: an urgent goal's task takes the slot of the worst unclaimed one,
which waits again (``TaskPreempted``, with the reason) and runs later, once.
Running tasks are never touched; with preemption off the urgent task waits
behind the queued ones.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from blackboard.engine import control as client
from blackboard.engine import submission as service
from blackboard.log.events import TaskClaimed, TaskPreempted, TaskSpec
from blackboard.runtime.inprocess import running
from tests.engine.conftest import events_of, spec
from tests.engine_handlers import HANDLERS
from tests.waiting import EVERY_S

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path


async def submit(store, settings, specs: list[TaskSpec], priority: int = 0) -> str:
    event = service.goal_submitted(
        settings, "goal", specs=specs, priority=priority, submitted_by="test"
    )
    await store.append(event)
    return event.goal_id


def background(marker: Path, n: int = 5) -> list[TaskSpec]:
    return [
        spec(f"b{i}", "slow", "local", seconds=0.4, marker=str(marker))
        for i in range(n)
    ]


async def claims(store, goal_id: str) -> list[tuple[str, datetime]]:
    return [
        (e.task_id or "", e.at)
        for e in await events_of(store, goal_id)
        if isinstance(e, TaskClaimed)
    ]


@pytest.mark.parametrize("preempt", ["requeue", "off"])
async def test_urgent_work_takes_the_slot_of_unclaimed_background_work(
    store, settings, tmp_path, preempt
):
    settings.engine.preempt = preempt
    settings.lanes["local"].window = 3
    marker = tmp_path / "runs"
    async with running(store, settings, HANDLERS, lanes=["local"], concurrency=1):
        bg = await submit(store, settings, background(marker))

        async def window_full() -> bool:
            goal = await client.goal_state(store, bg)
            statuses = [t.status for t in goal.tasks.values()]
            return statuses.count("ready") == 2 and statuses.count("claimed") == 1

        await until_async_value(window_full)
        urgent = await submit(store, settings, [spec("now", "echo")], priority=5)
        done = await client.wait_goal(store, urgent, timeout_s=30)
        assert done.status == "done"
        background_done = await client.wait_goal(store, bg, timeout_s=60)
    assert background_done.status == "done", background_done.reason
    # Every background task ran exactly once, preempted or not.
    runs = sorted(line.split()[0] for line in marker.read_text().splitlines())
    assert runs == [f"b{i}" for i in range(5)]
    preempted = [e for e in await events_of(store, bg) if isinstance(e, TaskPreempted)]
    urgent_claimed = (await claims(store, urgent))[0][1]
    queued_before = {t for t, at in await claims(store, bg) if at < urgent_claimed}
    if preempt == "off":
        assert preempted == []
        # FIFO behind what the window had already released: all three.
        assert len(queued_before) == 3
        return
    assert preempted, "nothing was preempted"
    first = preempted[0]
    assert (first.by_goal, first.by_task) == (urgent, "now")
    assert "gave its slot on local" in first.reason
    # The urgent task ran before the one that gave its slot up.
    assert first.task_id not in queued_before
    assert len(queued_before) < 3
    goal = await client.goal_state(store, bg)
    assert goal.tasks[first.task_id or ""].preempted >= 1


async def until_async_value(predicate, timeout_s: float = 30) -> None:
    """Poll an async predicate until it holds."""
    for _ in range(int(timeout_s / EVERY_S)):
        if await predicate():
            return
        await asyncio.sleep(EVERY_S)
    raise AssertionError(f"{predicate.__name__} not met in {timeout_s} s")
