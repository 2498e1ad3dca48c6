"""decide_command: what each command means, on a folded log. Pure, no server."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count
from typing import TYPE_CHECKING, Any

import pytest

from blackboard.engine.commands import (
    ApproveTask,
    CancelGoal,
    DenyTask,
    NotFound,
    ResumeGoal,
    SubmitGoal,
    decide_command,
)
from blackboard.engine.state import BoardState, fold
from blackboard.errors import ConfigError
from blackboard.log import events as ev
from blackboard.log.codec import Envelope
from blackboard.log.events import Limits, TaskSpec

if TYPE_CHECKING:
    from collections.abc import Callable

NOW = datetime(2026, 1, 1, tzinfo=UTC)
G = "01J0000000000000000000000G"


def ids() -> Callable[[], str]:
    n = count(1)
    return lambda: f"id{next(n)}"


def state_of(*events: ev.AnyEvent) -> BoardState:
    return fold(Envelope(i, "", e) for i, e in enumerate(events, 1))


def base(**kw: Any) -> dict[str, Any]:
    return {"goal_id": G, "at": NOW, "actor": "t", **kw}


SUBMITTED = ev.GoalSubmitted(event_id="s", text="x", limits=Limits(max_tasks=1), **base())


def created(tid: str) -> ev.TaskCreated:
    return ev.TaskCreated(event_id=f"c{tid}", task_id=tid, task_type="t", lane="l",
                          **base())


def test_approve_is_guarded_on_the_task_and_only_when_it_waits():
    s = state_of(SUBMITTED, created("a"),
                 ev.ApprovalRequested(event_id="r", task_id="a", **base()))
    [(event, expect)] = decide_command(
        s, ApproveTask(goal_id=G, task_id="a", by="ana"), now=NOW, new_id=ids())
    assert isinstance(event, ev.ApprovalGranted) and event.by == "ana"
    assert expect == 3
    [(denied, _)] = decide_command(
        s, DenyTask(goal_id=G, task_id="a", note="no"), now=NOW, new_id=ids())
    assert isinstance(denied, ev.ApprovalDenied) and denied.note == "no"
    with pytest.raises(ConfigError, match="not awaiting approval"):
        decide_command(state_of(SUBMITTED, created("a")),
                       ApproveTask(goal_id=G, task_id="a"), now=NOW, new_id=ids())
    with pytest.raises(NotFound):
        decide_command(s, ApproveTask(goal_id=G, task_id="zz"), now=NOW, new_id=ids())


def test_resume_only_a_halted_goal_and_with_valid_limits():
    halted = state_of(SUBMITTED, ev.GoalHalted(event_id="h", guardrail="max_tasks",
                                               limit=1, observed=2, **base()))
    [(event, expect)] = decide_command(
        halted, ResumeGoal(goal_id=G, overrides={"max_tasks": 5}), now=NOW,
        new_id=ids())
    assert isinstance(event, ev.GoalResumed) and event.limits.max_tasks == 5
    assert expect == 2
    with pytest.raises(ConfigError, match="must be positive"):
        decide_command(halted, ResumeGoal(goal_id=G, overrides={"max_tasks": 0}),
                       now=NOW, new_id=ids())
    with pytest.raises(ConfigError, match="not halted"):
        decide_command(state_of(SUBMITTED), ResumeGoal(goal_id=G), now=NOW,
                       new_id=ids())


def test_cancel_fences_open_tasks_claimed_and_ready_first():
    s = state_of(
        SUBMITTED, created("a"), created("b"), created("c"),
        ev.TaskReady(event_id="r", task_id="c", **base()),
        ev.TaskCompleted(event_id="x", task_id="a", **base()),
    )
    out = decide_command(s, CancelGoal(goal_id=G, by="ana"), now=NOW, new_id=ids())
    assert isinstance(out[0][0], ev.GoalCancelled) and out[0][1] == s.goals[G].last_seq
    # "a" was pending -> done is illegal in the fold, so it stays open here.
    fenced = [(e.task_id, x) for e, x in out[1:]]
    assert fenced[0] == ("c", None)  # ready first
    assert all(x is None for _, x in fenced)
    done = state_of(SUBMITTED, ev.GoalCompleted(event_id="d", **base()))
    with pytest.raises(ConfigError, match="already done"):
        decide_command(done, CancelGoal(goal_id=G), now=NOW, new_id=ids())


def test_cancel_records_whether_the_canceller_compensates():
    s = state_of(SUBMITTED)
    [(plain, _)] = decide_command(s, CancelGoal(goal_id=G), now=NOW, new_id=ids())
    [(undo, _)] = decide_command(
        s, CancelGoal(goal_id=G, compensate=True), now=NOW, new_id=ids()
    )
    assert isinstance(plain, ev.GoalCancelled) and not plain.compensate
    assert isinstance(undo, ev.GoalCancelled) and undo.compensate


def test_submit_checks_text_ids_and_dag():
    cmd = SubmitGoal(text="go", limits=Limits(), by="ana",
                     tasks=(TaskSpec(task_id="b", type="t", lane="l", depends_on=("a",)),
                            TaskSpec(task_id="a", type="t", lane="l")))
    [(event, expect)] = decide_command(BoardState(), cmd, now=NOW, new_id=ids())
    assert isinstance(event, ev.GoalSubmitted) and expect is None
    assert [t.task_id for t in event.tasks] == ["a", "b"]  # dependency order
    assert (event.event_id, event.goal_id) == ("id1", "id2")
    with pytest.raises(ConfigError, match="empty"):
        decide_command(BoardState(), SubmitGoal(text=" ", limits=Limits()), now=NOW,
                       new_id=ids())
    with pytest.raises(ConfigError, match="reserved"):
        decide_command(BoardState(), SubmitGoal(text="x", limits=Limits(), goal_id="_"),
                       now=NOW, new_id=ids())
