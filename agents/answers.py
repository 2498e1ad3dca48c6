"""Reading model answers: JSON plans, verdicts, summaries and NEED lines. Pure.

Models wrap JSON in prose or code fences and get fields wrong; everything here
turns an answer into a typed value or an :class:`InvalidAnswer` that says
precisely what is wrong, which is what the one repair turn shows the model.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal, TypeVar

import msgspec

from blackboard.engine import dag
from blackboard.errors import BlackboardError, InvalidDag
from blackboard.log.events import TaskSpec

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "AggregateAnswer",
    "InvalidAnswer",
    "PlanAnswer",
    "PlannedTask",
    "ReviewAnswer",
    "WorkItem",
    "decode",
    "need_of",
    "plan_specs",
]

T = TypeVar("T")


class InvalidAnswer(BlackboardError, ValueError):
    """A model's answer cannot be used as it is."""


class WorkItem(msgspec.Struct, frozen=True, kw_only=True):
    """A follow-up or fix-up a model asks for."""

    title: str
    instruction: str
    lane: str = "local"


class PlannedTask(msgspec.Struct, frozen=True, kw_only=True):
    """One task of a plan, as the planner names it."""

    id: str
    type: Literal["execute", "review"] = "execute"
    lane: str
    title: str
    instruction: str
    depends_on: tuple[str, ...] = ()
    artifact: str | None = None
    """A file the task's output is written to, once (a recorded side effect)."""


class PlanAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The planner's answer."""

    tasks: tuple[PlannedTask, ...]


class ReviewAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """A reviewer's answer."""

    verdict: Literal["approved", "changes_requested"]
    notes: str = ""
    fixups: tuple[WorkItem, ...] = ()


class AggregateAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The closing answer of a goal."""

    done: bool
    summary: str
    followups: tuple[WorkItem, ...] = ()


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def _json_part(text: str) -> str:
    """The JSON in an answer: a fenced block, else from the first brace."""
    fenced = _FENCE.search(text)
    if fenced:
        return fenced.group(1).strip()
    start = text.find("{")
    end = text.rfind("}")
    if start == -1 or end < start:
        return text.strip()
    return text[start : end + 1]


def decode(text: str, kind: type[T]) -> T:
    """Decode a JSON answer into ``kind``, or raise InvalidAnswer saying why."""
    if not text.strip():
        raise InvalidAnswer("the answer was empty; expected a JSON object")
    try:
        return msgspec.json.decode(_json_part(text), type=kind)
    except msgspec.ValidationError as e:
        raise InvalidAnswer(f"the JSON has the wrong shape: {e}") from e
    except msgspec.DecodeError as e:
        raise InvalidAnswer(f"the answer is not valid JSON: {e}") from e


_NEED = re.compile(r"^\s*NEED:\s*(.+?)\s*$", re.MULTILINE)


def need_of(text: str) -> str | None:
    """What a worker says it is missing (``NEED: ...``), or None."""
    found = _NEED.search(text)
    return found.group(1) if found else None


def plan_specs(
    plan: PlanAnswer,
    *,
    lanes: Sequence[str],
    new_id: Callable[[], str],
    goal: str,
) -> list[TaskSpec]:
    """Turn a plan into task specs, with an ``aggregate`` task after the leaves.

    The planner's ids are local to its answer; each task gets a fresh id and
    its dependencies are renamed to match. Raises InvalidAnswer for an empty
    plan, an unknown lane, a repeated or unknown id, or a cycle.

    A plan larger than the goal's ``max_tasks`` is not an invalid answer: its
    tasks are all created, and the scheduler's guardrail holds the excess and
    halts the goal, which ``bb resume --max-tasks`` continues.
    """
    if not plan.tasks:
        raise InvalidAnswer("the plan has no tasks")
    bad_lanes = sorted({t.lane for t in plan.tasks} - set(lanes))
    if bad_lanes:
        raise InvalidAnswer(
            f"unknown lane(s) {', '.join(bad_lanes)}; use one of {', '.join(lanes)}"
        )
    local = [
        TaskSpec(
            task_id=t.id,
            type=t.type,
            lane=t.lane,
            payload={},
            depends_on=t.depends_on,
        )
        for t in plan.tasks
    ]
    try:
        dag.order(local)
    except InvalidDag as e:
        raise InvalidAnswer(f"the plan's dependencies are invalid: {e}") from e
    ids = {t.id: new_id() for t in plan.tasks}
    depended_on = {d for t in plan.tasks for d in t.depends_on}
    specs = [
        TaskSpec(
            task_id=ids[t.id],
            type=t.type,
            lane=t.lane,
            payload=_payload(t, goal),
            depends_on=tuple(ids[d] for d in t.depends_on),
        )
        for t in plan.tasks
    ]
    leaves = tuple(ids[t.id] for t in plan.tasks if t.id not in depended_on)
    aggregate_lane = "frontier" if "frontier" in lanes else lanes[0]
    specs.append(
        TaskSpec(
            task_id=new_id(),
            type="aggregate",
            lane=aggregate_lane,
            payload={"goal": goal, "title": "summarise the results"},
            depends_on=leaves,
        )
    )
    return specs


def _payload(task: PlannedTask, goal: str) -> dict[str, object]:
    payload: dict[str, object] = {
        "goal": goal,
        "plan_id": task.id,
        "title": task.title,
        "instruction": task.instruction,
    }
    if task.artifact:
        payload["artifact"] = task.artifact
    return payload
