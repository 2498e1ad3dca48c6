"""One-line summaries of events for ``bb tail`` and progress output. Pure."""

from __future__ import annotations

from typing import TYPE_CHECKING, assert_never

from blackboard.events import (
    AnyEvent,
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
    kind,
)

if TYPE_CHECKING:
    from blackboard.codec import Envelope


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
            return clip(event.reason or f"by {event.by}")
        case GoalHalted():
            return f"{event.guardrail}: {event.observed:g} > limit {event.limit:g}"
        case GoalResumed():
            return f"limits now {_limits(event)}"
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
        case ApprovalRequested():
            return clip(event.reason or event.policy)
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
        case SideEffectStarted():
            return event.name
        case SideEffectCompleted():
            return f"{event.name}: {clip(str(event.result), 40)}"
        case SideEffectFailed():
            return f"{event.name}: {clip(event.error, 40)}"
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
