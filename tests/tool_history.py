"""A goal whose tasks called tools, with every outcome a call can have.

T1 (local lane) asks for three calls in one answer: a read that works, a write
that fails and a command that is refused. T2 (frontier lane) asks for two
reads; its worker dies while the second runs, and attempt 2, resuming the
conversation, runs that call again (same idempotency key) and asks for one
more, still running when the log ends.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from blackboard.log import events as ev
from blackboard.log.codec import Envelope
from blackboard.log.events import TaskSpec

GOAL = "01J0000000000000000000T001"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def _base(kind: str, task: str | None, ms: float, **kw: Any) -> dict[str, Any]:
    return {
        "event_id": f"{kind}-{task}-{ms:g}",
        "goal_id": GOAL,
        "task_id": task,
        "at": _at(ms),
        "actor": "w1",
        **kw,
    }


def key(task: str, call_id: str, attempt: int = 1) -> str:
    """The idempotency key of a call asked for by ``attempt`` of ``task``."""
    return f"{GOAL}:{task}:1.{attempt}:{call_id}"


def model(
    task: str,
    ms: float,
    index: int,
    calls: list[tuple[str, str, Any]],
    attempt: int = 1,
) -> ev.ModelCalled:
    """A model call whose answer asks for ``calls`` (id, tool, arguments)."""
    return ev.ModelCalled(
        **_base("mc", task, ms),
        provider="anthropic",
        model="claude-sonnet-4-5",
        lane="frontier" if task == "T2" else "local",
        request={"messages": [{"role": "user", "content": f"work on {task}"}]},
        response={"content": []},
        text="" if calls else "all done",
        stop_reason="tool_use" if calls else "end_turn",
        tool_calls=tuple({"id": i, "name": n, "arguments": a} for i, n, a in calls),
        tokens_in=10,
        tokens_out=5,
        latency_ms=50.0,
        call_index=index,
        attempt=attempt,
        prompt_version="execute/v1",
    )


def started(
    task: str,
    ms: float,
    call_id: str,
    tool: str,
    arguments: Any,
    asked_by: ev.ModelCalled,
    *,
    effect: str = "read",
    attempt: int = 1,
    asked_attempt: int = 1,
) -> ev.ToolCallStarted:
    return ev.ToolCallStarted(
        **_base(f"ts{attempt}", task, ms),
        tool=tool,
        call_id=call_id,
        idempotency_key=key(task, call_id, asked_attempt),
        arguments=arguments,
        effect=effect,
        source="shell" if tool == "shell.run" else "workspace",
        model_call=asked_by.event_id,
        attempt=attempt,
    )


def finished(
    task: str,
    ms: float,
    call_id: str,
    tool: str,
    *,
    result: Any = None,
    error: str | None = None,
    refused: bool = False,
    effect: str = "read",
    duration_ms: float = 0.0,
    attempt: int = 1,
    asked_attempt: int = 1,
) -> ev.ToolCallFinished:
    return ev.ToolCallFinished(
        **_base(f"tf{attempt}", task, ms),
        tool=tool,
        call_id=call_id,
        idempotency_key=key(task, call_id, asked_attempt),
        result=result,
        error=error,
        refused=refused,
        effect=effect,
        duration_ms=duration_ms,
        attempt=attempt,
    )


LONG = "x = 1\n" * 40
"""A write's content: longer than a trace shows unless --full."""


def events() -> list[ev.AnyEvent]:
    """The goal's events, in log order."""
    m1 = model(
        "T1",
        10,
        0,
        [
            ("c1", "workspace.read", {"path": "a.py"}),
            ("c2", "workspace.write", {"path": "b.py", "content": LONG}),
            ("c3", "shell.run", {"command": "rm -rf /"}),
        ],
    )
    m2 = model(
        "T2",
        10,
        0,
        [
            ("c5", "workspace.read", {"path": "c.py"}),
            ("c6", "workspace.read", {"path": "d.py"}),
        ],
    )
    m3 = model("T2", 100, 1, [("c7", "workspace.read", {"path": "e.py"})], attempt=2)
    return [
        ev.GoalSubmitted(
            **_base("gs", None, 0),
            text="use tools",
            tasks=(
                TaskSpec(task_id="T1", type="execute", lane="local"),
                TaskSpec(task_id="T2", type="execute", lane="frontier"),
            ),
        ),
        ev.TaskCreated(**_base("tc", "T1", 1), task_type="execute", lane="local"),
        ev.TaskCreated(**_base("tc", "T2", 1), task_type="execute", lane="frontier"),
        ev.TaskReady(**_base("tr", "T1", 2)),
        ev.TaskReady(**_base("tr", "T2", 2)),
        ev.TaskClaimed(**_base("cl", "T1", 3), worker="w1", attempt=1),
        ev.TaskClaimed(**_base("cl", "T2", 3), worker="w2", attempt=1),
        m1,
        started("T1", 11, "c1", "workspace.read", {"path": "a.py"}, m1),
        finished("T1", 13, "c1", "workspace.read", result="x = 1\n", duration_ms=2.0),
        started(
            "T1",
            14,
            "c2",
            "workspace.write",
            {"path": "b.py", "content": LONG},
            m1,
            effect="reversible",
        ),
        finished(
            "T1",
            18,
            "c2",
            "workspace.write",
            error="disk full",
            effect="reversible",
            duration_ms=4.0,
        ),
        started(
            "T1",
            19,
            "c3",
            "shell.run",
            {"command": "rm -rf /"},
            m1,
            effect="irreversible",
        ),
        finished(
            "T1",
            19,
            "c3",
            "shell.run",
            error="command not allowed: rm",
            refused=True,
            effect="irreversible",
        ),
        model("T1", 30, 1, []),
        ev.TaskCompleted(**_base("co", "T1", 31), result={"ok": True}),
        m2,
        started("T2", 11, "c5", "workspace.read", {"path": "c.py"}, m2),
        finished(
            "T2", 17, "c5", "workspace.read", result={"lines": 3}, duration_ms=6.0
        ),
        started("T2", 18, "c6", "workspace.read", {"path": "d.py"}, m2),
        # w2 dies; w3 takes the task over and resumes its conversation.
        ev.TaskClaimed(**_base("cl2", "T2", 80), worker="w3", attempt=2),
        started("T2", 81, "c6", "workspace.read", {"path": "d.py"}, m2, attempt=2),
        finished(
            "T2", 89, "c6", "workspace.read", result="", duration_ms=8.0, attempt=2
        ),
        m3,
        started(
            "T2",
            101,
            "c7",
            "workspace.read",
            {"path": "e.py"},
            m3,
            attempt=2,
            asked_attempt=2,
        ),
    ]


def envelopes() -> list[Envelope]:
    """The events with the sequences of a fresh stream."""
    return [Envelope(i + 1, "s", e) for i, e in enumerate(events())]
