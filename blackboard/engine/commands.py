"""What a person (or a program) asks of goals, as data, and what it means. Pure.

Commands are imperatives (``ApproveTask``); the events they produce are facts
(``ApprovalGranted``). ``decide_command(state, cmd, now=..., new_id=...)``
checks a command against the folded state and returns the events to append,
each with its guard, or raises ConfigError saying why it cannot be done. The
edge that reads the log and appends is ``blackboard.engine.control``.

Commands are decoded strictly (``forbid_unknown_fields``): unlike events,
which evolve and are read by newer and older code alike, a command with a
field we do not know is a mistake to refuse, not to ignore.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, assert_never

import msgspec

from blackboard.engine import dag
from blackboard.errors import ConfigError
from blackboard.log.events import (
    ApprovalDenied,
    ApprovalGranted,
    Event,
    GoalCancelled,
    GoalResumed,
    GoalSubmitted,
    Limits,
    TaskCancelled,
    TaskSpec,
)
from blackboard.log.subjects import check_token

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from blackboard.engine.state import BoardState, GoalState

FINAL = frozenset({"done", "failed", "cancelled"})


class Command(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fields every command carries."""

    by: str = ""
    """Who asks (recorded on the events)."""


class SubmitGoal(Command, frozen=True, kw_only=True):
    """Start a goal: a text, and optionally its DAG given up front.

    ``limits`` are the effective ones (the edge merges the configured defaults
    with the submitter's overrides); text and payloads arrive redacted.
    """

    text: str
    limits: Limits
    tasks: tuple[TaskSpec, ...] = ()
    tenant: str = "default"
    priority: int = 0
    goal_id: str | None = None


class ApproveTask(Command, frozen=True, kw_only=True):
    """Let a task that waits for a human run."""

    goal_id: str
    task_id: str
    note: str = ""


class DenyTask(Command, frozen=True, kw_only=True):
    """Refuse a task that waits for a human; it is cancelled."""

    goal_id: str
    task_id: str
    note: str = ""


class ResumeGoal(Command, frozen=True, kw_only=True):
    """Raise a halted goal's limits; its held tasks are admitted again."""

    goal_id: str
    overrides: dict[str, Any] = msgspec.field(default_factory=dict)


class CancelGoal(Command, frozen=True, kw_only=True):
    """Cancel a goal and every open task of it, at once."""

    goal_id: str
    reason: str = ""
    compensate: bool = False
    """Recorded on ``GoalCancelled``: the canceller undoes the goal's
    reversible effects next (the undo itself is not part of the command)."""


AnyCommand = SubmitGoal | ApproveTask | DenyTask | ResumeGoal | CancelGoal
"""Every command."""

Guarded = tuple[Event, int | None]
"""An event to append and the sequence its guard expects (None: unguarded)."""


def decide_command(
    state: BoardState,
    cmd: AnyCommand,
    *,
    now: datetime,
    new_id: Callable[[], str],
) -> list[Guarded]:
    """The events a command produces, given the folded log it is about.

    ``state`` needs only the goal the command names (the edge folds just it).

    Raises:
        NotFound: the goal or task is not in the log.
        ConfigError: the command does not apply (a task not awaiting approval,
            a goal not halted, a goal already over, an invalid DAG or limit).
    """
    actor = f"cli:{cmd.by}"
    if isinstance(cmd, SubmitGoal):
        return [(_submitted(state, cmd, now=now, new_id=new_id, actor=actor), None)]
    goal = state.goals.get(cmd.goal_id)
    if goal is None:
        raise NotFound(f"no goal {cmd.goal_id!r} in the log")
    match cmd:
        case ApproveTask() | DenyTask():
            task = goal.tasks.get(cmd.task_id)
            if task is None:
                raise NotFound(f"no task {cmd.task_id!r} in goal {goal.goal_id}")
            if task.status != "awaiting_approval":
                raise ConfigError(
                    f"task {cmd.task_id} is {task.status}, not awaiting approval"
                )
            cls = ApprovalDenied if isinstance(cmd, DenyTask) else ApprovalGranted
            event: Event = cls(
                event_id=new_id(),
                goal_id=goal.goal_id,
                task_id=cmd.task_id,
                at=now,
                actor=actor,
                by=cmd.by,
                note=cmd.note,
                key=task.approval_key,
            )
            return [(event, task.last_seq)]
        case ResumeGoal():
            if goal.status != "halted":
                raise ConfigError(f"goal {goal.goal_id} is {goal.status}, not halted")
            limits = resolve_limits(goal.limits, cmd.overrides)
            if limits.deadline is not None and limits.deadline <= now:
                when = f"{limits.deadline:%Y-%m-%d %H:%M:%S%z}"
                raise ConfigError(
                    f"goal {goal.goal_id}'s deadline {when} has passed: give a"
                    " later one (--deadline)"
                )
            resumed = GoalResumed(
                event_id=new_id(),
                goal_id=goal.goal_id,
                at=now,
                actor=actor,
                limits=limits,
                by=cmd.by,
            )
            return [(resumed, goal.last_seq)]
        case CancelGoal():
            return _cancel(goal, cmd, now=now, new_id=new_id, actor=actor)
        case _:
            assert_never(cmd)


class NotFound(ConfigError):
    """No such goal or task."""


def _submitted(
    state: BoardState,
    cmd: SubmitGoal,
    *,
    now: datetime,
    new_id: Callable[[], str],
    actor: str,
) -> GoalSubmitted:
    if not cmd.text.strip():
        raise ConfigError("the goal text is empty")
    if cmd.goal_id is not None:
        try:
            check_token(cmd.goal_id, "goal id")
        except ValueError as e:
            raise ConfigError(str(e)) from e
        if cmd.goal_id in state.goals:
            raise ConfigError(f"goal {cmd.goal_id} already exists")
    return GoalSubmitted(
        event_id=new_id(),
        goal_id=cmd.goal_id or new_id(),
        at=now,
        actor=actor,
        text=cmd.text,
        limits=cmd.limits,
        tenant=cmd.tenant,
        priority=cmd.priority,
        submitted_by=cmd.by,
        tasks=tuple(dag.order(cmd.tasks)) if cmd.tasks else (),
    )


def _cancel(
    goal: GoalState,
    cmd: CancelGoal,
    *,
    now: datetime,
    new_id: Callable[[], str],
    actor: str,
) -> list[Guarded]:
    """The goal's cancellation, then a fence for every open task.

    The task events are unguarded on purpose: once in the log, every later
    guarded write of those tasks is refused. Claimed and ready tasks come
    first, so a goal fenced over several batches fences those at once.
    """
    if goal.status in FINAL:
        raise ConfigError(f"goal {goal.goal_id} is already {goal.status}")
    why = cmd.reason or f"cancelled by {cmd.by}"
    open_tasks = sorted(
        (t for t in goal.tasks.values() if t.status not in FINAL),
        key=lambda t: (t.status not in ("claimed", "ready"), t.ordinal),
    )
    out: list[Guarded] = [
        (
            GoalCancelled(
                event_id=new_id(),
                goal_id=goal.goal_id,
                at=now,
                actor=actor,
                reason=why,
                by=cmd.by,
                compensate=cmd.compensate,
            ),
            goal.last_seq,
        )
    ]
    out.extend(
        (
            TaskCancelled(
                event_id=f"cancel:{goal.goal_id}:{t.task_id}",
                goal_id=goal.goal_id,
                task_id=t.task_id,
                at=now,
                actor=actor,
                reason=f"goal cancelled: {why}",
            ),
            None,
        )
        for t in open_tasks
    )
    return out


def resolve_limits(defaults: Limits, overrides: dict[str, Any] | None = None) -> Limits:
    """The goal's limits: the defaults with the given overrides (None: unset).

    The effective limits are written into GoalSubmitted and GoalResumed, so
    the fold never depends on the configuration of whoever reads the log.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for name, value in given.items():
        if name != "deadline" and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    try:
        return msgspec.structs.replace(defaults, **given)
    except TypeError as e:
        raise ConfigError(f"unknown limit: {e}") from e
