"""One valid instance of every event type, for round-trip and mapping tests."""

from __future__ import annotations

from typing import Any

import msgspec

from blackboard.log import events as ev
from tests.factories import at

_REQUIRED: dict[type[ev.Event], dict[str, Any]] = {
    ev.GoalSubmitted: {
        "text": "add audit logging",
        "tasks": [{"task_id": "T1", "type": "execute", "lane": "local"}],
    },
    ev.GoalCompleted: {"summary": "done"},
    ev.GoalFailed: {"reason": "task T1 failed"},
    ev.GoalCancelled: {"reason": "no longer needed", "by": "ana", "compensate": True},
    ev.GoalHalted: {"guardrail": "max_tasks", "limit": 10, "observed": 11},
    ev.GoalResumed: {"limits": {"max_tasks": 20}},
    ev.GoalThrottled: {
        "tenant": "acme",
        "quota": "usd_per_day",
        "used": 10.5,
        "limit": 10.0,
        "until": "2026-12-08T00:00:00Z",
        "reason": "tenant acme is at its usd_per_day quota",
    },
    ev.TaskCreated: {
        "task_type": "execute",
        "lane": "local",
        "payload": {"k": [1, 2]},
        "depends_on": ["T0"],
        "parent_id": "T0",
        "depth": 1,
    },
    ev.TaskReady: {"dispatch": 2},
    ev.TaskClaimed: {"worker": "w1", "attempt": 1},
    ev.TaskCompleted: {"result": {"files": ["a.py"]}},
    ev.TaskFailed: {"error": "boom", "retryable": True},
    ev.TaskNeedsFollowup: {"waiting_on": ["C1", "C2"]},
    ev.TaskCancelled: {"reason": "dependency failed"},
    ev.TaskHeld: {"guardrail": "max_depth", "reason": "depth 7 > 6"},
    ev.TaskPreempted: {
        "reason": "gave its slot to goal G2 task T1 (level 0 before level 2)",
        "by_goal": "G2",
        "by_task": "T1",
    },
    ev.ApprovalRequested: {"reason": "writes to prod", "policy": "task_type:migration"},
    ev.ApprovalGranted: {"by": "ana", "note": "ok"},
    ev.ApprovalDenied: {"by": "ana", "note": "no"},
    ev.PolicyDecided: {
        "point": "tool",
        "subject": "orders.refund",
        "decision": "require_approval",
        "rule": "refunds-need-a-human",
        "policy_hash": "sha256:0123456789abcdef",
        "key": "tool:G:T1:1.1:c1",
    },
    ev.BudgetEntry: {
        "op": "reserve",
        "reservation": "R1",
        "tokens": 1200,
        "cost_usd": 0.0042,
        "model": "claude-sonnet-4-5",
        "spent_tokens": 300,
        "spent_usd": 0.001,
        "held": {"R1": {"task_id": "T1", "tokens": 1200, "cost_usd": 0.0042}},
        "max_cost_usd": 1.0,
    },
    ev.ModelCalled: {
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "lane": "frontier",
        "request": {"messages": []},
        "response": {"content": []},
        "tokens_in": 10,
        "tokens_out": 5,
        "cost_usd": 0.000105,
        "price": {"input_per_mtok": 3.0},
    },
    ev.BreakerChanged: {
        "provider": "openai",
        "model": "gpt-5",
        "lane": "frontier",
        "from_state": "closed",
        "to_state": "open",
        "failures": 5,
        "reason": "status 503: overloaded",
    },
    ev.SideEffectStarted: {"name": "open_pr", "idempotency_key": "T1:open_pr"},
    ev.SideEffectCompleted: {
        "name": "open_pr",
        "idempotency_key": "T1:open_pr",
        "result": {"pr": 7},
    },
    ev.SideEffectFailed: {
        "name": "open_pr",
        "idempotency_key": "T1:open_pr",
        "error": "403",
    },
    ev.ToolCallStarted: {
        "tool": "workspace.write",
        "call_id": "toolu_1",
        "idempotency_key": "G1:T1:1.1:toolu_1",
        "arguments": {"path": "a.py", "content": "x = 1"},
        "effect": "reversible",
        "source": "workspace",
    },
    ev.ToolCallFinished: {
        "tool": "workspace.write",
        "call_id": "toolu_1",
        "idempotency_key": "G1:T1:1.1:toolu_1",
        "result": {"path": "a.py", "bytes": 5},
        "effect": "reversible",
        "duration_ms": 1.5,
    },
    ev.EffectCompensated: {
        "name": "workspace.write",
        "idempotency_key": "G1:T1:1.1:toolu_1",
        "result": {"path": "a.py", "action": "restored"},
        "by": "ana",
    },
    ev.CompensationFailed: {
        "name": "workspace.write",
        "idempotency_key": "G1:T1:1.1:toolu_1",
        "error": "cannot undo the write of 'a.py': the file changed since",
    },
    ev.CompensationNeeded: {
        "name": "python.step",
        "idempotency_key": "G1:T1:1.1:toolu_2",
        "arguments": '{"n": 1}',
        "reason": "an irreversible tool call: Blackboard cannot undo it",
    },
}


def sample(cls: type[ev.Event], goal_id: str = "G1", i: int = 0) -> ev.AnyEvent:
    goal_level = cls.__name__.startswith("Goal") or cls is ev.BudgetEntry
    task_id = None if goal_level else "T1"
    raw = {
        "event_id": f"{cls.__name__}-{i}",
        "goal_id": goal_id,
        "task_id": task_id,
        "at": at(i).isoformat(),
        "actor": "test",
        **_REQUIRED[cls],
    }
    return msgspec.convert(raw, cls)  # type: ignore[return-value]


def all_samples(goal_id: str = "G1") -> list[ev.AnyEvent]:
    return [sample(cls, goal_id, i) for i, cls in enumerate(ev.EVENT_TYPES)]
