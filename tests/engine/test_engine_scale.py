"""Fan-out/fan-in and long chains complete, in dependency order."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from blackboard.engine import control as client
from blackboard.log.events import TaskCompleted, TaskReady
from tests.engine.conftest import spec, submit

if TYPE_CHECKING:
    from blackboard.log.store import JetStreamEventStore

# Processes and scale need a real server: these run on JetStream only.
pytestmark = pytest.mark.integration


@pytest.fixture
def store(jetstream_store: JetStreamEventStore) -> JetStreamEventStore:
    return jetstream_store


async def test_fan_out_500_then_fan_in(store, settings, engine):
    goal_id = await submit(
        store,
        settings,
        [spec("root", "fanout", "local", n=500), spec("last", "echo", "local", "root")],
    )
    goal = await client.wait_goal(store, goal_id, timeout_s=90)
    assert goal.status == "done", goal.reason
    assert goal.tasks["root"].result == {"children": 500}
    assert len(goal.tasks) == 502
    assert all(t.status == "done" for t in goal.tasks.values())
    last, root = goal.tasks["last"].finished_at, goal.tasks["root"].finished_at
    assert last is not None and root is not None and last >= root


async def test_chain_of_200_runs_in_order(store, settings, engine):
    specs = [spec("t0")] + [
        spec(f"t{i}", "echo", "local", f"t{i - 1}") for i in range(1, 200)
    ]
    goal_id = await submit(store, settings, specs)
    goal = await client.wait_goal(store, goal_id, timeout_s=90)
    assert goal.status == "done", goal.reason
    events = [env.event async for env in store.read_goal(goal_id)]
    done = [e.task_id for e in events if isinstance(e, TaskCompleted)]
    assert done == [f"t{i}" for i in range(200)]
    readies = [(e.task_id, e.dispatch) for e in events if isinstance(e, TaskReady)]
    assert len(readies) == len(set(readies)) == 200


async def test_goal_larger_than_one_read_batch_runs_every_task(store, settings, engine):
    # The scheduler reads the log in batches of 500 and creates a goal's tasks
    # in atomic batches of 1,000: every one of them must still be dispatched.
    specs = [spec(f"t{i}", "noop") for i in range(1_200)]
    goal_id = await submit(store, settings, specs)
    goal = await client.wait_goal(store, goal_id, timeout_s=90)
    assert goal.status == "done", goal.reason
    assert sum(t.status == "done" for t in goal.tasks.values()) == 1_200
