"""``bb replay --otlp``: a past goal's trace, re-emitted with its timings.

The spans get the ids they had when the goal ran (see blackboard/telemetry.py),
so a postmortem in a tracing backend lines up with anything recorded live.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from blackboard.telemetry import Telemetry
    from replay.trace import Trace

__all__ = ["emit"]


def emit(trace: Trace, tm: Telemetry) -> int:
    """Emit the goal's spans; return how many."""
    s = trace.submitted
    if s is None:
        return 0
    n = 0
    last = s.at
    for task in trace.tasks.values():
        c = task.created
        parent = (
            (c.parent_id, c.parent_attempt or 1, c.parent_dispatch)
            if c.parent_id
            else None
        )
        for a in task.attempts:
            end = a.finished_at or a.claimed_at
            last = max(last, end)
            tm.recorded_attempt(
                goal_id=trace.goal_id,
                task_id=task.task_id,
                task_type=c.task_type,
                lane=c.lane,
                worker=a.worker,
                attempt=a.n,
                status=a.outcome,
                start=a.claimed_at,
                end=end,
                dispatch=a.dispatch,
                parent_task=parent,
            )
            n += 1
            for call in a.calls:
                tm.model_span(call.event, dispatch=a.dispatch)
                n += 1
            for use in a.tools:
                # A call still running when the log ends has no span: a
                # live process writes it only once the call finished.
                if use.finished is not None:
                    tm.tool_span(use.started, use.finished)
                    n += 1
    tm.goal_span(
        trace.goal_id,
        s.text,
        trace.status,
        s.at,
        trace.finished_at or last,
        {"bb.tasks": len(trace.tasks), "bb.replayed": True},
    )
    return n + 1
