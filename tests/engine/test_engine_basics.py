"""Goals move: DAG order, spawning, retries, failures, approvals, guardrails."""

from __future__ import annotations

from blackboard.engine import control as client
from blackboard.log.events import TaskClaimed, TaskCompleted
from tests.engine.conftest import events_of, spec, submit
from tests.waiting import goal_until, task_status


async def test_three_level_dag_runs_in_dependency_order(store, settings, engine):
    specs = [
        spec("a"),
        spec("b", "echo", "local", "a"),
        spec("c", "echo", "local", "a"),
        spec("d", "echo", "frontier", "b", "c"),
    ]
    goal_id = await submit(store, settings, specs)
    goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "done", goal.reason
    order = [
        e.task_id
        for e in await events_of(store, goal_id)
        if isinstance(e, TaskCompleted)
    ]
    assert order.index("a") < order.index("b") < order.index("d")
    assert order.index("c") < order.index("d")
    assert goal.tasks["d"].result["deps"] == ["b", "c"]
    claims = [e for e in await events_of(store, goal_id) if isinstance(e, TaskClaimed)]
    assert {c.task_id: c.worker.split("-")[1] for c in claims}["d"] == "frontier"


async def test_local_task_spawns_frontier_child_and_finishes_after_it(
    store, settings, engine
):
    goal_id = await submit(store, settings, [spec("n", "needs")])
    goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "done", goal.reason
    parent = goal.tasks["n"]
    (child_id,) = parent.children
    child = goal.tasks[child_id]
    assert child.lane == "frontier" and child.depth == 1 and child.parent_id == "n"
    assert parent.result == {"used": [{"answer": "for schema?"}]}
    assert child.finished_at is not None and parent.finished_at is not None
    assert child.finished_at <= parent.finished_at


async def test_retryable_failure_backs_off_then_succeeds(store, settings, engine):
    goal_id = await submit(store, settings, [spec("f", "flaky")])
    goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "done"
    assert goal.tasks["f"].result == {"attempt": 2}
    assert goal.tasks["f"].failures == 1


async def test_handler_bug_fails_task_and_goal_with_the_error(store, settings, engine):
    goal_id = await submit(
        store, settings, [spec("x", "broken"), spec("y", "echo", "local", "x")]
    )
    goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "failed"
    assert goal.tasks["x"].error == "ValueError: handler bug"
    assert goal.tasks["y"].status == "cancelled"
    assert "dependency x failed" in (goal.tasks["y"].error or "")
    assert "x failed" in goal.reason


async def test_unknown_task_type_and_lane_fail_with_reasons(store, settings, engine):
    goal_id = await submit(
        store, settings, [spec("t", "nosuch"), spec("l", "echo", "gpu9")]
    )
    goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "failed"
    assert "no handler for task type 'nosuch'" in (goal.tasks["t"].error or "")
    assert "unknown lane 'gpu9'" in (goal.tasks["l"].error or "")


async def test_approval_gate_waits_until_approved(store, settings, engine):
    goal_id = await submit(store, settings, [spec("g", "gated")])
    await goal_until(
        store, goal_id, lambda g: task_status(g, "g") == "awaiting_approval"
    )
    await client.approve(store, "g", by="ana", note="go")
    goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "done"
    assert goal.tasks["g"].result == {"approved": True}


async def test_guardrail_breach_halts_then_resume_finishes(store, settings, engine):
    specs = [spec(f"t{i}") for i in range(5)]
    goal_id = await submit(store, settings, specs, max_tasks=3)
    goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "halted"
    held = [t for t in goal.tasks.values() if t.status == "held"]
    assert held and held[0].held_reason == "max_tasks 4 exceeds 3"
    await client.resume(store, goal_id, {"max_tasks": 10}, by="ana")
    goal = await client.wait_goal(store, goal_id, until=client.FINAL, timeout_s=30)
    assert goal.status == "done"
    assert all(t.status == "done" for t in goal.tasks.values())


async def test_cycle_in_submitted_dag_fails_goal_with_reason(store, settings, engine):
    from blackboard import ids
    from blackboard.log.events import GoalSubmitted, Limits

    # Another client skipped validation: the scheduler refuses it, recorded.
    event = GoalSubmitted(
        event_id=ids.new_id(),
        goal_id=ids.new_id(),
        at=ids.utcnow(),
        actor="rogue",
        text="x",
        limits=Limits(),
        tasks=(spec("a", "echo", "local", "b"), spec("b", "echo", "local", "a")),
    )
    await store.append(event)
    goal = await client.wait_goal(store, event.goal_id, timeout_s=30)
    assert goal.status == "failed"
    assert "dependency cycle: a -> b -> a" in goal.reason
    assert goal.tasks == {}


async def test_side_effect_performed_once(store, settings, engine, tmp_path):
    marker = tmp_path / "effect"
    goal_id = await submit(
        store, settings, [spec("e", "effectful", marker=str(marker))]
    )
    goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "done", goal.reason
    assert marker.read_text() == "x"
    assert goal.tasks["e"].result == {"first": "written", "second": "written"}


async def test_cancel_cancels_open_tasks(store, settings, engine):
    goal_id = await submit(store, settings, [spec("s", "slow", seconds=30)])
    await goal_until(store, goal_id, lambda g: task_status(g, "s") == "claimed")
    await client.cancel(store, goal_id, by="ana")
    goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "cancelled"
    assert goal.tasks["s"].status == "cancelled"


async def test_exhausted_attempts_fail_the_task_for_good(store, settings, engine):
    goal_id = await submit(store, settings, [spec("b", "busy")])
    goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "failed"
    task = goal.tasks["b"]
    assert task.status == "failed" and task.failures == 3
    assert "provider busy (attempt 3 of 3)" in (task.error or "")
    claims = [e for e in await events_of(store, goal_id) if isinstance(e, TaskClaimed)]
    assert [c.attempt for c in claims] == [1, 2, 3]


async def test_unavailable_log_is_retried_without_spending_attempts(
    store, settings, engine
):
    import msgspec

    from blackboard.log.events import TaskFailed

    one = msgspec.structs.replace(spec("t", "log_blip"), max_attempts=1)
    goal_id = await submit(store, settings, [one])
    goal = await client.wait_goal(store, goal_id, timeout_s=60)
    assert goal.status == "done", goal.reason  # one attempt allowed, three made
    fails = [e for e in await events_of(store, goal_id) if isinstance(e, TaskFailed)]
    assert [(f.transient, f.retryable) for f in fails] == [(True, True)] * 2
    assert goal.tasks["t"].result == {"attempt": 3}


async def test_ready_work_is_dispatched_by_priority(store, settings):
    """Work that becomes ready together reaches the lane queue by priority: the
    goal's, then the task's, then creation order."""
    import msgspec

    from blackboard.runtime.inprocess import running
    from tests.engine_handlers import HANDLERS

    prios = [0, 5, 1, 9, 0, 3]
    specs = [msgspec.structs.replace(spec(f"t{i}", "echo"), priority=p)
             for i, p in enumerate(prios)]
    async with running(store, settings, HANDLERS, lanes=[]):  # no worker yet
        goal_id = await submit(store, settings, specs)
        await goal_until(
            store,
            goal_id,
            lambda g: len(g.tasks) == len(specs)
            and all(t.status == "ready" for t in g.tasks.values()),
        )
        async with running(store, settings, HANDLERS, scheduler=False,
                           lanes=["local"], concurrency=1):
            goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "done"
    claims = [e.task_id for e in await events_of(store, goal_id)
              if isinstance(e, TaskClaimed)]
    assert claims == ["t3", "t1", "t5", "t2", "t0", "t4"]
