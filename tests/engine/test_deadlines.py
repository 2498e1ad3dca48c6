"""Deadlines: a goal past its deadline halts (or fails), and resumes with a later one."""

from __future__ import annotations

from datetime import timedelta

import pytest

from blackboard import ids
from blackboard.engine import control as client
from blackboard.errors import ConfigError
from blackboard.log.events import GoalHalted, TaskSpec
from blackboard.runtime.inprocess import running
from tests.engine.conftest import events_of, spec, submit
from tests.engine_handlers import HANDLERS


def chain() -> list[TaskSpec]:
    return [
        spec("first", "slow", "local", seconds=1.5),
        spec("then", "echo", "local", "first"),
    ]


async def test_a_missed_deadline_halts_the_goal_and_a_later_one_resumes_it(
    store, settings
):
    async with running(store, settings, HANDLERS):
        goal_id = await submit(
            store, settings, chain(), deadline=ids.utcnow() + timedelta(seconds=0.5)
        )
        goal = await client.wait_goal(store, goal_id, timeout_s=30)
        assert (goal.status, goal.halted_by) == ("halted", "deadline")
        halted = [
            e for e in await events_of(store, goal_id) if isinstance(e, GoalHalted)
        ]
        deadline = goal.limits.deadline
        assert deadline is not None
        assert halted[0].limit == pytest.approx(deadline.timestamp())
        # Work under way finishes; nothing new starts while it is halted.
        goal = await client.wait_goal(
            store, goal_id, until=frozenset({"halted"}), timeout_s=30
        )
        with pytest.raises(ConfigError, match="has passed: give a later one"):
            await client.resume(store, goal_id, {}, by="ops")
        later = ids.utcnow() + timedelta(seconds=60)
        await client.resume(store, goal_id, {"deadline": later}, by="ops")
        goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "done", goal.reason
    assert goal.limits.deadline == later
    assert [t.status for t in goal.tasks.values()] == ["done", "done"]


async def test_a_missed_deadline_fails_the_goal_when_configured(store, settings):
    settings.engine.on_deadline = "fail"
    async with running(store, settings, HANDLERS):
        goal_id = await submit(
            store, settings, chain(), deadline=ids.utcnow() + timedelta(seconds=0.5)
        )
        goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "failed"
    assert goal.reason.startswith("deadline ") and "passed" in goal.reason
