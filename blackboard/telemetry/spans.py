"""Deterministic trace and span ids of a goal, its runs and its calls. Pure.

Every process, and ``bb replay --otlp`` long after, derives the same ids from
what a span stands for, without asking anyone: the trace id is the goal's
ULID, span ids are hashes of (what, goal, task, run, call index or tool call
key).
"""

from __future__ import annotations

import hashlib

from blackboard.log.ulid import ulid_int


def trace_id_of(goal_id: str) -> int:
    """The goal's trace id: its ULID's 128 bits (a hash for other ids)."""
    try:
        value = ulid_int(goal_id)
    except ValueError:
        value = int.from_bytes(hashlib.sha256(goal_id.encode()).digest()[:16], "big")
    return value or 1


def _span_id(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def root_span_id(goal_id: str) -> int:
    """The span id of a goal's root span."""
    return _span_id("goal", goal_id)


def _run(attempt: int, dispatch: int) -> tuple[int, ...]:
    # A task's first dispatch keeps the ids it always had (so spans recorded
    # before dispatches were told apart still line up); later dispatches, whose
    # attempts start at 1 again, add the dispatch.
    return (attempt,) if dispatch <= 1 else (dispatch, attempt)


def task_span_id(goal_id: str, task_id: str, attempt: int, dispatch: int = 1) -> int:
    """The span id of one run of a task: an attempt of one of its dispatches."""
    return _span_id("task", goal_id, task_id, *_run(attempt, dispatch))


def model_span_id(
    goal_id: str, task_id: str, attempt: int, index: int, dispatch: int = 1
) -> int:
    """The span id of one model call of a run."""
    return _span_id("call", goal_id, task_id, *_run(attempt, dispatch), index)


def tool_span_id(
    goal_id: str, task_id: str, attempt: int, key: str, dispatch: int = 1
) -> int:
    """The span id of one tool call run by a run of a task.

    ``key`` is the call's idempotency key: it names the run whose model answer
    asked for the call, so a call a later run executes again (resuming that
    conversation) has a span of its own.
    """
    return _span_id("tool", goal_id, task_id, *_run(attempt, dispatch), key)


def traceparent(goal_id: str) -> str:
    """The W3C ``traceparent`` of a goal's root span."""
    return f"00-{trace_id_of(goal_id):032x}-{root_span_id(goal_id):016x}-01"
