"""One-line summaries of events for ``bb tail`` and progress output. Pure."""

from __future__ import annotations

from typing import assert_never

from blackboard.engine.state import GoalState, TaskState, counts
from blackboard.log.codec import Envelope, to_builtins
from blackboard.log.events import (
    AnyEvent,
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


def clip(text: str, width: int = 60) -> str:
    """One line of at most ``width`` characters, with an ellipsis if cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def detail(event: AnyEvent) -> str:
    """What a person wants to see of an event, in a few words."""
    match event:
        case GoalSubmitted():
            n = f" ({len(event.tasks)} tasks)" if event.tasks else ""
            return f"{clip(event.text)}{n} by {event.submitted_by}"
        case GoalCompleted():
            return clip(event.summary)
        case GoalFailed():
            return clip(event.reason)
        case GoalCancelled():
            undo = " (compensate)" if event.compensate else ""
            return clip(event.reason or f"by {event.by}") + undo
        case GoalHalted():
            return f"{event.guardrail}: {event.observed:g} > limit {event.limit:g}"
        case GoalResumed():
            return f"limits now {_limits(event)}"
        case GoalThrottled():
            return clip(event.reason)
        case TaskCreated():
            parent = f" parent={event.parent_id}" if event.parent_id else ""
            deps = f" deps={len(event.depends_on)}" if event.depends_on else ""
            return (
                f"{event.task_type} on {event.lane} depth={event.depth}{deps}{parent}"
            )
        case TaskReady():
            return f"dispatch {event.dispatch}"
        case TaskClaimed():
            return f"attempt {event.attempt} by {event.worker}"
        case TaskCompleted():
            return clip(str(event.result))
        case TaskFailed():
            again = "will retry" if event.retryable else "final"
            return f"attempt {event.attempt} ({again}): {clip(event.error)}"
        case TaskNeedsFollowup():
            return f"waits on {len(event.waiting_on)} task(s) {clip(event.reason, 40)}"
        case TaskCancelled():
            return clip(event.reason)
        case TaskHeld():
            return f"{event.guardrail}: {clip(event.reason)}"
        case TaskPreempted():
            return clip(event.reason)
        case ApprovalRequested():
            return clip(event.reason or event.policy)
        case PolicyDecided():
            return f"{event.decision} {event.point} {event.subject}: rule {event.rule}"
        case BudgetEntry():
            return (
                f"{event.op} {event.reservation[-8:]} {event.tokens} tok "
                f"${event.cost_usd:.4f}; spent ${event.spent_usd:.4f}, "
                f"{len(event.held)} held"
            )
        case ApprovalGranted() | ApprovalDenied():
            return f"by {event.by} {clip(event.note, 40)}".strip()
        case ModelCalled():
            tag = " [scripted]" if event.scripted else ""
            err = f" error: {clip(event.error, 40)}" if event.error else ""
            return (
                f"{event.provider}/{event.model}{tag} in={event.tokens_in} "
                f"out={event.tokens_out} ${event.cost_usd:.4f} "
                f"{event.latency_ms:.0f}ms{err}"
            )
        case BreakerChanged():
            return (
                f"{event.provider}/{event.model} breaker {event.from_state} -> "
                f"{event.to_state} ({event.failures} failures) {clip(event.reason, 40)}"
            ).strip()
        case SideEffectStarted():
            return event.name
        case SideEffectCompleted():
            return f"{event.name}: {clip(str(event.result), 40)}"
        case SideEffectFailed():
            return f"{event.name}: {clip(event.error, 40)}"
        case ToolCallStarted():
            return f"{event.tool} ({event.effect}) {clip(str(event.arguments), 40)}"
        case ToolCallFinished():
            if event.error is not None:
                verb = "refused" if event.refused else "error"
                return f"{event.tool} {verb}: {clip(event.error, 40)}"
            return (
                f"{event.tool}: {clip(str(event.result), 40)} {event.duration_ms:.0f}ms"
            )
        case EffectCompensated():
            return f"undid {event.name}: {clip(str(event.result), 40)}"
        case CompensationFailed():
            return f"undo of {event.name} failed: {clip(event.error, 40)}"
        case CompensationNeeded():
            return f"{event.name} needs a human: {clip(event.reason, 40)}"
        case _:
            assert_never(event)


def _limits(event: GoalResumed) -> str:
    lim = event.limits
    parts = [
        f"{name}={value}"
        for name, value in (
            ("depth", lim.max_depth),
            ("tasks", lim.max_tasks),
            ("tokens", lim.max_tokens),
            ("cost", lim.max_cost_usd),
            ("turns", lim.max_turns),
        )
        if value is not None
    ]
    return " ".join(parts) or "unlimited"


def line(env: Envelope) -> str:
    """One line per event: sequence, time, goal, task, kind, detail."""
    e = env.event
    at = e.at.strftime("%H:%M:%S.%f")[:-3]
    return (
        f"{env.seq:>7} {at} {e.goal_id} {e.task_id or '-':<26} "
        f"{kind(e):<20} {detail(e)}"
    )


_MARK = {
    "pending": "·",
    "ready": "○",
    "claimed": "▶",
    "done": "✓",
    "failed": "✗",
    "needs_followup": "↻",
    "awaiting_approval": "?",
    "held": "‖",
    "cancelled": "-",
}


def title(task: TaskState) -> str:
    """What a task is about, for people: its title, else its instruction."""
    for key in ("title", "instruction", "question", "goal"):
        value = task.payload.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip().splitlines()[0]
    return ""


def waiting(goal: GoalState) -> list[TaskState]:
    """The goal's tasks that wait for a human, oldest first."""
    return sorted(
        (t for t in goal.tasks.values() if t.status == "awaiting_approval"),
        key=lambda t: t.ordinal,
    )


def shown_status(goal: GoalState) -> str:
    """The goal's status, saying so when it is held up by an approval."""
    if goal.status == "running" and waiting(goal):
        return "awaiting_approval"
    if goal.status == "running" and goal.throttled is not None:
        return "throttled"
    return goal.status


def goal_tree(goal: GoalState) -> list[str]:
    """The goal's DAG as an indented tree: spawned tasks under their parent."""
    lines = [
        f"goal {goal.goal_id}  {shown_status(goal)}  {clip(goal.text, 70)}",
        f"  tokens {goal.tokens:,}  cost ${goal.cost_usd:.4f}  "
        f"tasks {len(goal.tasks)} ({goal.open_tasks} open)",
    ]
    if goal.reason:
        lines.append(f"  reason: {goal.reason}")
    if goal.status == "running" and goal.throttled is not None:
        lines.append(f"  waiting: {goal.throttled.reason}")
    if goal.summary:
        lines.append(f"  summary: {clip(goal.summary, 100)}")
    roots = [
        t
        for t in goal.tasks.values()
        if not t.parent_id or t.parent_id not in goal.tasks
    ]

    def walk(task: TaskState, depth: int) -> None:
        deps = f" after {','.join(task.depends_on)}" if task.depends_on else ""
        extra = f" attempt {task.attempt}" if task.attempt > 1 else ""
        why = task.error or task.held_reason or task.approval_reason
        tail = f"  {why}" if why and task.status != "done" else ""
        name = title(task)
        about = f" {clip(name, 48)!r}" if name else ""
        lines.append(
            f"  {'  ' * depth}{_MARK.get(task.status, '?')} {task.task_id}{about} "
            f"{task.task_type}@{task.lane} {task.status}{extra}{deps}{tail}"
        )
        for child in task.children:
            if child in goal.tasks:
                walk(goal.tasks[child], depth + 1)

    for root in sorted(roots, key=lambda t: t.ordinal):
        walk(root, 0)
    c = counts(goal)
    lines.append(
        "  by status: " + "  ".join(f"{k} {v}" for k, v in c["by_status"].items())
    )
    lines.append(
        "  by lane:   " + "  ".join(f"{k} {v}" for k, v in c["by_lane"].items())
    )
    return lines


def goal_json(goal: GoalState, *, tasks: bool = True) -> dict[str, object]:
    """A goal's state as JSON-able data (the shape of ``bb status --json``)."""
    out: dict[str, object] = {
        "goal_id": goal.goal_id,
        "status": goal.status,
        "awaiting_approval": [t.task_id for t in waiting(goal)],
        "text": goal.text,
        "reason": goal.reason,
        "summary": goal.summary,
        "limits": to_builtins(goal.limits),
        "tokens": goal.tokens,
        "cost_usd": round(goal.cost_usd, 6),
        "open_tasks": goal.open_tasks,
        "throttled": (
            {
                "quota": goal.throttled.quota,
                "used": goal.throttled.used,
                "limit": goal.throttled.limit,
                "until": goal.throttled.until.isoformat(),
                "reason": goal.throttled.reason,
            }
            if goal.throttled is not None and goal.status == "running"
            else None
        ),
        **counts(goal),
    }
    if tasks:
        out["tasks"] = [
            {
                "task_id": t.task_id,
                "title": title(t),
                "type": t.task_type,
                "lane": t.lane,
                "status": t.status,
                "parent_id": t.parent_id,
                "depends_on": list(t.depends_on),
                "depth": t.depth,
                "dispatch": t.dispatch,
                "attempt": t.attempt,
                "worker": t.worker,
                "error": t.error,
                "result": t.result,
                "children": list(t.children),
            }
            for t in sorted(goal.tasks.values(), key=lambda t: t.ordinal)
        ]
    return out


def goal_row(goal: GoalState) -> str:
    """One line per goal for ``bb status`` with no goal."""
    done = sum(1 for t in goal.tasks.values() if t.status == "done")
    return (
        f"{goal.goal_id}  {shown_status(goal):<9} {done:>5}/{len(goal.tasks):<5} "
        f"${goal.cost_usd:>8.4f}  {clip(goal.text, 50)}"
    )
