"""The fold: deterministic, and only legal status transitions happen. Pure."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from blackboard.engine.state import LEGAL, BoardState, evolve, fold
from blackboard.log import events as ev
from blackboard.log.codec import Envelope
from tests.factories import at

TASKS = ["a", "b", "c"]
KINDS: list[tuple[type[ev.Event], dict[str, Any]]] = [
    (ev.TaskCreated, {"task_type": "noop", "lane": "local"}),
    (ev.TaskReady, {"dispatch": 1}),
    (ev.TaskClaimed, {"worker": "w", "attempt": 1}),
    (ev.TaskCompleted, {"result": 1}),
    (ev.TaskFailed, {"error": "x", "retryable": True}),
    (ev.TaskFailed, {"error": "x", "retryable": False}),
    (ev.TaskNeedsFollowup, {"waiting_on": ["b"]}),
    (ev.TaskCancelled, {}),
    (ev.TaskHeld, {"guardrail": "max_tasks"}),
    (ev.ApprovalRequested, {}),
    (ev.ApprovalGranted, {}),
    (ev.ApprovalDenied, {}),
    (
        ev.ModelCalled,
        {
            "provider": "p",
            "model": "m",
            "lane": "local",
            "request": {},
            "response": {},
            "tokens_in": 3,
            "tokens_out": 2,
            "cost_usd": 0.5,
        },
    ),
    (ev.SideEffectStarted, {"name": "n", "idempotency_key": "a:n"}),
    (ev.SideEffectCompleted, {"name": "n", "idempotency_key": "a:n"}),
    (ev.GoalHalted, {"guardrail": "max_tasks", "limit": 1, "observed": 2}),
    (ev.GoalResumed, {"limits": {}}),
    (ev.GoalCancelled, {}),
    (ev.TaskCompleted, {"result": 1, "duplicate_of": "a"}),
]

steps = st.lists(
    st.tuples(st.integers(0, len(KINDS) - 1), st.sampled_from(TASKS)), max_size=60
)


def build(script: list[tuple[int, str]]) -> list[Envelope]:
    envs = [
        Envelope(
            1,
            "bb.evt.G._.goal_submitted",
            ev.GoalSubmitted(event_id="g", goal_id="G", at=at(), actor="t", text="x"),
        )
    ]
    for n, (k, task) in enumerate(script, start=2):
        cls, fields = KINDS[k]
        goal_level = cls.__name__.startswith("Goal")
        raw = {
            "event_id": f"e{n}",
            "goal_id": "G",
            "task_id": None if goal_level else task,
            "at": at(n).isoformat(),
            "actor": "t",
            **fields,
        }
        event = msgspec.convert(raw, cls)
        subject = f"bb.evt.G.{'_' if goal_level else task}.{ev.kind(event)}"
        envs.append(Envelope(n, subject, event))  # type: ignore[arg-type]
    return envs


@settings(max_examples=300)
@given(steps)
def test_fold_is_deterministic(script):
    envs = build(script)
    assert _snapshot(fold(envs)) == _snapshot(fold(copy.deepcopy(envs)))


@settings(max_examples=300)
@given(steps)
def test_only_legal_transitions_happen(script):
    state = BoardState()
    for env in build(script):
        before = {t: s.status for t, s in state.goals.get("G", _Empty).tasks.items()}
        evolve(state, env)
        goal = state.goals["G"]
        for tid, task in goal.tasks.items():
            if tid in before and before[tid] != task.status:
                legal = LEGAL[before[tid]] | (
                    {"pending"} if before[tid] == "held" else set()
                )
                assert task.status in legal, (before[tid], task.status, env.event)
        # Terminal tasks are counted out of the open ones exactly once.
        assert goal.open_tasks == sum(
            t.status not in ("done", "failed", "cancelled") for t in goal.tasks.values()
        )


def test_illegal_transition_is_an_anomaly_not_applied():
    envs = build([(0, "a"), (3, "a"), (2, "a")])  # created, completed?!, claimed
    state = fold(envs)
    assert state.goals["G"].tasks["a"].status == "pending"
    assert [a.reason for a in state.anomalies] == [
        "a: pending -> done",
        "a: pending -> claimed",
    ]


def test_only_a_task_that_never_ran_completes_as_a_duplicate():
    dup = len(KINDS) - 1
    state = fold(build([(0, "b"), (dup, "b")]))  # created, duplicate of a
    task = state.goals["G"].tasks["b"]
    assert (task.status, task.result, state.anomalies) == ("done", 1, [])
    state = fold(build([(0, "c"), (1, "c"), (2, "c"), (dup, "c")]))  # claimed
    assert state.goals["G"].tasks["c"].status == "claimed"
    assert [a.reason for a in state.anomalies] == [
        "c: claimed -> done (duplicate of a)"
    ]


def test_events_for_unknown_goals_or_tasks_are_counted_not_fatal():
    envs = build([(1, "zz")])
    state = fold(envs)
    assert state.orphans == 1


def test_tokens_and_cost_add_up_per_goal():
    state = fold(build([(0, "a"), (12, "a"), (12, "a")]))
    goal = state.goals["G"]
    assert goal.tokens == 10 and goal.cost_usd == 1.0
    assert goal.tasks["a"].model_calls == 2


class _Empty:
    tasks: ClassVar[dict[str, Any]] = {}


def _snapshot(state: BoardState) -> Any:
    return repr(state)


def test_only_a_finished_goal_with_nothing_open_is_retired():
    from blackboard.engine.state import retire

    # a: created, ready, claimed, completed; then the goal completes.
    envs = build([(0, "a"), (1, "a"), (2, "a"), (3, "a")])
    state = fold(envs)
    assert not retire(state, "G")  # running
    end = Envelope(
        len(envs) + 1,
        "bb.evt.G._.goal_completed",
        ev.GoalCompleted(event_id="end", goal_id="G", at=at(), actor="t"),
    )
    evolve(state, end)
    assert retire(state, "G")
    assert state.goals == {} and state.retired == {"G": "default"}
    orphans = state.orphans
    # Later events of it are ignored, not orphans; its submission sent again
    # is not a new goal.
    for env in build([(1, "a")]):
        evolve(state, env)
    assert state.goals == {} and state.orphans == orphans
    assert not retire(state, "G")
