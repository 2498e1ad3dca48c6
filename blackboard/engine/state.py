"""The fold: current state of every goal and task, derived from the log. Pure.

``evolve(state, envelope)`` applies one event. The scheduler, ``bb status``,
the workers' slow path, the projector and replay all use this one fold, so they
never disagree about what happened.

The state is mutated in place and returned: a goal of 10,000 tasks cannot afford
a copy per event. It is owned by one caller and nothing else is touched, so the
fold stays deterministic: the same events give the same state.

Status transitions follow ``LEGAL``; an event that would make an illegal one
(another client's garbage, say) is recorded in ``anomalies`` and not applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal, assert_never

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
    Limits,
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
)

if TYPE_CHECKING:
    from blackboard.log.codec import Envelope

TaskStatus = Literal[
    "pending",
    "ready",
    "claimed",
    "done",
    "failed",
    "needs_followup",
    "awaiting_approval",
    "held",
    "cancelled",
]
GoalStatus = Literal["running", "halted", "done", "failed", "cancelled"]

TERMINAL: Final[frozenset[str]] = frozenset({"done", "failed", "cancelled"})
OPEN_GOAL: Final[frozenset[str]] = frozenset({"running", "halted"})

LEGAL: Final[dict[str, frozenset[str]]] = {
    # pending -> done only for a duplicate (TaskCompleted.duplicate_of): it
    # takes an earlier task's result and never runs; the fold checks which.
    "pending": frozenset(
        {"ready", "held", "awaiting_approval", "cancelled", "failed", "done"}
    ),
    "held": frozenset({"pending", "cancelled"}),
    "awaiting_approval": frozenset({"pending", "cancelled"}),
    # A retryable failure leaves the task ready: its work item is redelivered.
    # ready -> pending: preempted before a worker claimed it (TaskPreempted).
    "ready": frozenset({"claimed", "cancelled", "failed", "ready", "pending"}),
    "claimed": frozenset(
        {
            "claimed",
            "done",
            "failed",
            "ready",
            "needs_followup",
            "awaiting_approval",
            "cancelled",
            # A guardrail the handler enforces (a conversation's turns).
            "held",
        }
    ),
    "needs_followup": frozenset({"ready", "cancelled", "failed"}),
    "done": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
"""Status -> the statuses it may move to."""


@dataclass(frozen=True, slots=True)
class Approval:
    """A human's answer to one keyed approval request."""

    granted: bool
    by: str = ""
    note: str = ""


@dataclass(slots=True)
class TaskState:
    """What is known of one task."""

    task_id: str
    goal_id: str
    task_type: str
    lane: str
    payload: dict[str, Any]
    depends_on: tuple[str, ...]
    parent_id: str | None
    parent_attempt: int
    depth: int
    priority: int
    requires_approval: bool
    max_attempts: int
    ordinal: int
    created_at: datetime
    parent_dispatch: int = 1
    dedupe_key: str | None = None
    status: TaskStatus = "pending"
    last_seq: int = 0
    ready_seq: int = 0
    preempted: int = 0
    """Times it gave its slot up before a worker claimed it."""
    dispatch: int = 0
    attempt: int = 0
    transient: int = 0
    """Attempts of this dispatch that ended in a transient failure (not spent)."""
    failures: int = 0
    worker: str | None = None
    claim_work_seq: int = 0
    claim_delivery: int = 0
    waiting_on: tuple[str, ...] = ()
    children: list[str] = field(default_factory=list)
    dependents: list[str] = field(default_factory=list)
    approved: bool = False
    approval_reason: str = ""
    approval_key: str = ""
    """What the open approval request is for (empty: the task as a whole)."""
    approval_on_deny: str = "cancel"
    approvals: dict[str, Approval] = field(default_factory=dict)
    """Answers to keyed requests (a tool call, a cost gate), by key."""
    policy_keys: set[str] = field(default_factory=set)
    """Keys of the policy decisions recorded for this task (one record each)."""
    held_reason: str = ""
    result: Any = None
    error: str | None = None
    ready_at: datetime | None = None
    claimed_at: datetime | None = None
    finished_at: datetime | None = None
    tokens_in: int = 0
    """Uncached input tokens of the task's calls (:mod:`blackboard.engine.usage`)."""
    tokens_out: int = 0
    tokens_cached: int = 0
    """Input tokens of the task's calls read from the prompt cache."""
    cost_usd: float = 0.0
    model_calls: int = 0
    effects: dict[str, str] = field(default_factory=dict)
    effect_results: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class GoalState:
    """What is known of one goal."""

    goal_id: str
    text: str
    limits: Limits
    submitted: GoalSubmitted
    status: GoalStatus = "running"
    tasks: dict[str, TaskState] = field(default_factory=dict)
    dedupe: dict[str, list[str]] = field(default_factory=dict)
    """Dedupe key -> its tasks in creation order; the first is the original."""
    open_tasks: int = 0
    tokens: int = 0
    """Every token of the goal's calls: input (cached or not) and output."""
    cost_usd: float = 0.0
    halted_by: str | None = None
    summary: str = ""
    reason: str = ""
    last_seq: int = 0
    finished_at: datetime | None = None
    throttled: GoalThrottled | None = None
    spec_ids: frozenset[str] = frozenset()
    """The ids of the tasks its submission gave (its DAG)."""
    specs_created: int = 0
    """How many of them are created: the scheduler need not look for the
    missing ones once all are (a goal of 100,000 tasks is decided often)."""
    """The tenant quota its ready work waits for, until some goes out."""


@dataclass(slots=True)
class Anomaly:
    """An event the fold refused to apply, and why."""

    seq: int
    event_id: str
    reason: str


@dataclass(slots=True)
class BoardState:
    """Every goal, as of ``last_seq``."""

    goals: dict[str, GoalState] = field(default_factory=dict)
    last_seq: int = 0
    anomalies: list[Anomaly] = field(default_factory=list)
    orphans: int = 0
    retired: dict[str, str] = field(default_factory=dict)
    """Finished goals whose state was let go (:func:`retire`), with their
    tenant: their later events are ignored but for the tenant's usage, and
    their submission is not taken again."""


def _move(state: BoardState, env: Envelope, task: TaskState, to: TaskStatus) -> bool:
    if to == task.status and to not in LEGAL[task.status]:
        return False
    if to not in LEGAL[task.status]:
        state.anomalies.append(
            Anomaly(
                env.seq, env.event.event_id, f"{task.task_id}: {task.status} -> {to}"
            )
        )
        return False
    goal = state.goals[task.goal_id]
    if task.status not in TERMINAL and to in TERMINAL:
        goal.open_tasks -= 1
    task.status = to
    return True


def evolve(state: BoardState, env: Envelope) -> BoardState:
    """Apply one event to the state (in place) and return the state."""
    event = env.event
    state.last_seq = max(state.last_seq, env.seq)
    if isinstance(event, GoalSubmitted):
        if event.goal_id not in state.goals and event.goal_id not in state.retired:
            state.goals[event.goal_id] = GoalState(
                goal_id=event.goal_id,
                text=event.text,
                limits=event.limits,
                submitted=event,
                last_seq=env.seq,
                spec_ids=frozenset(s.task_id for s in event.tasks),
            )
        return state
    goal = state.goals.get(event.goal_id)
    if goal is None:
        # An event for a goal we never saw submitted: count it, never crash.
        if event.goal_id not in state.retired:
            state.orphans += 1
        return state
    if event.task_id is None:
        goal.last_seq = env.seq
        _evolve_goal(goal, event, env)
        return state
    if isinstance(event, TaskCreated):
        if event.task_id not in goal.tasks:
            _create(goal, event, env)
        return state
    task = goal.tasks.get(event.task_id)
    if task is None:
        state.orphans += 1
        return state
    if isinstance(event, TaskReady):
        goal.throttled = None  # its work goes out again
    task.last_seq = env.seq
    _evolve_task(state, goal, task, event, env)
    return state


def _evolve_goal(goal: GoalState, event: AnyEvent, env: Envelope) -> None:
    match event:
        case GoalCompleted():
            goal.status, goal.summary, goal.finished_at = (
                "done",
                event.summary,
                event.at,
            )
        case GoalFailed():
            goal.status, goal.reason, goal.finished_at = (
                "failed",
                event.reason,
                event.at,
            )
        case GoalCancelled():
            goal.status, goal.reason, goal.finished_at = (
                "cancelled",
                event.reason,
                event.at,
            )
        case GoalHalted():
            if goal.status == "running":
                goal.status, goal.halted_by = "halted", event.guardrail
        case GoalThrottled():
            goal.throttled = event
        case GoalResumed():
            goal.limits = event.limits
            if goal.status == "halted":
                goal.status, goal.halted_by = "running", None
            for task in goal.tasks.values():
                if task.status == "held":
                    task.status, task.held_reason = "pending", ""
        case (
            GoalSubmitted()
            | TaskCreated()
            | TaskReady()
            | TaskClaimed()
            | TaskCompleted()
            | TaskFailed()
            | TaskNeedsFollowup()
            | TaskCancelled()
            | TaskHeld()
            | TaskPreempted()
            | ApprovalRequested()
            | ApprovalGranted()
            | ApprovalDenied()
            | PolicyDecided()
            | BudgetEntry()
            | ModelCalled()
            | BreakerChanged()
            | SideEffectStarted()
            | SideEffectCompleted()
            | SideEffectFailed()
            | ToolCallStarted()
            | ToolCallFinished()
            | EffectCompensated()
            | CompensationFailed()
            | CompensationNeeded()
        ):
            # A submission is applied before this point; a task event with no
            # task id (another client's garbage) names no task to apply it to.
            pass
        case _:
            assert_never(event)


def _create(goal: GoalState, event: TaskCreated, env: Envelope) -> None:
    task = TaskState(
        task_id=event.task_id or "",
        goal_id=goal.goal_id,
        task_type=event.task_type,
        lane=event.lane,
        payload=event.payload,
        depends_on=event.depends_on,
        parent_id=event.parent_id,
        parent_attempt=event.parent_attempt,
        parent_dispatch=event.parent_dispatch,
        dedupe_key=event.dedupe_key,
        depth=event.depth,
        priority=event.priority,
        requires_approval=event.requires_approval,
        max_attempts=event.max_attempts,
        ordinal=len(goal.tasks) + 1,
        created_at=event.at,
        last_seq=env.seq,
    )
    goal.tasks[task.task_id] = task
    goal.open_tasks += 1
    if task.task_id in goal.spec_ids:
        goal.specs_created += 1
    if event.dedupe_key is not None:
        goal.dedupe.setdefault(event.dedupe_key, []).append(task.task_id)
    for dep in event.depends_on:
        if dep in goal.tasks:
            goal.tasks[dep].dependents.append(task.task_id)
    parent = goal.tasks.get(event.parent_id or "")
    if parent is not None and task.task_id not in parent.children:
        parent.children.append(task.task_id)


def _evolve_task(
    state: BoardState,
    goal: GoalState,
    task: TaskState,
    event: AnyEvent,
    env: Envelope,
) -> None:
    match event:
        case TaskReady():
            if _move(state, env, task, "ready"):
                task.dispatch, task.ready_seq, task.ready_at = (
                    event.dispatch,
                    env.seq,
                    event.at,
                )
                task.attempt = task.transient = 0  # counted within a dispatch
        case TaskClaimed():
            if _move(state, env, task, "claimed"):
                task.attempt, task.worker, task.claimed_at = (
                    event.attempt,
                    event.worker,
                    event.at,
                )
                task.claim_work_seq = event.work_seq
                task.claim_delivery = event.delivery
        case TaskCompleted():
            if (task.status == "pending") != (event.duplicate_of is not None):
                # Only a duplicate completes without running, and only a task
                # that never ran can be one.
                dup = event.duplicate_of
                state.anomalies.append(
                    Anomaly(
                        env.seq,
                        event.event_id,
                        f"{task.task_id}: {task.status} -> done"
                        + (f" (duplicate of {dup})" if dup else ""),
                    )
                )
            elif _move(state, env, task, "done"):
                task.result, task.finished_at, task.error = event.result, event.at, None
        case TaskFailed():
            to: TaskStatus = "ready" if event.retryable else "failed"
            if _move(state, env, task, to):
                task.error = event.error
                task.failures += 1
                if event.transient:
                    task.transient += 1
                if not event.retryable:
                    task.finished_at = event.at
        case TaskNeedsFollowup():
            if _move(state, env, task, "needs_followup"):
                task.waiting_on = event.waiting_on
                # The children's own events are on their subjects; a reader of
                # this task's subjects alone learns of them here.
                task.children.extend(
                    c for c in event.waiting_on if c not in task.children
                )
        case TaskCancelled():
            if task.status in TERMINAL:
                # A cancellation is a fence written without a guard: it may
                # land just after the task finished. Nothing to undo then.
                return
            if _move(state, env, task, "cancelled"):
                task.error, task.finished_at = event.reason, event.at
        case TaskPreempted():
            if _move(state, env, task, "pending"):
                task.preempted += 1
        case TaskHeld():
            if _move(state, env, task, "held"):
                task.held_reason = event.reason
        case ApprovalRequested():
            if _move(state, env, task, "awaiting_approval"):
                task.approval_reason = event.reason
                task.approval_key, task.approval_on_deny = event.key, event.on_deny
                if not event.key:
                    # A keyed request (one call inside a run) leaves the
                    # task's own approval, if it had one, standing.
                    task.approved = False
        case ApprovalGranted():
            if _move(state, env, task, "pending"):
                if event.key:
                    task.approvals[event.key] = Approval(True, event.by, event.note)
                else:
                    task.approved = True
        case ApprovalDenied():
            if task.approval_on_deny == "resume" and event.key:
                # The run goes on without what was asked for (a denied tool
                # call is an error the model sees).
                if _move(state, env, task, "pending"):
                    task.approvals[event.key] = Approval(False, event.by, event.note)
            elif _move(state, env, task, "cancelled"):
                task.error = f"approval denied by {event.by}: {event.note}".strip()
                task.finished_at = event.at
        case PolicyDecided():
            task.policy_keys.add(event.key)
            lane = event.constraints.get("lane")
            if event.point == "task" and isinstance(lane, str) and lane:
                task.lane = lane
        case BudgetEntry() | BreakerChanged():
            # A breaker's move is about a model, not the task: nothing to apply.
            pass
        case ModelCalled():
            task.model_calls += 1
            task.tokens_in += event.tokens_in
            task.tokens_out += event.tokens_out
            task.tokens_cached += event.tokens_cached
            task.cost_usd += event.cost_usd
            goal.tokens += event.tokens_in + event.tokens_cached + event.tokens_out
            goal.cost_usd += event.cost_usd
        case SideEffectStarted():
            task.effects[event.idempotency_key] = "started"
        case SideEffectCompleted():
            task.effects[event.idempotency_key] = "completed"
            task.effect_results[event.idempotency_key] = event.result
        case SideEffectFailed():
            task.effects[event.idempotency_key] = "failed"
        case ToolCallStarted() | ToolCallFinished():
            # The conversation reads them (blackboard.engine.transcript); the
            # scheduler needs only their sequence, taken above.
            pass
        case EffectCompensated() | CompensationFailed() | CompensationNeeded():
            # Written after the task ended, about its calls: no status moves.
            # The undo plan (agents/compensation.py) folds them itself.
            pass
        case (
            GoalSubmitted()
            | GoalCompleted()
            | GoalFailed()
            | GoalCancelled()
            | GoalHalted()
            | GoalResumed()
            | GoalThrottled()
            | TaskCreated()
        ):
            # Goal-level events and creations are handled before this point;
            # a goal event published on a task subject is an anomaly.
            state.anomalies.append(
                Anomaly(env.seq, event.event_id, "goal event on a task subject")
            )
        case _:
            assert_never(event)


def retire(state: BoardState, goal_id: str) -> bool:
    """Let a finished goal's state go, keeping only that it existed.

    Only a goal that is done or failed with no task open: nothing decides on
    it again (its tasks are terminal, and a terminal status has no way out;
    its end is final). An event that still arrives for it (the unguarded
    model call of a worker paused past its lease) moves only counts that no
    decision reads. A scheduler keeps only the goals it may still decide on,
    so its memory follows the live tasks, not the history; the goal's id and
    tenant stay in ``retired`` (some 150 bytes), so its submission sent again
    is not taken for a new goal and a late call still counts for its
    tenant. Returns whether it was retired.
    """
    goal = state.goals.get(goal_id)
    if goal is None or goal.status not in ("done", "failed") or goal.open_tasks:
        return False
    del state.goals[goal_id]
    state.retired[goal_id] = goal.submitted.tenant
    return True


def fold(envelopes: Any, state: BoardState | None = None) -> BoardState:
    """Fold an iterable of envelopes into a (new or given) state."""
    state = state or BoardState()
    for env in envelopes:
        evolve(state, env)
    return state


def fold_task(goal_id: str, envelopes: Any) -> TaskState | None:
    """Fold one task's events alone (a worker's view of the task it holds)."""
    placeholder = GoalSubmitted(
        event_id="", goal_id=goal_id, at=datetime.min, actor="", text=""
    )
    state = BoardState()
    state.goals[goal_id] = GoalState(
        goal_id=goal_id, text="", limits=Limits(), submitted=placeholder
    )
    fold(envelopes, state)
    tasks = state.goals[goal_id].tasks
    return next(iter(tasks.values()), None)


def deps_done(goal: GoalState, task: TaskState) -> bool:
    """True when every dependency of the task is done."""
    return all(
        (d := goal.tasks.get(dep)) is not None and d.status == "done"
        for dep in task.depends_on
    )


def counts(goal: GoalState) -> dict[str, dict[str, int]]:
    """Tasks by status, and by lane and status."""
    by_status: dict[str, int] = {}
    by_lane: dict[str, int] = {}
    for task in goal.tasks.values():
        by_status[task.status] = by_status.get(task.status, 0) + 1
        key = f"{task.lane}:{task.status}"
        by_lane[key] = by_lane.get(key, 0) + 1
    return {
        "by_status": dict(sorted(by_status.items())),
        "by_lane": dict(sorted(by_lane.items())),
    }
