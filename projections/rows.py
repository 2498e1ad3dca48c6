"""Events to table rows. Pure: no DuckDB, no NATS, no clock.

Append-only tables (``events``, ``model_calls``, ``side_effects``,
``approvals``, ``task_deps``, ``dead_letters``) get one row per event. The
current state of ``goals`` and ``tasks`` comes from the one fold
(:mod:`blackboard.engine.state`): a batch marks what it touched, and those rows are
written again whole, so the projection never disagrees with ``bb status``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, assert_never

import msgspec

from blackboard.log.events import (
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    GoalCancelled,
    GoalCompleted,
    GoalFailed,
    GoalHalted,
    GoalResumed,
    GoalSubmitted,
    ModelCalled,
    SideEffectCompleted,
    SideEffectFailed,
    SideEffectStarted,
    TaskCancelled,
    TaskClaimed,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskHeld,
    TaskNeedsFollowup,
    TaskReady,
    ToolCallFinished,
    ToolCallStarted,
    kind,
)

if TYPE_CHECKING:
    from blackboard.engine.state import GoalState, TaskState
    from blackboard.log.codec import Envelope

__all__ = ["Rows", "add_event", "dead_letter", "goal_row", "task_row"]

_ENCODE = msgspec.json.Encoder().encode


@dataclass(slots=True)
class Rows:
    """The rows of one batch, by table, and the state rows it touched."""

    events: list[dict[str, Any]] = field(default_factory=list)
    model_calls: list[dict[str, Any]] = field(default_factory=list)
    side_effects: list[dict[str, Any]] = field(default_factory=list)
    approvals: list[dict[str, Any]] = field(default_factory=list)
    task_deps: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    goals: set[str] = field(default_factory=set)
    tasks: set[tuple[str, str]] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.events) + len(self.dead_letters)


def add_event(rows: Rows, env: Envelope, body: bytes | None = None) -> None:
    """Add the rows one (valid) event makes.

    ``body`` is the event's JSON as it came off the stream, if at hand (it is
    stored as it is); otherwise the event is encoded again.
    """
    e = env.event
    k = kind(e)
    base = {"seq": env.seq, "at": e.at, "goal_id": e.goal_id, "task_id": e.task_id}
    rows.events.append(
        {
            **base,
            "kind": k,
            "actor": e.actor,
            "body": msgspec.Raw(body if body is not None else _ENCODE(e)),
        }
    )
    rows.goals.add(e.goal_id)
    if e.task_id is not None:
        rows.tasks.add((e.goal_id, e.task_id))
    match e:
        case ModelCalled():
            rows.model_calls.append(
                {
                    **base,
                    "attempt": e.attempt,
                    "call_index": e.call_index,
                    "provider": e.provider,
                    "model": e.model,
                    "lane": e.lane,
                    "tokens_in": e.tokens_in,
                    "tokens_out": e.tokens_out,
                    "tokens_cached": e.tokens_cached,
                    "cost_usd": e.cost_usd,
                    "latency_ms": e.latency_ms,
                    "prompt_version": e.prompt_version,
                    "request_hash": e.request_hash,
                    "error": e.error,
                    "scripted": e.scripted,
                    "dispatch": e.dispatch,
                }
            )
        case SideEffectStarted() | SideEffectCompleted() | SideEffectFailed():
            status = {
                SideEffectStarted: "started",
                SideEffectCompleted: "completed",
                SideEffectFailed: "failed",
            }[type(e)]
            rows.side_effects.append(
                {
                    **base,
                    "name": e.name,
                    "idempotency_key": e.idempotency_key,
                    "status": status,
                    "error": getattr(e, "error", None),
                }
            )
        case ApprovalRequested():
            rows.approvals.append(
                {
                    **base,
                    "kind": "requested",
                    "by": None,
                    "note": None,
                    "reason": e.reason,
                    "policy": e.policy,
                }
            )
        case ApprovalGranted() | ApprovalDenied():
            rows.approvals.append(
                {
                    **base,
                    "kind": "granted" if isinstance(e, ApprovalGranted) else "denied",
                    "by": e.by,
                    "note": e.note,
                    "reason": None,
                    "policy": None,
                }
            )
        case TaskCreated():
            rows.task_deps.extend(
                {"goal_id": e.goal_id, "task_id": e.task_id, "depends_on": d}
                for d in e.depends_on
            )
        case (
            GoalSubmitted()
            | GoalCompleted()
            | GoalFailed()
            | GoalCancelled()
            | GoalHalted()
            | GoalResumed()
            | TaskReady()
            | TaskClaimed()
            | TaskCompleted()
            | TaskFailed()
            | TaskNeedsFollowup()
            | TaskCancelled()
            | TaskHeld()
            | ToolCallStarted()
            | ToolCallFinished()
        ):
            pass  # only in `events`, and in the goal and task rows of the fold
        case _:
            assert_never(e)


def dead_letter(
    rows: Rows, seq: int, subject: str, reason: str, raw: bytes = b""
) -> None:
    """Record a message that could not be projected, and why."""
    rows.dead_letters.append(
        {
            "seq": seq,
            "subject": subject,
            "reason": reason,
            "raw": raw[:65536].decode("utf-8", "replace"),
        }
    )


def goal_row(g: GoalState) -> dict[str, Any]:
    """A goal's current row."""
    lim = g.limits
    return {
        "goal_id": g.goal_id,
        "text": g.text,
        "status": g.status,
        "tenant": g.submitted.tenant,
        "submitted_by": g.submitted.submitted_by,
        "submitted_at": g.submitted.at,
        "finished_at": g.finished_at,
        "summary": g.summary,
        "reason": g.reason,
        "halted_by": g.halted_by,
        "tasks": len(g.tasks),
        "tokens": g.tokens,
        "cost_usd": g.cost_usd,
        "max_depth": lim.max_depth,
        "max_tasks": lim.max_tasks,
        "max_tokens": lim.max_tokens,
        "max_cost_usd": lim.max_cost_usd,
        "last_seq": g.last_seq,
    }


def task_row(t: TaskState) -> dict[str, Any]:
    """A task's current row."""
    return {
        "goal_id": t.goal_id,
        "task_id": t.task_id,
        "type": t.task_type,
        "lane": t.lane,
        "status": t.status,
        "parent_id": t.parent_id,
        "depth": t.depth,
        "attempts": t.attempt,
        "failures": t.failures,
        "worker": t.worker,
        "created_at": t.created_at,
        "ready_at": t.ready_at,
        "claimed_at": t.claimed_at,
        "finished_at": t.finished_at,
        "tokens_in": t.tokens_in,
        "tokens_out": t.tokens_out,
        "cost_usd": t.cost_usd,
        "model_calls": t.model_calls,
        "error": t.error,
        "last_seq": t.last_seq,
        "tokens_cached": t.tokens_cached,
    }
