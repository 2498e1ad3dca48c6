"""The dispatch window across a scheduler failover, under saturation.

The leading scheduler is SIGKILLed while a background goal saturates the local
lane's window; an urgent goal arrives while no scheduler leads. The standby
takes over from the log: the window still holds, the urgent goal's tasks go
out before any more background work, nothing is lost or done twice.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import pytest

from blackboard.log.events import (
    GoalSubmitted,
    TaskReady,
    TaskSpec,
)
from tests.faults.harness import Deployment, audit, submit, wait_all
from tests.waiting import goal_until
from tests.windows import most_in_flight

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

WINDOW = 4


class WindowedDeployment(Deployment):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.config = tmp / "bb.toml"
        self.config.write_text(f"[lanes.local]\nwindow = {WINDOW}\n")

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "BB_CONFIG": str(self.config)}


def slow(prefix: str, n: int, seconds: float) -> list[TaskSpec]:
    return [
        TaskSpec(
            task_id=f"{prefix}{i}",
            type="slow",
            lane="local",
            payload={"seconds": seconds},
        )
        for i in range(n)
    ]


async def test_scheduler_sigkilled_under_saturation_keeps_window_and_order(
    tmp_path: Path,
) -> None:
    d = WindowedDeployment(tmp_path)
    d.up()
    try:
        async for store in d.store():
            s = d.settings()
            background = await submit(store, s, "background", slow("b", 24, 0.4))
            await goal_until(
                store,
                background,
                lambda g: sum(t.status == "done" for t in g.tasks.values()) >= 2,
                60,
            )
            d.signal("scheduler-1", signal.SIGKILL)  # the leader
            urgent = await submit_urgent(store, s)
            goals = [background, urgent]
            await wait_all(store, goals)
            events = [env.event async for env in store.read()]
            row = await audit(
                "scheduler SIGKILL under a full window",
                store,
                goals,
                d.ledger,
                deployment=d,
            )
    finally:
        d.down()
    assert "leading" in d.log("scheduler-2")
    assert row.problems == [] and (row.lost, row.doubled) == (0, 0)
    assert most_in_flight(events) <= WINDOW  # every task here is on local
    # From the urgent goal's arrival on, every one of its tasks went out
    # before any more background work.
    arrived = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, GoalSubmitted) and e.goal_id == urgent
    )
    after = [e.goal_id for e in events[arrived:] if isinstance(e, TaskReady)]
    assert after[:8] == [urgent] * 8, after[:12]
    row.checked = (
        f"window {WINDOW} held; after the failover the urgent goal's 8 tasks went"
        " out before any more background work"
    )


async def submit_urgent(store: Any, s: Any) -> str:
    from blackboard.engine import submission as service

    event = service.goal_submitted(
        s, "urgent", specs=slow("u", 8, 0.1), priority=10, submitted_by="faults"
    )
    await store.append(event)
    return event.goal_id
