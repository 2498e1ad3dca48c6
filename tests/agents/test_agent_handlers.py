"""The agent handlers on the real engine, calling real SDKs over HTTP.

A scheduler and workers run in-process against a real nats-server; the
frontier lane is the Anthropic SDK and the local lane the OpenAI SDK, both
pointed at a fake provider that speaks their APIs. What is asserted is what a
user reads in the log: ModelCalled events, task results and failures.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from agents.handlers import Agents
from agents.lanes import Lanes
from blackboard.engine import control as client
from blackboard.engine.handlers import BUILTIN
from blackboard.log.events import (
    ModelCalled,
    SideEffectCompleted,
    TaskCompleted,
    TaskFailed,
    ToolCallFinished,
)
from blackboard.runtime import config
from blackboard.runtime.inprocess import running
from tests.engine.conftest import events_of, spec, submit
from tests.fakes.providers import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    FakeProviderServer,
    Usage,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from blackboard.log.store import JetStreamEventStore

pytestmark = pytest.mark.integration


PRICES = {
    "claude-main": {
        "input_per_mtok": 3.0,
        "output_per_mtok": 15.0,
        "cached_per_mtok": 0.3,
    },
    "claude-backup": {
        "input_per_mtok": 1.0,
        "output_per_mtok": 5.0,
        "cached_per_mtok": 0.1,
    },
    "local-main": {
        "input_per_mtok": 0.1,
        "output_per_mtok": 0.2,
        "cached_per_mtok": 0.0,
    },
}


@pytest.fixture
def fake() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(text="done") as server:
        yield server


@pytest.fixture
def agent_settings(fake: FakeProviderServer) -> config.Settings:
    env = {"BB_LEASE_SECONDS": "5", "BB_LOCK_TTL_SECONDS": "2"}
    s = config.load(env=env, path=None)
    s.engine.backoff_base_s = 0.05
    s.prices = PRICES
    s.lanes = {
        "frontier": config.LaneSettings(
            provider="anthropic",
            model="claude-main",
            base_url=fake.anthropic_base_url,
            fallbacks=["claude-backup"],
            max_retries=1,
            concurrency=2,
        ),
        "local": config.LaneSettings(
            provider="openai-compatible",
            model="local-main",
            base_url=fake.openai_base_url,
            max_retries=1,
            concurrency=2,
        ),
    }
    return s


@pytest.fixture
async def agents(
    store: JetStreamEventStore, agent_settings: config.Settings
) -> AsyncIterator[Agents]:
    lanes = Lanes(agent_settings, env={"ANTHROPIC_API_KEY": "sk-ant-test"})
    agents = Agents(agent_settings, lanes)
    handlers = {**BUILTIN, **agents.handlers()}
    async with running(store, agent_settings, handlers, concurrency=2):
        yield agents
    await agents.aclose()


def calls(events: list[Any]) -> list[ModelCalled]:
    return [e for e in events if isinstance(e, ModelCalled)]


async def run_goal(store, settings, specs, text="test goal") -> tuple[Any, list[Any]]:
    goal_id = await submit(store, settings, specs, text)
    goal = await client.wait_goal(store, goal_id, timeout_s=60)
    return goal, await events_of(store, goal_id)


PATCH = "--- a/app.py\n+++ b/app.py\n@@ -1 +1,2 @@\n x = 1\n+audit(x)\n"
"""A small unified diff: what a ``.patch`` artifact must hold."""


def execute(tid: str, lane: str, *deps: str, **payload: Any):
    return spec(
        tid, "execute", lane, *deps, title=f"task {tid}", instruction="do it", **payload
    )


async def test_tokens_and_cost_recorded_exactly(store, agent_settings, agents, fake):
    fake.enqueue(text="frontier answer", usage=Usage(1200, 300, 4000))
    fake.enqueue(text="local answer", usage=Usage(800, 100, 50))
    goal, events = await run_goal(
        store, agent_settings, [execute("a", "frontier"), execute("b", "local", "a")]
    )
    assert goal.status == "done", goal.reason
    a, b = calls(events)
    # By hand, USD per million tokens: 1200*3 + 300*15 + 4000*0.3 = 9300
    assert (a.provider, a.model, a.lane) == ("anthropic", "claude-main", "frontier")
    assert (a.tokens_in, a.tokens_out, a.tokens_cached, a.cost_usd) == (
        1200,
        300,
        4000,
        0.0093,
    )
    # 800*0.1 + 100*0.2 + 50*0 = 100
    assert (b.provider, b.model, b.lane) == ("local", "local-main", "local")
    assert (b.tokens_in, b.tokens_out, b.tokens_cached, b.cost_usd) == (
        800,
        100,
        50,
        0.0001,
    )
    assert a.prompt_version == "execute/v3" and a.text == "frontier answer"
    assert a.request["messages"][0]["content"].startswith("Goal: test goal")
    # The local task was told what its dependency produced.
    assert "task a: frontier answer" in b.request["messages"][0]["content"]
    assert goal.tokens == 1200 + 300 + 4000 + 800 + 100 + 50
    assert goal.cost_usd == pytest.approx(0.0094)
    assert goal.tasks["b"].result == {"title": "task b", "output": "local answer"}
    assert fake.paths() == [ANTHROPIC_PATH, OPENAI_PATH]


async def test_429_with_retry_after_backs_off_then_succeeds(
    store, agent_settings, agents, fake
):
    fake.enqueue(429, headers={"retry-after": "0.3"}, message="slow down")
    fake.enqueue(text="after the wait")
    goal, events = await run_goal(store, agent_settings, [execute("a", "frontier")])
    assert goal.status == "done", goal.reason
    first, second = calls(events)
    assert first.error is not None and "slow down" in first.error
    assert (first.call_index, second.call_index) == (0, 1)
    assert second.error is None and second.model == "claude-main"
    assert (second.at - first.at).total_seconds() >= 0.3
    assert goal.tasks["a"].result["output"] == "after the wait"


async def test_500_retries_then_falls_back_to_the_next_model(
    store, agent_settings, agents, fake
):
    fake.enqueue(500, message="boom 1")
    fake.enqueue(500, message="boom 2")
    fake.enqueue(text="from the backup")
    goal, events = await run_goal(store, agent_settings, [execute("a", "frontier")])
    assert goal.status == "done", goal.reason
    recorded = calls(events)
    assert [(c.model, c.error is None) for c in recorded] == [
        ("claude-main", False),
        ("claude-main", False),
        ("claude-backup", True),
    ]
    assert fake.models() == ["claude-main", "claude-main", "claude-backup"]
    assert goal.tasks["a"].result["output"] == "from the backup"
    # The backup's own price: 10*1.0 + 5*5.0 per million
    assert recorded[-1].cost_usd == pytest.approx(0.000035)


async def test_400_fails_the_task_for_good_with_the_providers_message(
    store, agent_settings, agents, fake
):
    fake.enqueue(400, message="max_tokens: must be at most 4096")
    goal, events = await run_goal(store, agent_settings, [execute("a", "frontier")])
    assert goal.status == "failed"
    (failed,) = [e for e in events if isinstance(e, TaskFailed)]
    assert "max_tokens: must be at most 4096" in failed.error
    assert not failed.retryable
    (call,) = calls(events)
    assert call.error is not None and "max_tokens: must be at most 4096" in call.error
    assert fake.models() == ["claude-main"]  # no fallback for a request that is wrong


PLAN = {
    "tasks": [
        {"id": "one", "lane": "local", "title": "first", "instruction": "do one"},
        {
            "id": "two",
            "lane": "local",
            "title": "second",
            "instruction": "do two",
            "depends_on": ["one"],
        },
    ]
}


async def test_malformed_plan_is_repaired_once(store, agent_settings, agents, fake):
    fake.enqueue(text="Sure! Here is the plan: {tasks: [one, two]}")
    fake.enqueue(text="```json\n" + json.dumps(PLAN) + "\n```")
    fake.enqueue(text="did one")
    fake.enqueue(text="did two")
    fake.enqueue(text=json.dumps({"done": True, "summary": "both done"}))
    goal, events = await run_goal(store, agent_settings, [], text="do two things")
    assert goal.status == "done", goal.reason
    plan_calls = [c for c in calls(events) if c.task_id == "plan"]
    assert [c.prompt_version for c in plan_calls] == ["plan/v1", "plan/v1+repair/v1"]
    repair_msgs = plan_calls[1].request["messages"]
    assert [m["role"] for m in repair_msgs] == ["user", "assistant", "user"]
    assert "not valid JSON" in repair_msgs[2]["content"]
    types = sorted(t.task_type for t in goal.tasks.values())
    assert types == ["aggregate", "execute", "execute", "plan"]
    (agg,) = [t for t in goal.tasks.values() if t.task_type == "aggregate"]
    (two,) = [
        t for t in goal.tasks.values() if t.result and t.result.get("title") == "second"
    ]
    assert agg.depends_on == (two.task_id,)
    assert goal.summary == "both done"


async def test_plan_invalid_twice_fails_clearly_with_the_output_recorded(
    store, agent_settings, agents, fake
):
    bad = {"tasks": [{"id": "x", "lane": "moon", "title": "t", "instruction": "i"}]}
    fake.enqueue(text=json.dumps(bad))
    fake.enqueue(text=json.dumps(bad))
    goal, events = await run_goal(store, agent_settings, [], text="go to the moon")
    assert goal.status == "failed"
    (failed,) = [e for e in events if isinstance(e, TaskFailed)]
    assert failed.task_id == "plan" and not failed.retryable
    assert "unusable" in failed.error and "unknown lane(s) moon" in failed.error
    assert [c.text for c in calls(events)] == [json.dumps(bad)] * 2


async def test_need_spawns_a_frontier_child_and_the_parent_completes_after_it(
    store, agent_settings, agents, fake
):
    fake.enqueue(text="NEED: the name of the audit table")  # local, first run
    fake.enqueue(text="It is audit_log.")  # frontier child
    fake.enqueue(text="Wrote to audit_log.")  # local, second run
    goal, events = await run_goal(store, agent_settings, [execute("a", "local")])
    assert goal.status == "done", goal.reason
    parent = goal.tasks["a"]
    (child_id,) = parent.children
    child = goal.tasks[child_id]
    assert (child.lane, child.task_type, child.parent_id, child.depth) == (
        "frontier",
        "execute",
        "a",
        1,
    )
    assert parent.result["output"] == "Wrote to audit_log."
    assert child.finished_at <= parent.finished_at
    last = calls(events)[-1]
    assert last.task_id == "a"
    assert "Answers to what you asked:" in last.request["messages"][0]["content"]
    assert "It is audit_log." in last.request["messages"][0]["content"]
    completed = [e.task_id for e in events if isinstance(e, TaskCompleted)]
    assert completed == [child_id, "a"]


async def test_need_asked_again_and_again_fails_instead_of_looping(
    store, agent_settings, agents, fake
):
    for _ in range(3):
        fake.enqueue(text="NEED: everything")  # the local task
        fake.enqueue(text="Here it is.")  # the frontier answer
    goal, events = await run_goal(store, agent_settings, [execute("a", "local")])
    assert goal.status == "failed"
    assert len(goal.tasks["a"].children) == 2
    (failed,) = [e for e in events if isinstance(e, TaskFailed) and e.task_id == "a"]
    assert "NEED again after 2 escalation(s)" in failed.error


async def test_artifact_is_written_once_as_a_recorded_side_effect(
    store, agent_settings, agents, fake, tmp_path
):
    agent_settings.data_dir = str(tmp_path / "data")
    # A lane that offers no tools: the handler writes the artifact itself.
    agent_settings.lanes["local"].tools = []
    fake.enqueue(text=PATCH)
    goal, events = await run_goal(
        store, agent_settings, [execute("a", "local", artifact="patches/a.patch")]
    )
    assert goal.status == "done", goal.reason
    path = tmp_path / "data" / "artifacts" / goal.goal_id / "patches" / "a.patch"
    assert path.read_text() == PATCH
    assert goal.tasks["a"].result["artifact"]["bytes"] == len(PATCH)
    assert list(goal.tasks["a"].effects.values()) == ["completed"]
    # What the file held before is recorded, for compensation, and kept out of
    # the task's result (which later prompts quote).
    [done] = [e for e in events if isinstance(e, SideEffectCompleted)]
    assert done.result["previous"] == {"existed": False, "content": None,
                                       "sha256": None}
    assert "previous" not in goal.tasks["a"].result["artifact"]


async def test_an_agent_that_can_write_delivers_the_artifact_through_the_workspace(
    store, agent_settings, agents, fake, tmp_path
):
    agent_settings.data_dir = str(tmp_path / "data")
    fake.enqueue_tool_calls(
        [("call_1", "workspace.write", {"path": "patches/a.patch", "content": PATCH})]
    )
    fake.enqueue(text="wrote patches/a.patch")
    goal, events = await run_goal(
        store, agent_settings, [execute("a", "local", artifact="patches/a.patch")]
    )
    assert goal.status == "done", goal.reason
    path = tmp_path / "data" / "workspaces" / goal.goal_id / "patches" / "a.patch"
    assert path.read_text() == PATCH
    assert goal.tasks["a"].result["artifact"] == {
        "path": "patches/a.patch",
        "in": "workspace",
    }
    assert goal.tasks["a"].effects == {}  # the handler wrote nothing itself
    first, second = calls(events)
    # The model was asked to write it, offered the tool under a name the API
    # takes, and shown the tool's result on the second turn.
    assert "workspace file `patches/a.patch`" in first.request["messages"][0]["content"]
    assert any(t["name"] == "workspace.write" for t in first.request["tools"])
    assert second.request["messages"][-1]["tool_results"][0]["call_id"] == "call_1"
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert [(f.tool, f.error, f.effect) for f in finished] == [
        ("workspace.write", None, "reversible")
    ]


async def test_max_turns_halts_the_goal_and_resume_goes_on_without_asking_again(
    store, agent_settings, agents, fake, tmp_path
):
    agent_settings.data_dir = str(tmp_path / "data")
    for n in (1, 2):
        fake.enqueue_tool_calls([(f"call_{n}", "workspace.list", {"path": "."})])
    fake.enqueue(text="nothing to do")
    goal_id = await submit(
        store, agent_settings, [execute("a", "local")], "test goal", max_turns=2
    )
    halted = await client.wait_goal(store, goal_id, timeout_s=60)
    assert (halted.status, halted.halted_by) == ("halted", "max_turns")
    assert halted.tasks["a"].status == "held"
    assert "max_turns 2 reaches its limit 2" in halted.tasks["a"].held_reason
    assert len(fake.requests) == 2  # both answers asked for more tools

    await client.resume(store, goal_id, {"max_turns": 5}, by="test")
    # Halted is not an end here: it was, before the resume.
    goal = await client.wait_goal(store, goal_id, until=client.FINAL, timeout_s=60)
    assert goal.status == "done", goal.reason
    assert goal.tasks["a"].result["output"] == "nothing to do"
    # The resumed run reused both recorded answers: one more request, not three.
    assert len(fake.requests) == 3
    events = await events_of(store, goal_id)
    assert len(calls(events)) == 3
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert [f.call_id for f in finished] == ["call_1", "call_2"]


async def test_a_tool_past_its_timeout_fails_the_call_not_the_task(
    store, agent_settings, agents, fake
):
    from agents.tools.python import python_tools

    agents.toolbox.registry.add(python_tools(["tests.agents.ledger_tools:SLOW"]))
    agent_settings.tools.timeout_s = 0.2
    fake.enqueue_tool_calls([("call_1", "python.nap", {"seconds": 30})])
    fake.enqueue(text="gave up on the nap")
    goal, events = await run_goal(store, agent_settings, [execute("a", "local")])
    assert goal.status == "done", goal.reason
    (finished,) = [e for e in events if isinstance(e, ToolCallFinished)]
    assert finished.error == "python.nap took longer than 0.2s"
    # The model was told, and answered without the tool.
    last = calls(events)[-1]
    result = last.request["messages"][-1]["tool_results"][0]
    assert (result["is_error"], result["content"]) == (True, finished.error)


# --- outcome checks: work that is not what the task promised ---------------


def redo_text(call: ModelCalled) -> str:
    """The last user message of a call: the redo turn's text."""
    return str(call.request["messages"][-1]["content"])


async def test_an_answer_that_is_not_a_patch_gets_one_redo_then_is_accepted(
    store, agent_settings, agents, fake, tmp_path
):
    agent_settings.data_dir = str(tmp_path / "data")
    agent_settings.lanes["local"].tools = []
    # What a 135M model answered for real: the task restated, no diff.
    fake.enqueue(text="The task is to add audit logging. Task: task a")
    fake.enqueue(text="```diff\n" + PATCH + "```")
    goal, events = await run_goal(
        store, agent_settings, [execute("a", "local", artifact="patches/a.patch")]
    )
    assert goal.status == "done", goal.reason
    _first, second = calls(events)
    assert second.prompt_version == "execute/v3+redo/v1"
    assert "could not be accepted: the answer is not a patch" in redo_text(second)
    # The redo continues the conversation: the rejected answer is in it.
    assert second.request["messages"][-2]["content"].startswith("The task is to")
    assert goal.tasks["a"].result["output"].startswith("```diff")


async def test_work_unusable_after_its_redo_fails_the_task_with_the_reason(
    store, agent_settings, agents, fake
):
    agent_settings.lanes["local"].tools = []
    fake.enqueue(text="")  # empty
    fake.enqueue(text="task a: do it")  # an echo of the task
    goal, events = await run_goal(
        store, agent_settings, [execute("a", "local", artifact="notes.md")]
    )
    assert goal.status == "failed"
    (failed,) = [e for e in events if isinstance(e, TaskFailed)]
    assert "UnusableAnswer" in failed.error
    assert "only restates the task" in failed.error
    assert "could not be accepted: the answer is empty" in redo_text(calls(events)[1])


async def test_unusable_work_escalates_to_the_configured_lane(
    store, agent_settings, agents, fake, tmp_path
):
    agent_settings.data_dir = str(tmp_path / "data")
    agent_settings.lanes["local"].tools = []
    agent_settings.lanes["frontier"].tools = []
    agent_settings.lanes["local"].escalate_to = "frontier"
    fake.enqueue(text="I will add the logging.")  # local: no patch
    fake.enqueue(text="Sure, here is the plan for it.")  # local redo: none again
    fake.enqueue(text=PATCH)  # frontier: a patch
    goal, events = await run_goal(
        store, agent_settings, [execute("a", "local", artifact="patches/a.patch")]
    )
    assert goal.status == "done", goal.reason
    (child,) = goal.tasks["a"].children
    assert goal.tasks[child].lane == "frontier"
    assert goal.tasks[child].payload["escalated_from"] == "a"
    assert "not a patch" in goal.tasks[child].payload["escalation"]
    result = goal.tasks["a"].result
    assert result["escalated_to"] == child
    assert result["output"] == PATCH
    # The reason is on the log where the task waited for the frontier lane.
    waiting = [e for e in events if type(e).__name__ == "TaskNeedsFollowup"]
    assert waiting and waiting[0].reason.startswith("escalated to frontier: ")
    # Three calls: the local answer, its redo, the frontier's; none repeated
    # when the local task ran again to take the frontier's work.
    assert [c.lane for c in calls(events)] == ["local", "local", "frontier"]


async def test_an_agent_that_does_not_write_its_file_is_told_to(
    store, agent_settings, agents, fake, tmp_path
):
    agent_settings.data_dir = str(tmp_path / "data")
    fake.enqueue(text=PATCH)  # the patch as text: the file is not written
    fake.enqueue_tool_calls(
        [("call_1", "workspace.write", {"path": "./patches/a.patch", "content": PATCH})]
    )
    fake.enqueue(text="written")
    goal, events = await run_goal(
        store, agent_settings, [execute("a", "local", artifact="patches/a.patch")]
    )
    assert goal.status == "done", goal.reason
    redo = calls(events)[1]
    assert "the file `patches/a.patch` was not written" in redo_text(redo)
    assert "workspace.write tool" in redo_text(redo)


async def test_json_work_is_checked_against_its_schema(
    store, agent_settings, agents, fake
):
    agent_settings.lanes["local"].tools = []
    schema = {
        "type": "object",
        "required": ["endpoints"],
        "properties": {"endpoints": {"type": "array", "items": {"type": "string"}}},
    }
    fake.enqueue(text='{"endpoints": "POST /orders"}')
    fake.enqueue(text='{"endpoints": ["POST /orders"]}')
    goal, events = await run_goal(
        store, agent_settings, [execute("a", "local", expects="json", schema=schema)]
    )
    assert goal.status == "done", goal.reason
    assert "does not match its schema at endpoints" in redo_text(calls(events)[1])
