"""Building events from what the engine knows. Pure.

One builder per event that more than one writer makes (the scheduler's
decisions and a handler's spawns both create tasks), and the small pure rules
the scheduler's decisions share: guardrails, dispatch order, dedupe, a goal's
summary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blackboard.log.events import TaskCreated, TaskSpec

if TYPE_CHECKING:
    from datetime import datetime

    from blackboard.engine.state import GoalState, TaskState


def task_created(
    goal_id: str,
    spec: TaskSpec,
    *,
    at: datetime,
    actor: str,
    max_attempts: int,
    parent: TaskCreated | None = None,
    parent_attempt: int = 0,
    parent_dispatch: int = 0,
) -> TaskCreated:
    """The TaskCreated of a spec: a goal's own task, or a child of ``parent``.

    Its id is ``created:<goal>:<task>`` whoever writes it, so a re-sent
    creation is deduplicated. A child is one level deeper than its parent and
    inherits its attempts unless the spec sets them.
    """
    return TaskCreated(
        event_id=f"created:{goal_id}:{spec.task_id}",
        goal_id=goal_id,
        task_id=spec.task_id,
        at=at,
        actor=actor,
        task_type=spec.type,
        lane=spec.lane,
        payload=spec.payload,
        depends_on=spec.depends_on,
        parent_id=parent.task_id if parent is not None else None,
        parent_attempt=parent_attempt,
        parent_dispatch=parent_dispatch,
        depth=parent.depth + 1 if parent is not None else 0,
        priority=spec.priority,
        dedupe_key=spec.dedupe_key,
        requires_approval=spec.requires_approval,
        max_attempts=spec.max_attempts
        or (parent.max_attempts if parent is not None else max_attempts),
    )


def task_key(task: TaskState) -> str:
    """The key a task's writes are held under while in flight."""
    return f"{task.goal_id}:{task.task_id}"


def consider_order(goal: GoalState, task_id: str) -> tuple[int, int]:
    """Order in which a goal's changed tasks are looked at: priority, age."""
    task = goal.tasks.get(task_id)
    return (0, 0) if task is None else (-task.priority, task.ordinal)


def dedupe_original(goal: GoalState, task: TaskState) -> TaskState | None:
    """The goal's first task with this task's dedupe key, if it is another."""
    if task.dedupe_key is None:
        return None
    same = goal.dedupe.get(task.dedupe_key, [])
    if not same or same[0] == task.task_id:
        return None
    return goal.tasks.get(same[0])


def breach(goal: GoalState, task: TaskState) -> tuple[str, float, float] | None:
    """The guardrail admitting ``task`` would breach: (name, limit, observed)."""
    lim = goal.limits
    if lim.max_depth is not None and task.depth > lim.max_depth:
        return "max_depth", lim.max_depth, task.depth
    if lim.max_tasks is not None and task.ordinal > lim.max_tasks:
        return "max_tasks", lim.max_tasks, task.ordinal
    if lim.max_tokens is not None and goal.tokens > lim.max_tokens:
        return "max_tokens", lim.max_tokens, goal.tokens
    if lim.max_cost_usd is not None and goal.cost_usd > lim.max_cost_usd:
        return "max_cost_usd", lim.max_cost_usd, round(goal.cost_usd, 6)
    return None


def summary(goal: GoalState) -> str:
    """A finished goal's summary: its last aggregate's, else a count."""
    aggregates = [t for t in goal.tasks.values() if t.task_type == "aggregate"]
    if aggregates:
        last = max(aggregates, key=lambda t: t.ordinal)
        result = last.result
        if isinstance(result, dict) and "summary" in result:
            return str(result["summary"])
        return str(result)
    return f"{len(goal.tasks)} task(s) done"
