"""Bad input everywhere we read: each gets a recorded reason or a clear error,
nothing crashes, nothing is lost.

pytestmark = pytest.mark.integration


Messages: garbage, truncated and oversized bodies on the event and work
subjects while goals run. Model output: empty, invalid, huge, wrong types,
cyclic and dangling plans, unknown lanes and task types. (Invalid CLI input:
tests/e2e/test_cli_basics.py and below.)
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from agents.handlers import Agents
from blackboard.engine import control as client
from blackboard.engine.handlers import BUILTIN
from blackboard.log.events import ModelCalled, TaskCompleted, TaskFailed
from blackboard.runtime import config
from blackboard.runtime.inprocess import running
from tests.e2e.test_cli_basics import bb
from tests.engine.conftest import events_of, spec, submit

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from blackboard.log.store import JetStreamEventStore


def scripted(tmp_path: Path, rules: list[dict[str, Any]]) -> config.Settings:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"rules": rules}))
    return config.load(
        env={"BB_SCRIPTED": "1", "BB_SCRIPT": str(script), "BB_LEASE_SECONDS": "5"},
        path=None,
    )


async def run(store, s: config.Settings, specs, text="bad input goal"):
    agents = Agents(s)
    try:
        async with running(store, s, {**BUILTIN, **agents.handlers()}):
            goal_id = await submit(store, s, specs, text)
            goal = await client.wait_goal(store, goal_id, timeout_s=60)
    finally:
        await agents.aclose()
    return goal, await events_of(store, goal_id)


def failure(events: list[Any], task_id: str = "plan") -> str:
    (f,) = [e for e in events if isinstance(e, TaskFailed) and e.task_id == task_id]
    assert not f.retryable
    return f.error


# --- messages -------------------------------------------------------------


@pytest.fixture
async def engine(store: JetStreamEventStore, tmp_path: Path) -> AsyncIterator[config.Settings]:
    s = scripted(tmp_path, [{"task_type": "execute", "reply": "ok"}])
    agents = Agents(s)
    async with running(store, s, {**BUILTIN, **agents.handlers()}):
        yield s
    await agents.aclose()


BAD_BODIES = [
    b"\x00\xffnot json at all",
    b'{"type": "task_completed", "goal_id": "G", "task_id"',  # truncated
    b'{"type": "no_such_event", "event_id": "x"}',
    json.dumps({"type": "task_completed", "event_id": "x", "goal_id": 3}).encode(),
    b"{" + b" " * 900_000 + b"}",  # oversized and still garbage
]


async def test_garbage_on_event_subjects_is_skipped_and_goals_finish(store, engine):
    goal_id = await submit(store, engine, [spec(f"t{i}", "execute", "local", title="t",
                                                 instruction="go") for i in range(5)])
    for i, body in enumerate(BAD_BODIES):
        await store.js.publish(f"bb.in.evt.{goal_id}.t{i}.task_completed", body)
    goal = await client.wait_goal(store, goal_id, timeout_s=60)
    assert goal.status == "done", goal.reason
    bad: list[Any] = []
    envs = [env async for env in store.read(on_bad=bad.append)]
    assert len(bad) == len(BAD_BODIES)
    assert all(b.reason for b in bad)  # each with its reason and sequence
    assert sum(isinstance(e.event, TaskCompleted) for e in envs) == 5


async def test_garbage_on_work_subjects_is_refused_and_work_goes_on(
    store, engine, caplog
):
    for body in (b"garbage", b'{"goal_id": "G", "task_id":', b"{}"):
        await store.js.publish("bb.work.local", body)
    goal_id = await submit(store, engine, [spec("a", "execute", "local", title="t",
                                                 instruction="go")])
    goal = await client.wait_goal(store, goal_id, timeout_s=60)
    assert goal.status == "done", goal.reason
    assert caplog.text.count("dropped malformed work message") == 3


# --- model output ---------------------------------------------------------


def plan_rule(reply: str) -> dict[str, Any]:
    return {"task_type": "plan", "reply": reply}


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("", "the answer was empty"),
        ("here is my plan: first, second", "not valid JSON"),
        ('{"tasks": "many"}', "wrong shape"),
        ('{"tasks": []}', "the plan has no tasks"),
        ('{"tasks": [{"id": "a", "lane": "local", "title": "t", "instruction": "i", '
         '"depends_on": ["b"]}, {"id": "b", "lane": "local", "title": "t", '
         '"instruction": "i", "depends_on": ["a"]}]}', "dependency cycle"),
        ('{"tasks": [{"id": "a", "lane": "local", "title": "t", "instruction": "i", '
         '"depends_on": ["ghost"]}]}', "unknown task 'ghost'"),
        ('{"tasks": [{"id": "a", "lane": "gpu-farm", "title": "t", '
         '"instruction": "i"}]}', "unknown lane(s) gpu-farm"),
        ('{"tasks": [{"id": "a", "type": "deploy", "lane": "local", "title": "t", '
         '"instruction": "i"}]}', "wrong shape"),
        ('{"tasks": [{"id": "a.b", "lane": "local", "title": "t", '
         '"instruction": "i"}]}', "task id"),
    ],
)
async def test_bad_plans_fail_with_the_reason_after_one_repair(
    store, tmp_path, reply, reason
):
    goal, events = await run(store, scripted(tmp_path, [plan_rule(reply)]), [])
    assert goal.status == "failed"
    error = failure(events)
    assert "unusable" in error and reason in error
    calls = [e for e in events if isinstance(e, ModelCalled)]
    assert len(calls) == 2  # the answer and its one repair, both recorded
    assert calls[1].prompt_version.endswith("+repair/v1")


async def test_huge_answer_is_recorded_whole_through_the_object_store(store, tmp_path):
    huge = "x" * 1_500_000
    s = scripted(tmp_path, [{"task_type": "execute", "reply": huge}])
    goal, events = await run(
        store, s, [spec("a", "execute", "local", title="t", instruction="go")]
    )
    assert goal.status == "done", goal.reason
    (call,) = [e for e in events if isinstance(e, ModelCalled)]
    assert call.text == huge
    assert goal.tasks["a"].result["output"] == huge


async def test_wrong_types_in_a_review_fail_it_clearly(store, tmp_path):
    s = scripted(tmp_path, [
        {"task_type": "execute", "reply": "done"},
        {"task_type": "review", "reply": '{"verdict": "maybe", "fixups": 3}'},
    ])
    goal, events = await run(store, s, [
        spec("a", "execute", "local", title="t", instruction="go"),
        spec("r", "review", "frontier", "a", instruction="check"),
    ])
    assert goal.status == "failed"
    assert "review: the model's answer was unusable" in failure(events, "r")


async def test_need_that_asks_for_itself_again_and_again_stops(store, tmp_path):
    s = scripted(tmp_path, [
        {"task_type": "execute", "contains": "supply it", "reply": "Here it is."},
        {"task_type": "execute", "reply": "NEED: the same thing again"},
    ])
    goal, events = await run(
        store, s, [spec("a", "execute", "local", title="t", instruction="go")]
    )
    assert goal.status == "failed"
    assert "NEED again after 2 escalation(s)" in failure(events, "a")
    assert len(goal.tasks) == 3  # the task and its two answered escalations


# --- CLI ------------------------------------------------------------------


def test_cli_bad_input_is_one_line_and_non_zero(cli_env, tmp_path):
    dag = tmp_path / "dag.json"
    for args, says in [
        (["submit", "   "], "empty"),
        (["submit", "x", "--max-tasks", "0"], "must be positive"),
        (["status", "NOSUCHGOAL"], "no goal"),
        (["approve", "NOSUCHTASK"], "no task"),
        (["worker", "--lane", "moon"], "unknown lane"),
        (["worker", "--lane", "local", "--handlers", "nomodule"], "module:attribute"),
    ]:
        r = bb(args, cli_env)
        assert r.returncode != 0, args
        assert "Traceback" not in r.stderr, args
        assert says in r.stderr, (args, r.stderr)
    dag.write_text('{"tasks": [{"task_id": "a", "type": "x", "lane": "local", '
                   '"depends_on": ["a"]}]}')
    r = bb(["submit", "x", "--dag", str(dag)], cli_env)
    assert r.returncode == 2 and "dependency cycle" in r.stderr
    env = {k: v for k, v in cli_env.items() if k != "BB_NATS_URL"}
    r = bb(["demo", "--detach"], env)
    assert r.returncode == 1 and "no deployment" in r.stderr
    bad_toml = tmp_path / "bb.toml"
    bad_toml.write_text("[lanes.local]\nconcurrency = 'many'\n")
    r = bb(["status", "--config", str(bad_toml)], cli_env)
    assert r.returncode == 2 and "invalid settings" in r.stderr


# --- ids that become subject tokens ------------------------------------------

HOSTILE_IDS = [
    ("x" * 4100, "at most 64"),
    ("_", "reserved"),
    ("a.b", "letters, digits"),
    ("a b", "letters, digits"),
]


@pytest.mark.parametrize(("task_id", "says"), HOSTILE_IDS)
def test_hostile_task_id_in_a_dag_is_refused_at_the_door(
    cli_env, tmp_path, task_id, says
):
    dag = tmp_path / "dag.json"
    dag.write_text(json.dumps([{"task_id": task_id, "type": "echo", "lane": "local"}]))
    r = bb(["submit", "x", "--dag", str(dag)], cli_env)
    assert r.returncode != 0
    assert says in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_hostile_lane_in_a_dag_is_refused_at_the_door(cli_env, tmp_path):
    dag = tmp_path / "dag.json"
    dag.write_text(json.dumps([{"task_id": "t", "type": "echo", "lane": "lo.cal"}]))
    r = bb(["submit", "x", "--dag", str(dag)], cli_env)
    assert r.returncode != 0 and "lane" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(("task_id", "says"), HOSTILE_IDS[:2])
async def test_hostile_dag_written_past_the_door_fails_that_goal_only(
    store, engine, task_id, says
):
    """Another client writes the DAG straight to the log: the scheduler fails
    that goal with the reason, and goes on serving the next one."""
    from blackboard import ids
    from blackboard.log.events import GoalSubmitted, TaskSpec

    bad = GoalSubmitted(
        event_id=ids.new_id(),
        goal_id=ids.new_id(),
        at=ids.utcnow(),
        actor="foreign",
        text="hostile",
        tasks=(TaskSpec(task_id=task_id, type="echo", lane="local"),),
    )
    await store.append(bad)
    goal = await client.wait_goal(store, bad.goal_id, timeout_s=30)
    assert goal.status == "failed"
    assert says in goal.reason
    ok = await submit(store, engine, [spec("fine", "execute", "local", title="t",
                                          instruction="go")])
    assert (await client.wait_goal(store, ok, timeout_s=30)).status == "done"


async def test_store_refuses_an_event_that_could_never_be_written(store):
    from blackboard import ids
    from blackboard.errors import InvalidEvent
    from tests import factories as f

    with pytest.raises(InvalidEvent, match="subject token"):
        await store.append(f.created(ids.new_id(), "_"))
    with pytest.raises(InvalidEvent, match="characters"):
        await store.append(f.created(ids.new_id(), "t" * 4100))
    # The connection survived: the server never saw the line.
    await store.append(f.goal(ids.new_id()))


@pytest.mark.parametrize("child_id", ["_", "c" * 200])
async def test_handler_spawning_a_hostile_id_fails_its_task_once(store, child_id):
    from tests.engine.conftest import engine_settings
    from tests.engine_handlers import HANDLERS

    s = engine_settings()
    async with running(store, s, HANDLERS):
        goal_id = await submit(store, s, [spec("p", "bad_spawn", child_id=child_id)])
        goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "failed"
    events = await events_of(store, goal_id)
    fails = [e for e in events if isinstance(e, TaskFailed)]
    assert len(fails) == 1 and "spawn refused" in fails[0].error
