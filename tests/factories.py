"""Small builders of events for tests (fixed times, readable ids)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from blackboard.log import events as ev

T0 = datetime(2026, 1, 1, tzinfo=UTC)
_n = itertools.count(1)


def eid(prefix: str = "e") -> str:
    return f"{prefix}{next(_n):08d}"


def at(i: int = 0) -> datetime:
    return T0 + timedelta(milliseconds=i)


def goal(goal_id: str = "G1", text: str = "do it", **kw: Any) -> ev.GoalSubmitted:
    return ev.GoalSubmitted(
        event_id=eid("gs"), goal_id=goal_id, at=at(), actor="test", text=text, **kw
    )


def created(
    goal_id: str,
    task_id: str,
    *,
    task_type: str = "noop",
    lane: str = "local",
    **kw: Any,
) -> ev.TaskCreated:
    return ev.TaskCreated(
        event_id=eid("tc"),
        goal_id=goal_id,
        task_id=task_id,
        at=at(),
        actor="test",
        task_type=task_type,
        lane=lane,
        **kw,
    )


def claimed(
    goal_id: str, task_id: str, worker: str = "w1", attempt: int = 1
) -> ev.TaskClaimed:
    return ev.TaskClaimed(
        event_id=eid("cl"),
        goal_id=goal_id,
        task_id=task_id,
        at=at(),
        actor=worker,
        worker=worker,
        attempt=attempt,
    )


def completed(goal_id: str, task_id: str, result: Any = "ok") -> ev.TaskCompleted:
    return ev.TaskCompleted(
        event_id=eid("co"),
        goal_id=goal_id,
        task_id=task_id,
        at=at(),
        actor="w1",
        result=result,
    )
