"""Faults injected into a running deployment of separate processes.

After each: every goal reaches its right end state, no task completed twice,
no side effect performed twice (the events say so, and so does a ledger the
effects append to).
"""

from __future__ import annotations

import asyncio
import re
import signal

import pytest

from agents.session import DEMO_GOAL
from blackboard.engine.scheduler import SNAPSHOT
from blackboard.log.events import TaskClaimed
from tests.faults.harness import audit, effect_goal, ledger_lines, submit, wait_all
from tests.waiting import goal_until, until_async

pytestmark = pytest.mark.integration


async def start_goals(deployment, store) -> list[str]:
    s = deployment.settings()
    return [
        await submit(store, s, DEMO_GOAL),
        await submit(store, s, "effects", effect_goal(deployment.ledger)),
    ]


async def until_ledger(deployment, lines: int) -> None:
    await until_async(
        lambda: len(ledger_lines(deployment.ledger)) >= lines,
        what=f"{lines} effects performed",
    )


def check(row) -> None:
    assert row.problems == []
    assert (row.lost, row.doubled) == (0, 0)


async def test_worker_sigkilled_mid_goal(deployment, fstore):
    goals = await start_goals(deployment, fstore)
    await until_ledger(deployment, 2)
    # Not while an effect is between its start and its recorded end: one
    # killed there may have been performed, and waits for a human (that is
    # tests/faults/test_tool_faults.py's and the approval tests' subject).
    inflight = deployment.ledger.with_name(deployment.ledger.name + ".inflight")
    await until_async(lambda: not any(inflight.iterdir()), what="no effect in flight")
    deployment.signal("worker-local-1", signal.SIGKILL)
    await wait_all(fstore, goals)
    check(
        await audit(
            "worker SIGKILL", fstore, goals, deployment.ledger, deployment=deployment
        )
    )


async def test_scheduler_sigkilled_mid_goal(deployment, fstore):
    goals = await start_goals(deployment, fstore)
    await until_ledger(deployment, 2)
    # Killed once it has saved a snapshot of its fold: the standby starts
    # from it and reads only the log after it.
    for _ in range(300):
        if await fstore.snapshots().load(SNAPSHOT) is not None:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the scheduler saved no snapshot of its fold")
    deployment.signal("scheduler-1", signal.SIGKILL)  # the leader
    await wait_all(fstore, goals)
    standby = deployment.log("scheduler-2")
    assert "leading" in standby
    restored = re.search(r"fold restored at sequence (\d+)", standby)
    assert restored is not None, standby[-2000:]
    row = await audit(
        "scheduler SIGKILL", fstore, goals, deployment.ledger, deployment=deployment
    )
    row.checked = f"the standby started from a snapshot at seq {restored[1]}"
    check(row)


async def test_server_down_10s_mid_goal(deployment, fstore):
    goals = await start_goals(deployment, fstore)
    await until_ledger(deployment, 2)
    deployment.server.stop()
    await asyncio.sleep(10)
    deployment.server.start()  # same port, same store
    await wait_all(fstore, goals)
    check(
        await audit(
            "nats-server down 10 s",
            fstore,
            goals,
            deployment.ledger,
            deployment=deployment,
        )
    )


async def test_projector_sigkilled_mid_goal(deployment, fstore):
    goals = await start_goals(deployment, fstore)
    await until_ledger(deployment, 2)
    deployment.signal("projector", signal.SIGKILL)
    # The goals go on while it is down: it has a backlog when it comes back.
    seen = len(ledger_lines(deployment.ledger))
    await until_ledger(deployment, min(seen + 1, len(effect_goal(deployment.ledger))))
    deployment.start("projector", "projector", "--db", str(deployment.db))
    await wait_all(fstore, goals)
    check(
        await audit(
            "projector SIGKILL", fstore, goals, deployment.ledger, deployment=deployment
        )
    )


async def test_paused_worker_lease_expires_late_result_refused(deployment, fstore):
    s = deployment.settings()
    goal = await submit(
        fstore, s, "slow", effect_goal(deployment.ledger, n=6, seconds=1.5)
    )
    deployment.wait(lambda: ": handling " in deployment.log("worker-local-1"))
    victim = next(
        line.split(":")[0]
        for line in deployment.log("worker-local-1").splitlines()
        if ": handling " in line
    )

    async def claims() -> list[TaskClaimed]:
        return [
            e.event
            async for e in fstore.read_goal(goal)
            if isinstance(e.event, TaskClaimed)
        ]

    await goal_until(
        fstore, goal, lambda g: any(t.worker == victim for t in g.tasks.values())
    )
    await asyncio.sleep(0.3)
    deployment.signal("worker-local-1", signal.SIGSTOP)  # mid-task, past its lease
    await wait_all(fstore, [goal])
    deployment.signal("worker-local-1", signal.SIGCONT)
    await asyncio.sleep(3)  # it wakes, tries to finish, is refused
    held = {c.task_id for c in await claims() if c.worker == victim}
    taken_over = {
        c.task_id for c in await claims() if c.task_id in held and c.worker != victim
    }
    assert taken_over, "no task of the paused worker was taken over"
    check(
        await audit(
            "worker paused past its lease",
            fstore,
            [goal],
            deployment.ledger,
            deployment=deployment,
        )
    )


async def test_fifty_goals_at_once(deployment, fstore):
    s = deployment.settings()
    goals = await asyncio.gather(
        *(submit(fstore, s, f"write release notes for 2.{i}") for i in range(50))
    )
    await wait_all(fstore, list(goals), timeout=180)
    row = await audit(
        "50 goals submitted at once", fstore, list(goals), deployment=deployment
    )
    check(row)
    assert row.tasks == 50 * 6
