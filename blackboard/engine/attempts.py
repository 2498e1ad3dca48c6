"""A run of a task, decided: who may claim it, what it writes, when it retries.

Pure: the worker (worker.py) does the reading and the writing.

A first delivery of a work message claims on the ``TaskReady`` sequence it
carries (no read). A redelivery folds the task's own events and asks
:func:`decide_claim`: a task that is ready again (a retryable failure) or
claimed from an earlier delivery of this very message (the holder's lease
expired) is taken over with attempt + 1; an older copy of the message than the
one that made the claim is left alone ("theirs": acking it would remove the
message under its holder); anything else is "stale" and acked. A claim past
``max_attempts`` is "exhausted": the final TaskFailed instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from blackboard.log.events import (
    TaskClaimed,
    TaskCompleted,
    TaskFailed,
    TaskNeedsFollowup,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from blackboard.engine.state import TaskState
    from blackboard.log.codec import WorkItem


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim that landed: the run this worker now holds."""

    seq: int
    attempt: int
    approved: bool
    spent: int = 0
    """Attempts of this dispatch that count against max_attempts, this one too."""
    dispatch: int = 1


@dataclass(frozen=True, slots=True)
class TakeOver:
    """Claim the task with this attempt, guarded on its last sequence."""

    attempt: int
    spent: int
    expect: int
    approved: bool
    dispatch: int


@dataclass(frozen=True, slots=True)
class Exhausted:
    """No attempt left: fail the task for good, guarded on its last sequence."""

    expect: int
    attempt: int
    error: str


Decision = TakeOver | Exhausted | Literal["stale", "theirs"]


def decide_claim(
    task: TaskState | None,
    *,
    work_seq: int,
    delivered: int,
    max_attempts: int,
    dispatch: int | None = None,
) -> Decision:
    """What a redelivery of work message ``work_seq`` may do with its task.

    ``dispatch`` is the message's: a task that is ready in a later dispatch
    has a message of its own for it (the scheduler sends it, and re-sends it
    after a restart), so this older one is stale. Otherwise a task that was
    preempted and dispatched again would run from its old place in the lane's
    queue, ahead of the work it gave its slot to.
    """
    if task is None:
        return "stale"
    ours = task.status == "claimed" and task.claim_work_seq == work_seq
    if ours and delivered <= task.claim_delivery:
        return "theirs"
    if task.status != "ready" and not ours:
        return "stale"
    if not ours and dispatch is not None and task.dispatch > dispatch:
        return "stale"
    # Either ready, or an earlier delivery's lease expired: take over.
    # Attempts that ended because the log was unavailable are not spent.
    attempt = task.attempt + 1
    spent = attempt - task.transient
    if spent > max_attempts:
        return Exhausted(
            task.last_seq,
            task.attempt,
            f"attempts exhausted ({spent - 1} of {max_attempts}); "
            f"last error: {task.error}",
        )
    # The task's own dispatch, not the message's: an old copy of the message
    # may claim a task that was dispatched again since.
    return TakeOver(attempt, spent, task.last_seq, task.approved, task.dispatch)


def claimed(
    item: WorkItem, worker: str, work_seq: int, delivered: int, at: datetime
) -> TaskClaimed:
    """The claim of one delivery of a work message, as attempt 1."""
    return TaskClaimed(
        event_id=f"claim:{item.goal_id}:{item.task_id}:{work_seq}:{delivered}",
        goal_id=item.goal_id,
        task_id=item.task_id,
        at=at,
        actor=worker,
        worker=worker,
        attempt=1,
        work_seq=work_seq,
        delivery=delivered,
    )


def failed(
    item: WorkItem,
    worker: str,
    expect: int,
    attempt: int,
    at: datetime,
    *,
    retryable: bool,
    error: str,
    transient: bool = False,
) -> TaskFailed:
    """An attempt's failure, written on the sequence it was claimed at."""
    return TaskFailed(
        event_id=f"failed:{item.goal_id}:{item.task_id}:{expect}",
        goal_id=item.goal_id,
        task_id=item.task_id,
        at=at,
        actor=worker,
        error=error,
        retryable=retryable,
        transient=transient,
        attempt=attempt,
    )


def completed(
    item: WorkItem, worker: str, seq: int, attempt: int, result: object, at: datetime
) -> TaskCompleted:
    """The task's result, written on the attempt's last sequence."""
    return TaskCompleted(
        event_id=f"completed:{item.goal_id}:{item.task_id}:{seq}",
        goal_id=item.goal_id,
        task_id=item.task_id,
        at=at,
        actor=worker,
        result=result,
        attempt=attempt,
    )


def needs_followup(
    item: WorkItem,
    worker: str,
    seq: int,
    attempt: int,
    waiting_on: Sequence[str],
    reason: str,
    at: datetime,
) -> TaskNeedsFollowup:
    """The task waits for its children, then runs again."""
    return TaskNeedsFollowup(
        event_id=f"followup:{item.goal_id}:{item.task_id}:{seq}",
        goal_id=item.goal_id,
        task_id=item.task_id,
        at=at,
        actor=worker,
        waiting_on=tuple(waiting_on),
        attempt=attempt,
        reason=reason,
    )


def backoff_s(attempt: int, base_s: float, cap_s: float) -> float:
    """Delay before the next attempt: ``base * 2^(attempt-1)``, capped."""
    return min(cap_s, base_s * 2.0 ** (attempt - 1))


def transient_backoff_s(attempt: int, base_s: float, cap_s: float) -> float:
    """Delay after the log was unavailable: one step longer, capped at 2^6."""
    return min(cap_s, base_s * 2.0 ** min(attempt, 6))
