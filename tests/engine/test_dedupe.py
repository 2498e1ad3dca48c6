"""A task's dedupe_key: within a goal, a second task with the key of an earlier
one does not run; it gets the earlier one's result (or is cancelled with it)."""

from __future__ import annotations

from typing import Any

from blackboard.engine import control as client
from blackboard.log.events import TaskCancelled, TaskClaimed, TaskCompleted, TaskSpec
from tests.engine.conftest import events_of, submit


def keyed(tid: str, task_type: str, key: str, *deps: str, **payload: Any) -> TaskSpec:
    return TaskSpec(
        task_id=tid,
        type=task_type,
        lane="local",
        depends_on=deps,
        payload=payload,
        dedupe_key=key,
    )


async def test_a_duplicate_gets_the_result_and_the_handler_runs_once(
    store, settings, engine, tmp_path
):
    marker = tmp_path / "runs.txt"
    slow = {"marker": str(marker), "seconds": 0.5}
    specs = [
        keyed("a", "slow", "k", **slow),
        keyed("b", "slow", "k", **slow),  # while a runs: waits for a's end
        keyed("c", "slow", "k", "a", **slow),  # after a is done: at once
    ]
    goal_ids = [await submit(store, settings, specs) for _ in range(2)]
    goals = [await client.wait_goal(store, g, timeout_s=30) for g in goal_ids]
    for goal_id, goal in zip(goal_ids, goals, strict=True):
        assert goal.status == "done", goal.reason
        result = goal.tasks["a"].result
        assert result is not None
        assert goal.tasks["b"].result == goal.tasks["c"].result == result
        events = await events_of(store, goal_id)
        assert {e.task_id for e in events if isinstance(e, TaskClaimed)} == {"a"}
        done = {e.task_id: e for e in events if isinstance(e, TaskCompleted)}
        assert done["a"].duplicate_of is None
        assert done["b"].duplicate_of == done["c"].duplicate_of == "a"
    # Once per goal: the key's scope is one goal.
    runs = marker.read_text().splitlines()
    assert len(runs) == 2 and all(r.startswith("a ") for r in runs)


async def test_a_duplicate_of_a_failed_task_is_cancelled(store, settings, engine):
    goal_id = await submit(
        store, settings, [keyed("x", "broken", "k"), keyed("y", "echo", "k")]
    )
    goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "failed"
    assert goal.tasks["x"].status == "failed"
    assert goal.tasks["y"].status == "cancelled"
    events = await events_of(store, goal_id)
    (cancel,) = [e for e in events if isinstance(e, TaskCancelled)]
    assert cancel.reason == "duplicate of x (dedupe key 'k'), which failed"
    assert {e.task_id for e in events if isinstance(e, TaskClaimed)} == {"x"}
