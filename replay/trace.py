"""A goal's reasoning trace, folded from its events. Pure.

``build_trace(envelopes)`` gives the DAG as a tree (spawned tasks under their
parent), each task's attempts with worker and timings, each model call with
its prompt and answer, the tool calls its answers asked for, side effects,
NEED escalations, approvals, guardrail
holds and resumes, failures, the compensation of a cancelled or failed goal
(each undo, each failed undo, each effect left to a human, in stream order),
and totals by lane and model (the one usage
summary, :mod:`blackboard.engine.usage`). Statuses come from
the one fold (:mod:`blackboard.engine.state`), so a trace never disagrees with
``bb status``. Nothing here reads a clock or iterates an unordered set: the
same events give the same trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, assert_never

from blackboard.engine.state import fold
from blackboard.engine.usage import Usage, add_call
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
from projections.rows import tool_status

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime

    from blackboard.log.codec import Envelope

__all__ = [
    "Attempt",
    "Call",
    "Compensation",
    "Effect",
    "Note",
    "TaskTrace",
    "ToolUse",
    "Trace",
    "build_trace",
]


@dataclass(slots=True)
class Call:
    """One model call, as recorded."""

    seq: int
    event: ModelCalled


@dataclass(slots=True)
class Effect:
    """One side effect: started, then completed or failed."""

    name: str
    key: str
    started_seq: int
    request: Any = None
    status: str = "started"
    result: Any = None
    error: str | None = None
    finished_seq: int | None = None


@dataclass(slots=True)
class ToolUse:
    """One tool call a model's answer asked for: started, then finished.

    It belongs to the attempt that ran it; the model call that asked for it is
    named by ``model_call`` and, when that call is in the goal's log, found:
    ``call_seq`` and ``call_index`` (an attempt resuming a conversation runs
    calls an earlier attempt's answer asked for).
    """

    key: str
    seq: int
    """The sequence of the call's first event (its start, if recorded)."""
    started: ToolCallStarted | None = None
    finished: ToolCallFinished | None = None
    finished_seq: int | None = None
    call_seq: int | None = None
    call_index: int | None = None
    call_attempt: tuple[int, int] | None = None
    """``(dispatch, attempt)`` of the run whose model call asked for it."""

    @property
    def event(self) -> ToolCallStarted | ToolCallFinished:
        """The call's first event (the start, if recorded)."""
        e = self.started or self.finished
        assert e is not None  # a ToolUse is made from one of them
        return e

    @property
    def status(self) -> str:
        """``running``, ``ok``, ``error`` or ``refused``."""
        return tool_status(self.finished)


@dataclass(slots=True)
class Attempt:
    """One claim of a task and what came of it.

    ``n`` counts claims within the task's dispatch ``dispatch`` (a task made
    ready again after its children starts at 1 again): ``(dispatch, n)`` names
    the run, as span ids and the projection's ``model_calls`` do.
    """

    n: int
    worker: str
    claimed_seq: int
    claimed_at: datetime
    dispatch: int = 1
    finished_at: datetime | None = None
    outcome: str = "running"
    """done, needs_followup, failed, retrying, awaiting_approval, abandoned
    (claimed again with no outcome: the holder died), or running."""
    error: str | None = None
    outcome_seq: int | None = None
    calls: list[Call] = field(default_factory=list)
    tools: list[ToolUse] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    spawned: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Compensation:
    """One step of undoing the goal's effects, as recorded."""

    seq: int
    at: datetime
    task_id: str
    outcome: str
    """``undone``, ``failed`` or ``needs_human``."""
    name: str
    """The tool or side effect."""
    origin: str
    key: str
    """The idempotency key of the call or side effect."""
    detail: Any = None
    """What the compensator returned, the error, or why a human is needed."""
    effect: str | None = None
    arguments: str = ""
    by: str = ""


@dataclass(slots=True)
class Note:
    """Something that happened to a task or goal outside an attempt."""

    seq: int
    at: datetime
    what: str
    detail: str = ""


@dataclass(slots=True)
class TaskTrace:
    """One task, in full."""

    task_id: str
    created: TaskCreated
    created_seq: int
    status: str = "pending"
    result: Any = None
    error: str | None = None
    children: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)
    """What this task said it was missing (NEED), in order."""
    events: list[int] = field(default_factory=list)
    """Sequences of every event of the task."""
    dispatch: int = 0
    """The task's latest dispatch (its last TaskReady) so far in the fold."""

    @property
    def calls(self) -> list[Call]:
        """Every model call of every attempt, in order."""
        return [c for a in self.attempts for c in a.calls]


@dataclass(slots=True)
class Trace:
    """A goal's whole story."""

    goal_id: str
    submitted: GoalSubmitted | None = None
    status: str = "unknown"
    summary: str = ""
    reason: str = ""
    finished_at: datetime | None = None
    tasks: dict[str, TaskTrace] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    compensations: list[Compensation] = field(default_factory=list)
    """Undo steps of any task, in stream order (newest effect undone first)."""
    totals: dict[tuple[str, str], Usage] = field(default_factory=dict)
    """Model usage by lane and model (:mod:`blackboard.engine.usage`)."""
    first_seq: int = 0
    last_seq: int = 0
    events: int = 0

    @property
    def roots(self) -> list[TaskTrace]:
        """Tasks with no parent in the goal, in creation order."""
        return [
            t
            for t in self.tasks.values()
            if not t.created.parent_id or t.created.parent_id not in self.tasks
        ]

    @property
    def cost_usd(self) -> float:
        """What every model call of the goal cost."""
        return sum(t.cost_usd for t in self.totals.values())

    @property
    def tokens(self) -> int:
        """Every token of the goal (input, cached and output)."""
        return sum(t.tokens for t in self.totals.values())


def build_trace(
    envelopes: Iterable[Envelope], goal_id: str | None = None, at: int | None = None
) -> Trace:
    """Fold a goal's envelopes (in stream order) into its trace.

    Args:
        envelopes: The goal's events; others are ignored if ``goal_id`` is given.
        goal_id: The goal (default: the first event's).
        at: Only events up to this stream sequence: the goal as it was then.
    """
    envs = [
        e
        for e in envelopes
        if (goal_id is None or e.event.goal_id == goal_id)
        and (at is None or e.seq <= at)
    ]
    if goal_id is None and envs:
        goal_id = envs[0].event.goal_id
    trace = Trace(goal_id or "")
    for env in envs:
        _apply(trace, env)
    state = fold(envs).goals.get(trace.goal_id)
    if state is not None:
        trace.status = state.status
        trace.summary = state.summary
        trace.reason = state.reason
        trace.finished_at = state.finished_at
        for task_id, task in state.tasks.items():
            tt = trace.tasks.get(task_id)
            if tt is not None:
                tt.status, tt.result, tt.error = task.status, task.result, task.error
                tt.children = list(task.children)
    return trace


def _apply(trace: Trace, env: Envelope) -> None:
    e = env.event
    trace.events += 1
    trace.first_seq = trace.first_seq or env.seq
    trace.last_seq = env.seq
    if e.task_id is None:
        _goal_event(trace, env)
        return
    if isinstance(e, TaskCreated):
        trace.tasks.setdefault(e.task_id, TaskTrace(e.task_id, e, env.seq))
        parent = trace.tasks.get(e.parent_id or "")
        if parent is not None and parent.attempts:
            parent.attempts[-1].spawned.append(e.task_id)
        trace.tasks[e.task_id].events.append(env.seq)
        return
    task = trace.tasks.get(e.task_id)
    if task is None:
        return
    task.events.append(env.seq)
    attempt = task.attempts[-1] if task.attempts else None
    match e:
        case TaskClaimed():
            if attempt is not None and attempt.outcome == "running":
                # Claimed again with no outcome in between: the holder died or
                # was paused past its lease, and its lease went to this claim.
                attempt.outcome = "abandoned"
            task.attempts.append(
                Attempt(e.attempt, e.worker, env.seq, e.at, max(task.dispatch, 1))
            )
        case ModelCalled():
            if attempt is not None:
                attempt.calls.append(Call(env.seq, e))
            add_call(trace.totals, e)
        case SideEffectStarted():
            if attempt is not None:
                attempt.effects.append(
                    Effect(e.name, e.idempotency_key, env.seq, e.request)
                )
        case SideEffectCompleted() | SideEffectFailed():
            effect = _effect(attempt, e.idempotency_key)
            if effect is not None:
                effect.finished_seq = env.seq
                if isinstance(e, SideEffectCompleted):
                    effect.status, effect.result = "completed", e.result
                else:
                    effect.status, effect.error = "failed", e.error
        case ToolCallStarted():
            if attempt is not None:
                use = ToolUse(e.idempotency_key, env.seq, started=e)
                _link(task, use, e.model_call)
                attempt.tools.append(use)
        case ToolCallFinished():
            if attempt is not None:
                ran = _tool(attempt, e.idempotency_key)
                if ran is None:  # its start is not in the log
                    ran = ToolUse(e.idempotency_key, env.seq)
                    attempt.tools.append(ran)
                ran.finished, ran.finished_seq = e, env.seq
        case TaskCompleted():
            if e.duplicate_of is not None:
                task.notes.append(
                    Note(env.seq, e.at, "duplicate", f"of {e.duplicate_of}: its result")
                )
            else:
                _end(attempt, env, "done")
        case TaskNeedsFollowup():
            _end(attempt, env, "needs_followup")
            if e.reason.startswith("NEED:"):
                task.needs.append(e.reason[5:].strip())
        case TaskFailed():
            if attempt is not None and attempt.outcome == "running":
                _end(attempt, env, "retrying" if e.retryable else "failed")
                attempt.error = e.error
            else:
                task.notes.append(Note(env.seq, e.at, "failed", e.error))
        case ApprovalRequested():
            _end(attempt, env, "awaiting_approval")
            task.notes.append(Note(env.seq, e.at, "approval requested", e.reason))
        case ApprovalGranted():
            task.notes.append(Note(env.seq, e.at, "approved", _by(e.by, e.note)))
        case PolicyDecided():
            what = e.decision.replace("_", " ")
            if e.constraints:
                imposed = sorted(e.constraints.items())
                what += " " + ", ".join(f"{k}={v}" for k, v in imposed)
            task.notes.append(
                Note(
                    env.seq,
                    e.at,
                    "policy",
                    f"{e.point} {e.subject}: {what} (rule {e.rule}, {e.policy_hash})"
                    + (f": {e.reason}" if e.reason else ""),
                )
            )
        case ApprovalDenied():
            task.notes.append(Note(env.seq, e.at, "denied", _by(e.by, e.note)))
        case BreakerChanged():
            task.notes.append(
                Note(
                    env.seq,
                    e.at,
                    "breaker",
                    f"{e.provider}/{e.model} {e.from_state} -> {e.to_state}"
                    f" ({e.failures} failures)" + (f": {e.reason}" if e.reason else ""),
                )
            )
        case TaskHeld():
            task.notes.append(
                Note(env.seq, e.at, "held", f"{e.guardrail}: {e.reason}".strip(": "))
            )
        case TaskCancelled():
            task.notes.append(Note(env.seq, e.at, "cancelled", e.reason))
        case TaskPreempted():
            task.notes.append(Note(env.seq, e.at, "preempted", e.reason))
        case EffectCompensated() | CompensationFailed() | CompensationNeeded():
            trace.compensations.append(_compensation(env, e, task.task_id))
        case TaskReady():
            task.dispatch = e.dispatch
            if e.dispatch > 1:
                task.notes.append(
                    Note(env.seq, e.at, "ready again", f"dispatch {e.dispatch}")
                )
        case (
            TaskCreated()
            | GoalSubmitted()
            | GoalCompleted()
            | GoalFailed()
            | GoalCancelled()
            | GoalHalted()
            | GoalResumed()
            | GoalThrottled()
            | BudgetEntry()
        ):
            pass  # a creation is applied above; a goal event names no task
        case _:
            assert_never(e)


def _goal_event(trace: Trace, env: Envelope) -> None:
    e = env.event
    match e:
        case GoalSubmitted():
            trace.submitted = e
        case GoalHalted():
            why = f"{e.guardrail}: limit {_num(e.limit)}, observed {_num(e.observed)}"
            trace.notes.append(Note(env.seq, e.at, "halted", why))
        case GoalResumed():
            limits = ", ".join(
                f"{k} {_num(v)}"
                for k, v in (
                    ("max_depth", e.limits.max_depth),
                    ("max_tasks", e.limits.max_tasks),
                    ("max_tokens", e.limits.max_tokens),
                    ("max_cost_usd", e.limits.max_cost_usd),
                )
                if v is not None
            )
            trace.notes.append(Note(env.seq, e.at, "resumed", _by(e.by, limits)))
        case GoalCancelled():
            what = "cancelled (compensate)" if e.compensate else "cancelled"
            trace.notes.append(Note(env.seq, e.at, what, _by(e.by, e.reason)))
        case GoalCompleted():
            trace.notes.append(Note(env.seq, e.at, "completed", ""))
        case GoalFailed():
            trace.notes.append(Note(env.seq, e.at, "failed", e.reason))
        case GoalThrottled():
            trace.notes.append(Note(env.seq, e.at, "throttled", e.reason))
        case _:
            trace.notes.append(Note(env.seq, e.at, kind(e), ""))


def _compensation(
    env: Envelope,
    e: EffectCompensated | CompensationFailed | CompensationNeeded,
    task_id: str,
) -> Compensation:
    step = Compensation(
        env.seq, e.at, task_id, "undone", e.name, e.origin, e.idempotency_key, by=e.by
    )
    match e:
        case EffectCompensated():
            step.detail = e.result
        case CompensationFailed():
            step.outcome, step.detail = "failed", e.error
        case CompensationNeeded():
            step.outcome, step.detail = "needs_human", e.reason
            step.effect, step.arguments = e.effect, e.arguments
    return step


def _end(attempt: Attempt | None, env: Envelope, outcome: str) -> None:
    if attempt is not None and attempt.outcome == "running":
        attempt.outcome = outcome
        attempt.outcome_seq = env.seq
        attempt.finished_at = env.event.at


def _effect(attempt: Attempt | None, key: str) -> Effect | None:
    if attempt is None:
        return None
    for effect in reversed(attempt.effects):
        if effect.key == key:
            return effect
    return None


def _tool(attempt: Attempt, key: str) -> ToolUse | None:
    for use in reversed(attempt.tools):
        if use.key == key and use.finished is None:
            return use
    return None


def _link(task: TaskTrace, use: ToolUse, model_call: str) -> None:
    """Find the model call that asked for ``use``, in any run of the task."""
    if not model_call:
        return
    for a in reversed(task.attempts):
        for c in a.calls:
            if c.event.event_id == model_call:
                use.call_seq, use.call_index = c.seq, c.event.call_index
                use.call_attempt = (a.dispatch, a.n)
                return


def _by(by: str, text: str) -> str:
    return f"{text} (by {by})" if by else text


def _num(value: float) -> str:
    return f"{value:g}"
