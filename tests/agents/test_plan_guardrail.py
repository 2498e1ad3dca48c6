"""A plan larger than --max-tasks halts the goal with its work intact, like any
other guardrail breach; `bb resume --max-tasks` then finishes it."""

from __future__ import annotations

import asyncio

import pytest

from agents.handlers import Agents
from agents.session import DEMO_GOAL
from blackboard.engine import control as client
from blackboard.engine.handlers import BUILTIN
from blackboard.log.events import GoalHalted, TaskCreated, TaskHeld
from blackboard.runtime import config
from blackboard.runtime.inprocess import running
from tests.e2e.test_cli_basics import bb
from tests.engine.conftest import events_of, submit

pytestmark = pytest.mark.integration


async def test_a_plan_over_max_tasks_halts_then_resumes_to_done(store, cli_env):
    s = config.load(env={"BB_SCRIPTED": "1", "BB_LEASE_SECONDS": "5"}, path=None)
    agents = Agents(s)
    async with running(store, s, {**BUILTIN, **agents.handlers()}):
        goal_id = await submit(store, s, [], DEMO_GOAL, max_tasks=3)
        goal = await client.wait_goal(store, goal_id, timeout_s=60)
        assert goal.status == "halted", goal.reason
        assert goal.halted_by == "max_tasks"
        plan = goal.tasks["plan"]
        assert plan.status == "done"
        events = await events_of(store, goal_id)
        # The whole plan is in the log: nothing dropped, the excess held.
        planned = [e for e in events if isinstance(e, TaskCreated)]
        assert len(planned) == plan.result["tasks"] + 1 > 3
        (halt,) = [e for e in events if isinstance(e, GoalHalted)]
        assert (halt.guardrail, halt.limit) == ("max_tasks", 3)
        assert halt.observed > 3
        assert [e for e in events if isinstance(e, TaskHeld)]

        r = await asyncio.to_thread(
            bb, ["resume", goal_id, "--max-tasks", "100"], cli_env
        )
        assert r.returncode == 0, r.stderr
        assert "(halted by max_tasks); released" in r.stdout
        goal = await client.wait_goal(
            store, goal_id, until=frozenset({"done", "failed", "cancelled"}),
            timeout_s=60,
        )
    await agents.aclose()
    assert goal.status == "done", goal.reason
    assert len(goal.tasks) >= 25
