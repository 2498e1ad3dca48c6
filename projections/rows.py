"""Events to table rows. Pure: no DuckDB, no NATS, no clock.

Append-only tables (``events``, ``model_calls``, ``side_effects``,
``approvals``, ``task_deps``, ``dead_letters``, ``compensations``) get one row
per event. The
current state of ``goals`` and ``tasks`` comes from the one fold
(:mod:`blackboard.engine.state`): a batch marks what it touched, and those rows are
written again whole, so the projection never disagrees with ``bb status``.
``tool_calls`` has one row per call, made from its ``ToolCallStarted`` and
``ToolCallFinished``: each event gives the columns it knows, merged in the batch
by :func:`merge_tool_row` and into the file by the same rule (the two events of
a call may land in different batches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, assert_never

import msgspec

from blackboard.log.events import (
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    BreakerChanged,
    BudgetEntry,
    CompensationFailed,
    CompensationNeeded,
    EffectCompensated,
    GoalCancelled,
    GoalCompleted,
    GoalFailed,
    GoalHalted,
    GoalResumed,
    GoalSubmitted,
    GoalThrottled,
    ModelCalled,
    PolicyDecided,
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
    TaskPreempted,
    TaskReady,
    ToolCallFinished,
    ToolCallStarted,
    kind,
)

if TYPE_CHECKING:
    from blackboard.engine.state import GoalState, TaskState
    from blackboard.log.codec import Envelope

__all__ = [
    "Rows",
    "ToolKey",
    "add_event",
    "dead_letter",
    "goal_row",
    "merge_tool_row",
    "task_row",
    "tool_status",
]

_ENCODE = msgspec.json.Encoder().encode


ToolKey = tuple[str, str, str, int, int]
"""A tool call's row: goal, task, idempotency key, dispatch and attempt of the
run that executed it (a later attempt re-running a call has a row of its own)."""


@dataclass(slots=True)
class Rows:
    """The rows of one batch, by table, and the state rows it touched."""

    events: list[dict[str, Any]] = field(default_factory=list)
    model_calls: list[dict[str, Any]] = field(default_factory=list)
    side_effects: list[dict[str, Any]] = field(default_factory=list)
    approvals: list[dict[str, Any]] = field(default_factory=list)
    task_deps: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    compensations: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: dict[ToolKey, dict[str, Any]] = field(default_factory=dict)
    """One row per call touched by the batch, its two events merged."""
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
        case (
            # Most of a log, so tried first: a match tests its cases in order.
            TaskReady()
            | TaskClaimed()
            | TaskCompleted()
            | GoalSubmitted()
            | GoalCompleted()
            | GoalFailed()
            | GoalCancelled()
            | GoalHalted()
            | GoalResumed()
            | GoalThrottled()
            | TaskFailed()
            | TaskNeedsFollowup()
            | TaskCancelled()
            | TaskHeld()
            | TaskPreempted()
            | PolicyDecided()
            | BudgetEntry()
            | BreakerChanged()
        ):
            pass  # only in `events`, and in the goal and task rows of the fold
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
        case ToolCallStarted() | ToolCallFinished():
            # A task event with no task names no call (the fold refuses it).
            if e.task_id is not None:
                row = _tool_row(e)
                key = _tool_key(row)
                merge_tool_row(rows.tool_calls.setdefault(key, {}), row)
        case EffectCompensated() | CompensationFailed() | CompensationNeeded():
            rows.compensations.append(_compensation_row(e, base))
        case TaskCreated():
            rows.task_deps.extend(
                {"goal_id": e.goal_id, "task_id": e.task_id, "depends_on": d}
                for d in e.depends_on
            )
        case _:
            assert_never(e)


def _compensation_row(
    e: EffectCompensated | CompensationFailed | CompensationNeeded,
    base: dict[str, Any],
) -> dict[str, Any]:
    """One undo step: ``undone``, ``failed`` or ``needs_human``, with its detail."""
    row: dict[str, Any] = {
        **base,
        "outcome": "undone",
        "name": e.name,
        "origin": e.origin,
        "idempotency_key": e.idempotency_key,
        "effect": None,
        "detail": None,
        "result": None,
        "by": e.by,
    }
    match e:
        case EffectCompensated():
            row["result"] = e.result
        case CompensationFailed():
            row["outcome"], row["detail"] = "failed", e.error
        case CompensationNeeded():
            row["outcome"], row["detail"] = "needs_human", e.reason
            row["effect"] = e.effect
    return row


def tool_status(finished: ToolCallFinished | None) -> str:
    """``running`` (not finished), ``refused``, ``error`` or ``ok``."""
    if finished is None:
        return "running"
    if finished.refused:
        return "refused"
    return "ok" if finished.error is None else "error"


def _tool_row(e: ToolCallStarted | ToolCallFinished) -> dict[str, Any]:
    """The columns one of a call's events knows; the others are None."""
    row: dict[str, Any] = {
        "goal_id": e.goal_id,
        "task_id": e.task_id,
        "tool": e.tool,
        "source": None,
        "effect": e.effect,
        "call_id": e.call_id,
        "idempotency_key": e.idempotency_key,
        "model_call": None,
        "dispatch": e.dispatch,
        "attempt": e.attempt,
        "started_at": None,
        "finished_at": None,
        "duration_ms": None,
        "status": "running",
        "error": None,
        "arguments": None,
        "result": None,
    }
    if isinstance(e, ToolCallStarted):
        row["source"] = e.source
        row["model_call"] = e.model_call or None
        row["started_at"] = e.at
        row["arguments"] = e.arguments
    else:
        row["finished_at"] = e.at
        row["duration_ms"] = e.duration_ms
        row["status"] = tool_status(e)
        row["error"] = e.error
        row["result"] = e.result
    return row


def _tool_key(row: dict[str, Any]) -> ToolKey:
    return (
        row["goal_id"],
        row["task_id"],
        row["idempotency_key"],
        row["dispatch"],
        row["attempt"],
    )


def merge_tool_row(row: dict[str, Any], new: dict[str, Any]) -> None:
    """Merge what a later event of the call says into its row, in place.

    A value the event knows replaces the row's; ``running`` never replaces an
    end already recorded. ``projections.duckdb_view`` merges a batch's rows into
    the file by the same rule.
    """
    for column, value in new.items():
        if value is None and column in row:
            continue
        if column == "status" and value == "running" and row.get(column):
            continue
        row[column] = value


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
