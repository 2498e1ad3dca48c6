"""The agents against a model that really generates: SmolLM2-135M on llama.cpp.

The local lane talks to llama.cpp's OpenAI-compatible server through the real
``openai`` SDK, as it would to vLLM or Ollama. What the model answers is not
known in advance, so each test asserts what must hold either way: the goal
ends in a defined state, a bad answer gets its one repair or redo turn and a
recorded reason, and the log holds the server's own token counts.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import pytest

from agents import local_model
from agents.answers import InvalidAnswer, ReviewAnswer, decode
from agents.handlers import Agents
from blackboard.engine import control as client
from blackboard.engine.handlers import BUILTIN
from blackboard.log.events import (
    ModelCalled,
    TaskCompleted,
    TaskFailed,
    ToolCallStarted,
)
from blackboard.runtime import config
from blackboard.runtime.inprocess import running
from replay import verify
from tests.e2e.test_cli_basics import bb
from tests.engine.conftest import spec, submit

if TYPE_CHECKING:
    from pathlib import Path

    from blackboard.log.store import JetStreamEventStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

GOAL = "Add structured audit logging to every write endpoint of the orders service"


def settings_for(url: str, tmp_path: Path, **local: Any) -> config.Settings:
    """The demo's real-local settings, the local lane adjusted by ``local``."""
    s = local_model.real_local_settings(config.load(env={}, path=None), url)
    s.data_dir = str(tmp_path / "bb")
    # No escalation unless a test asks: what the local model did stays its own.
    s.lanes["local"].escalate_to = None
    for key, value in local.items():
        setattr(s.lanes["local"], key, value)
    return s


async def run_goal(
    store: JetStreamEventStore, s: config.Settings, specs: list[Any]
) -> tuple[Any, list[Any]]:
    agents = Agents(s)
    try:
        async with running(
            store, s, {**BUILTIN, **agents.handlers()}, concurrency=2, agent=agents
        ):
            goal_id = await submit(store, s, specs, GOAL)
            goal = await client.wait_goal(store, goal_id, timeout_s=500)
    finally:
        await agents.aclose()
    return goal, [env.event async for env in store.read_goal(goal_id)]


def local_calls(events: list[Any]) -> list[ModelCalled]:
    """The local lane's calls, each checked to be one the server answered."""
    calls = [e for e in events if isinstance(e, ModelCalled) and e.lane == "local"]
    for call in calls:
        assert_real(call)
    return calls


def assert_real(call: ModelCalled) -> None:
    """A call the server answered: its own token counts, a real latency."""
    assert (call.provider, call.model, call.scripted) == (
        "local",
        local_model.MODEL,
        False,
    )
    usage = call.response["usage"]
    assert call.tokens_in == usage["prompt_tokens"] > 0
    assert call.tokens_out == usage["completion_tokens"] > 0
    assert call.latency_ms > 0


def ended(goal: Any, task: str, events: list[Any]) -> TaskCompleted | TaskFailed:
    """The task's last outcome: done or failed, never left hanging."""
    assert goal.status in ("done", "failed"), goal.reason
    outcomes = [
        e
        for e in events
        if isinstance(e, TaskCompleted | TaskFailed) and e.task_id == task
    ]
    assert len(outcomes) == 1
    return outcomes[0]


async def test_an_execute_task_answered_by_the_model(store, model_server, tmp_path):
    s = settings_for(model_server.base_url, tmp_path)
    task = spec(
        "colours",
        "execute",
        "local",
        title="name the primary colours of light",
        instruction="Name the three primary colours of light, comma separated.",
    )
    goal, events = await run_goal(store, s, [task])
    calls = local_calls(events)
    outcome = ended(goal, "colours", events)
    assert calls[0].prompt_version == "execute/v3"
    if isinstance(outcome, TaskCompleted):
        assert outcome.result["output"] == calls[-1].text
    else:
        # Both the answer and its redo were unusable: the reason says why.
        assert "not what the task promises" in outcome.error
        assert [c.prompt_version for c in calls] == [
            "execute/v3",
            "execute/v3+redo/v1",
        ]


async def test_a_json_answer_gets_its_repair_turn(store, model_server, tmp_path):
    s = settings_for(model_server.base_url, tmp_path)
    task = spec(
        "check",
        "review",
        "local",
        title="review",
        instruction="Check that POST /orders emits one audit event per write.",
    )
    goal, events = await run_goal(store, s, [task])
    calls = local_calls(events)
    outcome = ended(goal, "check", events)
    first_error: InvalidAnswer | None = None
    try:
        decode(calls[0].text, ReviewAnswer)
    except InvalidAnswer as e:
        first_error = e
    if first_error is None:
        assert len(calls) == 1 and isinstance(outcome, TaskCompleted)
        return
    # Invalid JSON: the model was shown what was wrong, once.
    assert calls[1].prompt_version == "review/v1+repair/v1"
    assert str(first_error) in calls[1].request["messages"][-1]["content"]
    if isinstance(outcome, TaskFailed):
        assert "unusable, and again after one repair" in outcome.error


async def test_a_tool_offered_to_the_model(store, model_server, tmp_path):
    # The lane offers the workspace tools and the task asks for a file.
    s = settings_for(model_server.base_url, tmp_path, tools=["workspace.*"])
    task = spec(
        "patch",
        "execute",
        "local",
        title="add audit logging to POST /orders",
        instruction="Emit audit.emit(event) after the commit in create_order().",
        artifact="patches/post-orders.patch",
    )
    goal, events = await run_goal(store, s, [task])
    calls = local_calls(events)
    offered = {t["name"] for t in calls[0].request["tools"]}
    assert "workspace.write" in offered
    assert (
        "workspace file `patches/post-orders.patch`"
        in (calls[0].request["messages"][0]["content"])
    )
    outcome = ended(goal, "patch", events)
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    if started:
        # The model called a tool: each call was recorded before it ran.
        assert all(e.task_id == "patch" for e in started)
    if isinstance(outcome, TaskFailed):
        # It made no call that wrote a patch: told so once, then the task
        # failed (no escalate_to here), saying what was missing.
        assert "patches/post-orders.patch" in outcome.error
        assert "workspace.write" in calls[1].request["messages"][-1]["content"]


async def test_an_answer_cut_off_at_max_tokens(store, model_server, tmp_path):
    s = settings_for(model_server.base_url, tmp_path, max_tokens=4)
    task = spec(
        "short",
        "execute",
        "local",
        title="explain audit logging",
        instruction="Explain in three paragraphs why audit logs must be immutable.",
    )
    goal, events = await run_goal(store, s, [task])
    calls = local_calls(events)
    assert len(calls) == 2
    for call in calls:
        assert call.request["max_tokens"] == 4
        assert call.stop_reason == "length"
        assert call.tokens_out == 4
    assert (
        "cut off at the max_tokens limit"
        in (calls[1].request["messages"][-1]["content"])
    )
    outcome = ended(goal, "short", events)
    assert isinstance(outcome, TaskFailed)
    assert "cut off at the max_tokens limit" in outcome.error


async def test_verify_needs_no_server(store, model_log, tmp_path):
    from tests.local_model.conftest import need_model

    need_model()
    server = local_model.LocalModelServer(log=model_log)
    server.start()
    try:
        s = settings_for(server.base_url, tmp_path)
        task = spec(
            "one",
            "execute",
            "local",
            title="name a colour",
            instruction="Name one colour.",
        )
        goal, _ = await run_goal(store, s, [task])
    finally:
        server.stop()
    assert not server.answers()
    envs = [env async for env in store.read_goal(goal.goal_id)]
    report = await verify.verify(s, envs, goal.goal_id)
    assert report.divergences == []
    assert report.tasks == 1


@pytest.mark.timeout(1300)
def test_the_demo_with_a_real_local_lane(tmp_path: Path) -> None:
    from tests.local_model.conftest import need_model

    need_model()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BB_", "OTEL_"))}
    env["BB_DATA_DIR"] = str(tmp_path / "bb")
    # About 6.5 minutes on 2 cores: 46 real calls, one at a time.
    r = bb(["demo", "--real-local", "--json"], env, timeout=1200)
    assert r.returncode in (0, 1), r.stderr
    out = json.loads(r.stdout)
    # Which lanes were real is said, not hidden behind "scripted models".
    assert out["lanes"] == {"frontier": "scripted", "local": "real"}
    local = [u for u in out["usage"] if u["lane"] == "local"]
    assert local and not local[0]["scripted"] and local[0]["tokens_in"] > 0
    # A defined end: done (the frontier took over what the model could not
    # do) or failed with a reason; never left running.
    assert out["status"] in ("done", "failed")
    if out["status"] == "failed":
        assert out["reason"]
