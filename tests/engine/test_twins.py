"""What the fault suite does with processes, in one process on the twins.

The in-memory store, work queue and lease stand in for JetStream, and the
twins' clock is in the test's hand: a lapsed lease or a scheduler handing over
takes milliseconds, not a killed process and its timeouts. The same scenarios
run against real processes and a real server in test_engine_faults.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from blackboard import ids
from blackboard.engine import control as client
from blackboard.log.events import (
    GoalCancelled,
    SideEffectCompleted,
    SideEffectStarted,
    TaskCancelled,
    TaskClaimed,
    TaskCompleted,
    TaskCreated,
    TaskNeedsFollowup,
    TaskReady,
)
from blackboard.log.memory import MemoryEventStore
from blackboard.runtime.inprocess import running
from tests.engine.conftest import events_of, spec, submit
from tests.engine_handlers import HANDLERS

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from blackboard.runtime import config


class Clock:
    """Real time, plus however far the test has moved it on."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return ids.utcnow() + self.ahead

    def advance(self, seconds: float) -> None:
        self.ahead += timedelta(seconds=seconds)


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_cancel_mid_flight_fences_everything(
    settings: config.Settings, tmp_path: Path
):
    """After the cancellation is in the log nothing of the goal moves on."""
    store = MemoryEventStore()
    ledger = tmp_path / "ledger"
    ledger.touch()
    specs = [
        spec(f"t{i:02d}", "churn", ledger=str(ledger), seconds=0.1, spawn=i % 3 == 0)
        for i in range(30)
    ]
    async with running(store, settings, HANDLERS, concurrency=4):
        goal_id = await submit(store, settings, specs)
        await wait_for(lambda: len(ledger.read_text().splitlines()) >= 6)
        before, cancelled_n = await client.cancel(store, goal_id, by="ana")
        goal = await client.wait_goal(store, goal_id, timeout_s=20)
        await asyncio.sleep(0.5)  # let any straggler's late write try to land
    envs = [env async for env in store.read_goal(goal_id)]
    cut = next(e.seq for e in envs if isinstance(e.event, GoalCancelled))
    moved_on = (
        TaskReady,
        TaskClaimed,
        SideEffectStarted,
        SideEffectCompleted,
        TaskCreated,
        TaskCompleted,
        TaskNeedsFollowup,
    )
    after = [type(e.event).__name__ for e in envs if e.seq > cut]
    assert [a for a in after if a in {m.__name__ for m in moved_on}] == []
    assert goal.status == "cancelled"
    open_before = [
        t
        for t in before.tasks.values()
        if t.status not in ("done", "failed", "cancelled")
    ]
    assert 0 < cancelled_n == len(open_before)
    fenced = [
        e.event.task_id or ""
        for e in envs
        if isinstance(e.event, TaskCancelled) and e.seq <= cut + cancelled_n
    ]
    assert sorted(fenced) == sorted(t.task_id for t in open_before)
    started = {
        e.event.task_id
        for e in envs
        if isinstance(e.event, SideEffectStarted) and e.seq < cut
    }
    performed = ledger.read_text().split()
    assert set(performed) <= started
    assert len(performed) == len(set(performed))  # none doubled


async def test_a_lapsed_lease_is_taken_over_and_the_late_writes_refused(
    settings: config.Settings, tmp_path: Path
):
    clock = Clock()
    store = MemoryEventStore(clock=clock)
    marker = tmp_path / "starts"
    async with running(store, settings, HANDLERS, concurrency=4):
        goal_id = await submit(
            store, settings, [spec("s", "slow", seconds=1.0, marker=str(marker))]
        )
        await wait_for(marker.exists)
        # The holder stalls past its lease (a GC pause, a frozen VM): the work
        # message is delivered again and the next delivery claims the task.

        async def claims() -> int:
            events = await events_of(store, goal_id)
            return sum(isinstance(e, TaskClaimed) for e in events)

        while await claims() < 2:
            clock.advance(settings.engine.lease_s + 1)
            for _ in range(25):
                await asyncio.sleep(0.02)
                if await claims() == 2:
                    break
        goal = await client.wait_goal(store, goal_id, timeout_s=20)
        await asyncio.sleep(0.5)
    assert goal.status == "done", goal.reason
    events = await events_of(store, goal_id)
    claimed = [e for e in events if isinstance(e, TaskClaimed)]
    assert [(c.attempt, c.delivery) for c in claimed] == [(1, 1), (2, 2)]
    (done,) = [e for e in events if isinstance(e, TaskCompleted)]
    assert done.attempt == 2  # the first run's completion was refused


async def test_a_standby_scheduler_takes_over_and_nothing_is_done_twice(
    settings: config.Settings,
):
    store = MemoryEventStore()
    specs = [spec("t0")] + [
        spec(f"t{i}", "echo", "local", f"t{i - 1}") for i in range(1, 40)
    ]
    async with (
        running(store, settings, HANDLERS, lanes=["local"], scheduler=False),
        contextlib.AsyncExitStack() as leaders,
    ):
        first = await leaders.enter_async_context(
            running(store, settings, HANDLERS, lanes=[])
        )
        assert first.scheduler is not None
        await asyncio.wait_for(first.scheduler.leading.wait(), 5)
        standby = await leaders.enter_async_context(
            running(store, settings, HANDLERS, lanes=[])
        )
        assert standby.scheduler is not None
        goal_id = await submit(store, settings, specs)

        async def done_count() -> int:
            g = await client.goal_state(store, goal_id)
            return sum(t.status == "done" for t in g.tasks.values())

        for _ in range(500):
            if await done_count() >= 10:
                break
            await asyncio.sleep(0.02)
        assert not standby.scheduler.leading.is_set()
        first.stop.set()  # the leader goes away mid-goal; its lease is released
        await asyncio.wait_for(standby.scheduler.leading.wait(), 10)
        goal = await client.wait_goal(store, goal_id, timeout_s=20)
    assert goal.status == "done", goal.reason
    events = await events_of(store, goal_id)
    readies = Counter(
        (e.task_id, e.dispatch) for e in events if isinstance(e, TaskReady)
    )
    assert len(readies) == 40 and max(readies.values()) == 1
    completed = Counter(e.task_id for e in events if isinstance(e, TaskCompleted))
    assert len(completed) == 40 and max(completed.values()) == 1
