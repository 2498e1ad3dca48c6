"""What a dispatch window allowed, read back from the log."""

from __future__ import annotations

from typing import Any

from blackboard.log.events import TaskCancelled, TaskCompleted, TaskFailed, TaskReady


def most_in_flight(events: list[Any]) -> int:
    """The most tasks ready or running at once, replaying the events in order."""
    flying: set[tuple[str, str]] = set()
    most = 0
    for e in events:
        key = (e.goal_id, e.task_id)
        if isinstance(e, TaskReady):
            flying.add(key)
        elif isinstance(e, TaskCompleted | TaskFailed | TaskCancelled):
            flying.discard(key)
        most = max(most, len(flying))
    return most
