"""Governance on the real engine: the policy, approvals inside a run, budgets.

A scheduler and workers run in-process against a real nats-server; the lanes
are the real Anthropic and OpenAI SDKs pointed at a fake provider. What is
asserted is what a user checks: what the provider received, the log's events,
the goal's end.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import pytest

from agents.handlers import Agents
from agents.lanes import Lanes
from blackboard.engine import control as client
from blackboard.engine import policy
from blackboard.engine import submission as service
from blackboard.engine.handlers import BUILTIN
from blackboard.log.events import (
    BudgetEntry,
    ModelCalled,
    PolicyDecided,
    ToolCallFinished,
)
from blackboard.runtime import config
from blackboard.runtime.inprocess import running
from tests.agents.test_agent_handlers import PRICES, execute
from tests.engine.conftest import events_of
from tests.fakes.providers import FakeProviderServer, Usage
from tests.waiting import goal_until, task_status

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from blackboard.log.events import TaskSpec
    from blackboard.log.store import JetStreamEventStore

pytestmark = pytest.mark.integration


@pytest.fixture
def fake() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(text="done") as server:
        yield server


def make_settings(fake: FakeProviderServer, tmp_path: Any, rules: str = "") -> Any:
    s = config.load(
        env={"BB_LEASE_SECONDS": "5", "BB_LOCK_TTL_SECONDS": "2"}, path=None
    )
    s.engine.backoff_base_s = 0.05
    s.data_dir = str(tmp_path / "data")
    s.prices = PRICES
    s.lanes = {
        "frontier": config.LaneSettings(
            provider="anthropic",
            model="claude-main",
            base_url=fake.anthropic_base_url,
            max_retries=0,
            concurrency=8,
        ),
        "local": config.LaneSettings(
            provider="openai-compatible",
            model="local-main",
            base_url=fake.openai_base_url,
            max_retries=0,
            concurrency=8,
        ),
    }
    if rules:
        import tomllib

        s.policy = policy.parse(tomllib.loads(rules)["policy"], source="test")
    return s


@contextlib.asynccontextmanager
async def deployment(
    store: JetStreamEventStore, settings: Any, concurrency: int = 8
) -> AsyncIterator[Agents]:
    """A scheduler and a worker per lane, in this process, until the block ends."""
    lanes = Lanes(settings, env={"ANTHROPIC_API_KEY": "sk-ant-test"})
    agents = Agents(settings, lanes)
    try:
        async with running(
            store, settings, {**BUILTIN, **agents.handlers()}, concurrency=concurrency
        ):
            yield agents
    finally:
        await agents.aclose()


async def submit(
    store: JetStreamEventStore,
    settings: Any,
    specs: list[TaskSpec],
    tenant: str = "default",
    **limits: Any,
) -> str:
    event = service.goal_submitted(
        settings,
        "test goal",
        specs=specs,
        overrides=limits,
        tenant=tenant,
        submitted_by="test",
    )
    await store.append(event)
    return event.goal_id


def calls(events: list[Any]) -> list[ModelCalled]:
    return [e for e in events if isinstance(e, ModelCalled)]


async def test_a_denied_tool_call_reaches_the_model_as_an_error_and_it_finishes_another_way(
    store, fake, tmp_path
):
    s = make_settings(
        fake,
        tmp_path,
        """
[policy]
[[policy.rules]]
name = "no-writes"
when = { tool = "workspace.write" }
decision = "deny"
reason = "read-only tenant"
""",
    )
    fake.enqueue_tool_calls(
        [("c1", "workspace.write", {"path": "a.txt", "content": "x"})]
    )
    fake.enqueue(text="could not write; here is the text instead")
    async with deployment(store, s):
        goal_id = await submit(store, s, [execute("a", "local")])
        goal = await client.wait_goal(store, goal_id, timeout_s=60)
    assert goal.status == "done", goal.reason
    assert (
        goal.tasks["a"].result["output"] == "could not write; here is the text instead"
    )
    events = await events_of(store, goal_id)
    (finished,) = [e for e in events if isinstance(e, ToolCallFinished)]
    assert finished.refused and "denied by policy" in (finished.error or "")
    assert "rule no-writes" in (finished.error or "")
    (decided,) = [e for e in events if isinstance(e, PolicyDecided)]
    assert (decided.point, decided.subject, decided.decision, decided.rule) == (
        "tool",
        "workspace.write",
        "deny",
        "no-writes",
    )
    assert decided.policy_hash == s.policy.hash
    # The model saw the refusal as the tool's error, and nothing was written.
    result = calls(events)[-1].request["messages"][-1]["tool_results"][0]
    assert result["is_error"] and "denied by policy" in result["content"]
    assert not (tmp_path / "data" / "workspaces" / goal_id / "a.txt").exists()


async def test_a_tenant_forced_to_the_local_lane_never_calls_a_frontier_model(
    store, fake, tmp_path
):
    s = make_settings(
        fake,
        tmp_path,
        """
[policy]
[[policy.rules]]
name = "eu-stays-local"
when = { tenant = "eu-*" }
decision = "allow_with"
lane = "local"
""",
    )
    specs = [
        execute("a", "frontier"),
        execute("b", "frontier", "a"),
        execute("c", "local"),
    ]
    async with deployment(store, s):
        eu = await submit(store, s, specs, tenant="eu-west")
        us = await submit(store, s, [execute("a", "frontier")], tenant="us")
        goal = await client.wait_goal(store, eu, timeout_s=60)
        other = await client.wait_goal(store, us, timeout_s=60)
    assert (goal.status, other.status) == ("done", "done"), goal.reason
    events = await events_of(store, eu)
    assert {c.lane for c in calls(events)} == {"local"}
    assert {c.model for c in calls(events)} == {"local-main"}
    moved = [e for e in events if isinstance(e, PolicyDecided)]
    assert sorted(e.task_id or "" for e in moved) == ["a", "b"]
    assert all(e.constraints == {"lane": "local"} for e in moved)
    # The other tenant's frontier task went to the frontier model.
    assert {c.lane for c in calls(await events_of(store, us))} == {"frontier"}


async def test_two_tasks_wait_for_approval_mid_conversation_and_resume_after_a_restart(
    store, fake, tmp_path
):
    s = make_settings(
        fake,
        tmp_path,
        """
[policy]
[[policy.rules]]
name = "writes-need-a-human"
when = { tool = "workspace.write" }
decision = "require_approval"
""",
    )
    for n in (1, 2):
        fake.enqueue_tool_calls(
            [(f"w{n}", "workspace.write", {"path": f"f{n}.txt", "content": f"v{n}"})]
        )
    async with deployment(store, s):
        goal_id = await submit(store, s, [execute("a", "local"), execute("b", "local")])

        await goal_until(
            store,
            goal_id,
            lambda g: [task_status(g, t) for t in "ab"] == ["awaiting_approval"] * 2,
            60,
        )
    # Everything stopped: the scheduler and the workers are gone. A human
    # answers each request, hours later as far as the log can tell.
    goal = await client.goal_state(store, goal_id)
    assert len(fake.requests) == 2, [t.approval_reason for t in goal.tasks.values()]
    keys = {t.task_id: t.approval_key for t in goal.tasks.values()}
    assert all(k.startswith("tool:") for k in keys.values())
    await client.approve(store, "a", goal_id=goal_id, by="ana", note="fine")
    await client.approve(store, "b", goal_id=goal_id, deny=True, by="bo", note="not f2")
    fake.enqueue(text="wrote it")
    fake.enqueue(text="did without")
    async with deployment(store, s):
        goal = await client.wait_goal(store, goal_id, until=client.FINAL, timeout_s=60)
    assert goal.status == "done", goal.reason
    # Each conversation resumed where it stopped: two more requests, not four.
    assert len(fake.requests) == 4
    events = await events_of(store, goal_id)
    assert len(calls(events)) == 4
    by_task = {e.task_id: e for e in events if isinstance(e, ToolCallFinished)}
    assert by_task["a"].error is None
    assert (
        by_task["b"].refused
        and by_task["b"].error == "workspace.write was denied by bo: not f2"
    )
    ws = tmp_path / "data" / "workspaces" / goal_id
    assert {p.name for p in ws.iterdir()} == {"f1.txt"} or {
        p.name for p in ws.iterdir()
    } == {"f2.txt"}  # which task got which answer depends on arrival order
    approver = {
        t: (
            goal.tasks[t].approvals[keys[t]].by,
            goal.tasks[t].approvals[keys[t]].granted,
        )
        for t in ("a", "b")
    }
    assert approver == {"a": ("ana", True), "b": ("bo", False)}


async def test_a_cost_gate_holds_the_task_before_its_first_call(store, fake, tmp_path):
    s = make_settings(
        fake,
        tmp_path,
        """
[policy]
[[policy.rules]]
name = "costly"
when = { cost_over = 0.001, lane = "frontier" }
decision = "require_approval"
""",
    )
    async with deployment(store, s):
        goal_id = await submit(store, s, [execute("a", "frontier")])

        await goal_until(
            store, goal_id, lambda g: task_status(g, "a") == "awaiting_approval", 60
        )
        assert fake.requests == []  # nothing was sent before the human said so
        task = (await client.goal_state(store, goal_id)).tasks["a"]
        assert "may cost up to $" in task.approval_reason
        await client.approve(store, "a", goal_id=goal_id, by="ana")
        goal = await client.wait_goal(store, goal_id, until=client.FINAL, timeout_s=60)
    assert goal.status == "done", goal.reason
    assert len(fake.requests) == 1


async def test_a_budget_just_above_the_spend_stops_the_next_call_before_it_is_made(
    store, fake, tmp_path
):
    s = make_settings(fake, tmp_path)
    async with deployment(store, s):
        goal_id = await submit(
            store,
            s,
            [execute("a", "frontier"), execute("b", "frontier", "a")],
            max_tasks=1,
        )
        halted = await client.wait_goal(store, goal_id, timeout_s=60)
        assert halted.halted_by == "max_tasks"
        spent = halted.cost_usd
        assert spent > 0 and len(fake.requests) == 1
        await client.resume(
            store, goal_id, {"max_tasks": 2, "max_cost_usd": spent + 1e-6}, by="test"
        )

        await goal_until(store, goal_id, lambda g: g.halted_by == "max_cost_usd", 60)
        goal = await client.goal_state(store, goal_id)
        assert goal.tasks["b"].status == "held"
        assert "the next call to claude-main could cost" in goal.tasks["b"].held_reason
        assert len(fake.requests) == 1  # the provider received nothing more
        await client.resume(store, goal_id, {"max_cost_usd": 5.0}, by="test")
        goal = await client.wait_goal(store, goal_id, until=client.FINAL, timeout_s=60)
    assert goal.status == "done", goal.reason
    assert len(fake.requests) == 2
    ledger = [e for e in await events_of(store, goal_id) if isinstance(e, BudgetEntry)]
    assert [e.op for e in ledger] == ["reserve", "settle", "reserve", "settle"]
    assert ledger[-1].held == {}
    assert ledger[-1].spent_usd == pytest.approx(goal.cost_usd)


async def test_eight_concurrent_tasks_never_spend_past_a_small_dollar_budget(
    store, tmp_path
):
    # Calls that use most of what they may: each settles near its worst case.
    with FakeProviderServer(
        text="done", usage=Usage(input_tokens=1500, output_tokens=1800)
    ) as fake:
        s = make_settings(fake, tmp_path)
        budget = 0.1
        async with deployment(store, s, concurrency=8):
            goal_id = await submit(
                store,
                s,
                [execute(f"t{i}", "frontier") for i in range(8)],
                max_cost_usd=budget,
            )
            goal = await client.wait_goal(store, goal_id, timeout_s=60)

            await goal_until(
                store,
                goal_id,
                lambda g: all(
                    t.status not in ("ready", "claimed") for t in g.tasks.values()
                ),
                60,
            )
            events = await events_of(store, goal_id)
    assert goal.halted_by == "max_cost_usd"
    made = calls(events)
    assert 0 < len(made) < 8
    assert len(fake.requests) == len(made)  # no call was made unrecorded
    assert sum(c.cost_usd for c in made) <= budget  # overshoot: zero calls
    ledger = [e for e in events if isinstance(e, BudgetEntry)]
    assert ledger[-1].held == {}
    assert ledger[-1].spent_usd == pytest.approx(sum(c.cost_usd for c in made))
