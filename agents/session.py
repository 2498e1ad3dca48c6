"""Running one goal from the command line: ``bb run`` and ``bb demo``.

Submits the goal, runs the scheduler and the lane workers in this process when
asked to (``bb demo``, and ``bb run`` with no deployment to talk to), follows
the goal's events to show progress, and returns its end state with the model
usage summed from the log.
"""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agents.compensate import CompensationReport, compensate_goal, on_failure_by
from agents.handlers import Agents
from agents.report import Usage, lane_kinds, usage_by_lane_model, usage_json
from agents.toolbox import with_demo_tools, workspace_of
from blackboard import telemetry
from blackboard.engine import control as client
from blackboard.engine import submission as service
from blackboard.engine.handlers import BUILTIN
from blackboard.engine.state import fold
from blackboard.log.events import ToolCallFinished
from blackboard.runtime import connection as runtime
from blackboard.runtime import inprocess as stack

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Mapping

    from blackboard.engine.state import GoalState
    from blackboard.runtime.config import Settings
    from projections.runner import Projector

__all__ = ["DEMO_GOAL", "Outcome", "drive", "unreachable"]

DEMO_GOAL = "Add structured audit logging to every write endpoint of the orders service"
"""The demo's goal; the bundled script plans it into ~30 tasks."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a goal ended."""

    goal: GoalState
    usage: list[Usage]
    tool_calls: int = 0
    """Tool calls the agents made (finished ones, refused included)."""
    workspace: str = ""
    """The goal's workspace directory as this process sees it (may not exist)."""
    compensation: CompensationReport | None = None
    """What ``[policy] on_failure = "compensate"`` undid of a goal that failed here."""

    def as_json(self) -> dict[str, Any]:
        """The outcome as JSON-able data."""
        g = self.goal
        return {
            "goal_id": g.goal_id,
            "status": g.status,
            "summary": g.summary,
            "reason": g.reason,
            "halted_by": g.halted_by,
            "tasks": len(g.tasks),
            "tokens": g.tokens,
            "cost_usd": round(g.cost_usd, 6),
            "usage": [usage_json(u) for u in self.usage],
            "tool_calls": self.tool_calls,
            "workspace": self.workspace,
            "lanes": lane_kinds(self.usage),
            **(
                {"compensation": self.compensation.as_json()}
                if self.compensation is not None
                else {}
            ),
        }


@contextlib.asynccontextmanager
async def _engine(
    store: Any, settings: Settings, projector_db: str | None
) -> AsyncIterator[stack.Stack]:
    agents = Agents(with_demo_tools(settings))
    try:
        async with stack.running(
            store,
            settings,
            {**BUILTIN, **agents.handlers()},
            projector=None if projector_db is None else _projector(store, projector_db),
            agent=agents,
        ) as running:
            yield running
    finally:
        await agents.aclose()


async def drive(
    settings: Settings,
    url: str,
    text: str,
    *,
    in_process: bool,
    overrides: Mapping[str, Any] | None = None,
    submitted_by: str | None = None,
    on_submitted: Callable[[str], None] | None = None,
    on_progress: Callable[[GoalState], None] | None = None,
    projector_db: str | None = None,
) -> Outcome:
    """Submit ``text`` and follow it until it ends or halts."""
    async with runtime.open_store(settings, url, name="bb-run") as store:
        engine = (
            _engine(store, settings, projector_db)
            if in_process
            else contextlib.nullcontext()
        )
        async with engine as running:
            event = service.goal_submitted(
                settings, text, overrides=overrides, submitted_by=submitted_by
            )
            await store.append(event, traceparent=telemetry.traceparent(event.goal_id))
            if on_submitted is not None:
                on_submitted(event.goal_id)

            def progress(goal: GoalState, _: object) -> None:
                if on_progress is not None:
                    on_progress(goal)

            goal = await client.wait_goal(store, event.goal_id, on_batch=progress)
            compensation = None
            if (
                in_process
                and goal.status == "failed"
                and settings.policy.compensates_failures
            ):
                # The engine ran here, so the workspace is here: undo now, and
                # show it with the outcome. A deployment's bb up does its own.
                compensation = await compensate_goal(
                    store, settings, event.goal_id, by=on_failure_by(settings)
                )
            envs = [env async for env in store.read_goal(event.goal_id)]
            if running is not None and running.projector is not None:
                # Stop only once the goal is in the projection, for `bb sql`.
                await running.projector.caught_up(envs[-1].seq)
    goal = fold(envs).goals[event.goal_id]
    return Outcome(
        goal,
        usage_by_lane_model(env.event for env in envs),
        tool_calls=sum(isinstance(env.event, ToolCallFinished) for env in envs),
        workspace=str(workspace_of(settings, event.goal_id)),
        compensation=compensation,
    )


def unreachable(
    settings: Settings, lanes: Iterable[str], timeout_s: float = 2.0
) -> list[str]:
    """Local-lane servers (OpenAI-compatible) that do not answer ``/models``."""
    out: list[str] = []
    for name in lanes:
        lane = settings.lanes[name]
        if lane.provider != "openai-compatible" or not lane.base_url:
            continue
        probe = lane.base_url.rstrip("/") + "/models"
        try:
            with urllib.request.urlopen(probe, timeout=timeout_s):
                pass
        except urllib.error.HTTPError:
            continue  # it answered: a 401 or 404 still means a server is there
        except (OSError, ValueError):
            out.append(
                f"lane {name} ({lane.model}): nothing answers at {lane.base_url};"
                " start vLLM or Ollama there, or set BB_LOCAL_BASE_URL"
            )
    return out


def _projector(store: Any, db: str) -> Projector:
    from projections.runner import Projector

    return Projector(store, db)
