"""Compensation carried out (agents/compensate.py) on a log written by hand.

The tool calls are real: the workspace and Python tools run, and their results
are recorded as a worker records them; then the goal ends and is compensated
on the in-memory log. The CLI and a real engine: tests/e2e/test_cli_compensate.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import TYPE_CHECKING, Any

import pytest

from agents.compensate import ON_FAILURE, REDACTED, OnFailure, compensate_goal
from agents.compensation import IRREVERSIBLE, UNKNOWN
from agents.handlers import Agents
from agents.toolbox import Toolbox, artifacts_of, workspace_of
from agents.tools.registry import Invocation
from agents.tools.workspace import previous_of
from blackboard.engine import control as client
from blackboard.engine import policy
from blackboard.engine import submission as service
from blackboard.engine.handlers import BUILTIN
from blackboard.errors import ConfigError
from blackboard.log import events as ev
from blackboard.log.memory import MemoryEventStore
from blackboard.log.redact import MASK
from blackboard.runtime import config
from blackboard.runtime.inprocess import running
from tests.factories import at

if TYPE_CHECKING:
    from pathlib import Path

    from blackboard.log.ports import EventStore

G = "01J0000000000000000000C001"


@pytest.fixture
def settings(tmp_path: Path) -> config.Settings:
    s = config.load(env={"BB_DATA_DIR": str(tmp_path / "data")}, path=None)
    s.tools.python = ["tests.agents.pytools:record", "tests.agents.pytools:add"]
    return s


class Goal:
    """A goal's log, written as a worker would write it, tool calls run for real."""

    def __init__(self, store: EventStore, settings: config.Settings) -> None:
        self.store = store
        self.toolbox = Toolbox(settings)
        self.workspace = workspace_of(settings, G)
        self.n = itertools.count(1)
        self.calls = itertools.count(1)

    def base(self, task: str | None = "T1") -> dict[str, Any]:
        n = next(self.n)
        return {
            "event_id": f"e{n}",
            "goal_id": G,
            "task_id": task,
            "at": at(n),
            "actor": "w",
        }

    async def start(self, *tasks: str) -> None:
        await self.store.append(ev.GoalSubmitted(**self.base(None), text="act"))
        for t in tasks:
            await self.store.append(
                ev.TaskCreated(**self.base(t), task_type="execute", lane="local")
            )

    async def call(
        self, tool: str, task: str = "T1", *, end: bool = True, **args: Any
    ) -> str:
        """Run a tool as a worker does, recording its start and end; its key."""
        t = self.toolbox.registry.get(tool)
        assert t is not None
        cid = f"c{next(self.calls)}"
        key = f"{G}:{task}:1.1:{cid}"
        common: dict[str, Any] = {
            "tool": tool,
            "call_id": cid,
            "idempotency_key": key,
            "effect": t.effect,
        }
        await self.store.append(
            ev.ToolCallStarted(**self.base(task), arguments=args, **common)
        )
        result = await t.run(Invocation(G, task, self.workspace), dict(args))
        if end:
            await self.store.append(
                ev.ToolCallFinished(**self.base(task), result=result, **common)
            )
        return key

    async def end(self, how: str = "cancelled") -> None:
        event: ev.AnyEvent = (
            ev.GoalCancelled(**self.base(None), compensate=True)
            if how == "cancelled"
            else ev.GoalFailed(**self.base(None), reason="T1 failed")
        )
        await self.store.append(event)

    async def events(self) -> list[ev.AnyEvent]:
        return [env.event async for env in self.store.read_goal(G)]


@pytest.fixture
async def goal(settings: config.Settings) -> Goal:
    return Goal(MemoryEventStore(), settings)


def files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


async def test_writes_are_undone_newest_first_and_the_rest_reported(
    goal: Goal, settings: config.Settings
):
    goal.workspace.mkdir(parents=True)
    (goal.workspace / "a.txt").write_text("A0")
    (goal.workspace / "b.txt").write_text("B0")
    await goal.start("T1", "T2")
    await goal.call("workspace.write", path="a.txt", content="A1")
    await goal.call("workspace.write", "T2", path="new.txt", content="new")
    await goal.call("workspace.read", path="a.txt")
    await goal.call("workspace.write", path="a.txt", content="A2")
    step = await goal.call("python.add", "T2", a=1, b=2)
    await goal.call("workspace.write", "T2", path="b.txt", content="B1")
    await goal.end()

    report = await compensate_goal(goal.store, settings, G, by="ana")

    # a.txt was written twice: undoing the later write first is what lets
    # the earlier one's undo find the file as that write left it.
    assert files(goal.workspace) == {"a.txt": "A0", "b.txt": "B0"}
    assert [
        (s.recorded.arguments["path"], s.outcome, s.detail["action"])
        for s in report.steps
    ] == [
        ("b.txt", "undone", "restored"),
        ("a.txt", "undone", "restored"),
        ("new.txt", "undone", "deleted"),
        ("a.txt", "undone", "restored"),
    ]
    [needed] = report.needs_human
    assert needed.recorded.key == step and needed.reason == IRREVERSIBLE
    assert not report.clean and report.status == "cancelled"
    events = await goal.events()
    undone = [e for e in events if isinstance(e, ev.EffectCompensated)]
    assert [e.result["path"] for e in undone] == ["b.txt", "a.txt", "new.txt", "a.txt"]
    assert {e.task_id for e in undone} == {"T1", "T2"}
    assert all(e.by == "ana" and e.origin == "tool_call" for e in undone)
    [reported] = [e for e in events if isinstance(e, ev.CompensationNeeded)]
    assert (reported.task_id, reported.name, reported.effect) == (
        "T2",
        "python.add",
        "irreversible",
    )
    assert json.loads(reported.arguments) == {"a": 1, "b": 2}
    # The report says what a person needs, in a line each.
    text = "\n".join(report.lines())
    assert "undone  workspace.write new.txt: deleted  (task T2)" in text
    assert "python.add (irreversible tool call)" in text and IRREVERSIBLE in text

    again = await compensate_goal(goal.store, settings, G, by="ana")
    assert again.steps == () and again.needs_human == ()
    assert [n.recorded.key for n in again.reported] == [step]
    assert again.already_undone == 4 and not again.nothing_to_do
    assert await goal.events() == events  # nothing recorded twice
    assert "(reported before)" in "\n".join(again.lines())


async def test_a_failed_undo_is_recorded_and_the_next_goes_on(
    goal: Goal, settings: config.Settings
):
    await goal.start("T1")
    await goal.call("workspace.write", path="a.txt", content="A1")
    await goal.call("workspace.write", path="b.txt", content="B1")
    await goal.end("failed")
    (goal.workspace / "b.txt").write_text("changed by someone")

    report = await compensate_goal(goal.store, settings, G, by="ana")

    assert [s.outcome for s in report.steps] == ["failed", "undone"]
    assert "the file changed since" in report.steps[0].detail
    assert files(goal.workspace) == {"b.txt": "changed by someone"}
    assert not report.clean and report.failed == [report.steps[0]]
    assert "FAILED  workspace.write b.txt: cannot undo" in report.lines()[0]
    [failed] = [e for e in await goal.events() if isinstance(e, ev.CompensationFailed)]
    assert failed.task_id == "T1" and "changed since" in failed.error
    # Once the file is put back as the write left it, the undo is tried again.
    (goal.workspace / "b.txt").write_text("B1")
    again = await compensate_goal(goal.store, settings, G, by="ana")
    assert [s.outcome for s in again.steps] == ["undone"] and again.clean
    assert files(goal.workspace) == {}


async def test_a_call_whose_end_was_never_recorded_is_left_to_a_human(
    goal: Goal, settings: config.Settings
):
    await goal.start("T1")
    key = await goal.call("workspace.write", path="a.txt", content="A1", end=False)
    await goal.end()
    report = await compensate_goal(goal.store, settings, G, by="ana")
    assert report.steps == ()
    assert [(n.recorded.key, n.reason) for n in report.needs_human] == [(key, UNKNOWN)]
    assert files(goal.workspace) == {"a.txt": "A1"}  # not undone on a guess


async def test_a_python_tool_is_undone_by_its_compensator_unless_redacted(
    goal: Goal, settings: config.Settings, tmp_path: Path
):
    ledger = tmp_path / "ledger.json"
    await goal.start("T1")
    await goal.call("python.record", path=str(ledger), entry="first")
    key = f"{G}:T1:1.1:c9"
    common: dict[str, Any] = {
        "tool": "python.record",
        "call_id": "c9",
        "idempotency_key": key,
        "effect": "reversible",
    }
    await goal.store.append(
        ev.ToolCallStarted(
            **goal.base(), arguments={"path": str(ledger), "entry": "x"}, **common
        )
    )
    await goal.store.append(
        ev.ToolCallFinished(**goal.base(), result={"entry": MASK}, **common)
    )
    await goal.end()

    report = await compensate_goal(goal.store, settings, G, by="ana")

    assert json.loads(ledger.read_text()) == {"undone": "first"}
    [undone] = report.steps
    assert undone.detail == {"undid": "first"}
    assert [(n.recorded.key, n.reason) for n in report.needs_human] == [(key, REDACTED)]
    again = await compensate_goal(goal.store, settings, G, by="ana")
    assert again.steps == () and [n.reason for n in again.reported] == [REDACTED]


async def test_a_tool_missing_here_fails_and_is_tried_again_later(
    goal: Goal, settings: config.Settings, tmp_path: Path
):
    await goal.start("T1")
    await goal.call("python.record", path=str(tmp_path / "x"), entry="e")
    await goal.end()
    bare = config.load(env={"BB_DATA_DIR": settings.data_dir}, path=None)
    report = await compensate_goal(goal.store, bare, G, by="ana")
    [failed] = report.steps
    assert failed.outcome == "failed" and "is not configured here" in failed.detail
    again = await compensate_goal(goal.store, settings, G, by="ana")
    assert [s.outcome for s in again.steps] == ["undone"]


async def test_an_artifact_written_by_the_handler_is_undone(
    goal: Goal, settings: config.Settings
):
    root = artifacts_of(settings, G)
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "a.md").write_text("before")
    await goal.start("T1")
    for name, text in (("notes/a.md", "after"), ("b.md", "made")):
        key = f"T1:write:{name}"
        previous = previous_of(root / name)
        (root / name).write_text(text)
        await goal.store.append(
            ev.SideEffectStarted(
                **goal.base(), name=f"write:{name}", idempotency_key=key
            )
        )
        result = {"path": name, "sha256": _sha(text), "previous": previous}
        await goal.store.append(
            ev.SideEffectCompleted(
                **goal.base(), name=f"write:{name}", idempotency_key=key, result=result
            )
        )
    await goal.end()
    report = await compensate_goal(goal.store, settings, G, by="ana")
    assert [(s.recorded.name, s.detail["action"]) for s in report.steps] == [
        ("write:b.md", "deleted"),
        ("write:notes/a.md", "restored"),
    ]
    assert report.clean and files(root) == {"notes/a.md": "before"}
    events = await goal.events()
    assert {e.origin for e in events if isinstance(e, ev.EffectCompensated)} == {
        "side_effect"
    }


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


async def test_an_open_or_done_goal_is_refused_and_nothing_says_so(
    goal: Goal, settings: config.Settings
):
    await goal.start("T1")
    with pytest.raises(ConfigError, match="is running: cancel it first"):
        await compensate_goal(goal.store, settings, G, by="ana")
    await goal.store.append(ev.GoalCompleted(**goal.base(None)))
    with pytest.raises(ConfigError, match="is done"):
        await compensate_goal(goal.store, settings, G, by="ana")
    with pytest.raises(ConfigError, match="no goal"):
        await compensate_goal(goal.store, settings, "NOPE", by="ana")
    other = Goal(MemoryEventStore(), settings)
    await other.start("T1")
    await other.call("workspace.list", path=".")
    await other.end()
    report = await compensate_goal(other.store, settings, G, by="ana")
    assert report.nothing_to_do and report.clean and report.lines() == []


# --- [policy] on_failure = "compensate" ----------------------------------------


async def test_a_goal_that_fails_is_compensated_by_the_engine_s_process(
    tmp_path: Path,
):
    """``running(compensator=OnFailure(...))``: what `bb up` runs with the setting."""
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            {
                "rules": [
                    {
                        "task_type": "execute",
                        "turn": 0,
                        "reply": "",
                        "tool_calls": [
                            {
                                "name": "workspace.write",
                                "arguments": {"path": "a.txt", "content": "A1"},
                            },
                            {"name": "python.add", "arguments": {"a": 1}},
                        ],
                    },
                    # Empty, then empty again after the redo: the task fails for good.
                    {"task_type": "execute", "reply": ""},
                ]
            }
        )
    )
    s = config.load(
        env={
            "BB_SCRIPTED": "1",
            "BB_SCRIPT": str(script),
            "BB_DATA_DIR": str(tmp_path / "data"),
            "BB_LEASE_SECONDS": "5",
        },
        path=None,
    )
    s.tools.python = ["tests.agents.pytools:add"]
    s.policy = policy.parse({"on_failure": "compensate"}, source="test")
    store = MemoryEventStore()
    agents = Agents(s)
    spec = ev.TaskSpec(
        task_id="act",
        type="execute",
        lane="local",
        payload={"title": "edit", "instruction": "edit a.txt"},
    )
    event = service.goal_submitted(s, "edit", specs=[spec], submitted_by="test")
    workspace = workspace_of(s, event.goal_id)
    workspace.mkdir(parents=True)
    (workspace / "a.txt").write_text("A0")
    try:
        async with running(
            store,
            s,
            {**BUILTIN, **agents.handlers()},
            agent=agents,
            compensator=OnFailure(store, s),
        ):
            await store.append(event)
            goal = await client.wait_goal(store, event.goal_id, timeout_s=30)
            assert goal.status == "failed", goal.reason

            # The compensator watches the failure land, then undoes.
            found: list[ev.EffectCompensated | ev.CompensationNeeded] = []
            for _ in range(600):
                found = [
                    e.event
                    async for e in store.read_goal(event.goal_id)
                    if isinstance(e.event, ev.EffectCompensated | ev.CompensationNeeded)
                ]
                if len(found) == 2:
                    break
                await asyncio.sleep(0.05)
    finally:
        await agents.aclose()
    assert files(workspace) == {"a.txt": "A0"}
    assert [(type(e).__name__, e.by) for e in found] == [
        ("CompensationNeeded", f"{ON_FAILURE} {s.policy.hash}"),
        ("EffectCompensated", f"{ON_FAILURE} {s.policy.hash}"),
    ]
