"""Undoing what a cancelled or failed goal did: the plan carried out, recorded.

:func:`compensate_goal` reads the goal's log, refuses a goal that is still
open or that is done, makes the undo plan (:mod:`agents.compensation`, pure)
and carries it out:

1. every effect a human has to look at (irreversible calls, side effects with
   no undo, calls whose end was never recorded) is recorded as
   ``CompensationNeeded`` first, so the log says so even if what follows is
   cut short;
2. each reversible effect, newest first, is undone by its compensator with its
   recorded arguments and result, and recorded: ``EffectCompensated`` with
   what the compensator returned, or ``CompensationFailed`` with why; a failed
   undo does not stop the next one.

It runs in the calling process with the tools the workers would build from the
same settings (:class:`agents.toolbox.Toolbox`), so it must run where the
goal's workspace is (``<data_dir>/workspaces/<goal>`` or ``[tools]
workspace_dir``). Running it again does nothing twice: the plan leaves out what
was undone or reported, ``EffectCompensated`` and ``CompensationNeeded`` have
ids derived from the call's key (a concurrent second run's copies are dropped
by the log's deduplication), and the workspace's undo does nothing to a file
already restored.

What the log recorded is redacted. Arguments are what the tool ran with (the
conversation goes on with the redacted answer), but a result may have been
masked: the workspace's undo checks the content it restores against its
sha256 and refuses; for any other tool a result holding the mask is not
trusted, and the call is left to a human.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from agents.compensation import (
    Needed,
    Recorded,
    artifact_path,
    plan,
    summary,
)
from agents.toolbox import Toolbox, artifacts_of, workspace_of
from agents.tools.registry import Invocation, ToolError
from agents.tools.workspace import SOURCE as WORKSPACE
from agents.tools.workspace import undo_write
from blackboard import ids
from blackboard.engine.commands import NotFound
from blackboard.engine.state import fold
from blackboard.errors import ConfigError
from blackboard.log.events import (
    CompensationFailed,
    CompensationNeeded,
    EffectCompensated,
    Event,
)
from blackboard.log.redact import MASK, Redactor

if TYPE_CHECKING:
    from blackboard.log.ports import EventStore
    from blackboard.runtime.config import Settings

__all__ = [
    "COMPENSABLE",
    "ON_FAILURE",
    "CompensationReport",
    "OnFailure",
    "Step",
    "compensate_goal",
    "on_failure_by",
]

log = logging.getLogger("blackboard.compensate")

COMPENSABLE = frozenset({"cancelled", "failed"})
"""The goal statuses whose effects may be undone."""

ON_FAILURE = "policy on_failure"
"""How a compensation the policy ordered names itself (``by``), before the
policy's hash."""


def on_failure_by(settings: Settings) -> str:
    """``by`` of a compensation the policy's ``on_failure`` ordered.

    It names the policy's hash, as every policy decision records which
    version of which policy said so.
    """
    return f"{ON_FAILURE} {settings.policy.hash}"


REDACTED = (
    "its recorded result was redacted: undoing from it could act on the wrong thing"
)


@dataclass(frozen=True, slots=True)
class Step:
    """One undo, as it went."""

    recorded: Recorded
    outcome: Literal["undone", "failed"]
    detail: Any = None
    """What the compensator returned, or the error."""


@dataclass(frozen=True, slots=True)
class CompensationReport:
    """What compensating a goal did, and what is left to a human."""

    goal_id: str
    status: str
    """The goal's status (``cancelled`` or ``failed``)."""
    steps: tuple[Step, ...] = ()
    """Every undo tried, in the order it was tried (newest effect first)."""
    needs_human: tuple[Needed, ...] = ()
    """Effects reported as needing a human by this run, newest first."""
    reported: tuple[Needed, ...] = ()
    """Effects an earlier run reported as needing a human."""
    already_undone: int = 0
    """Effects an earlier run undid."""

    @property
    def failed(self) -> list[Step]:
        """The undos that failed."""
        return [s for s in self.steps if s.outcome == "failed"]

    @property
    def clean(self) -> bool:
        """Every effect of the goal is undone: nothing failed, nothing is left."""
        return not (self.failed or self.needs_human or self.reported)

    @property
    def nothing_to_do(self) -> bool:
        """The goal had nothing to undo and nothing to report, now or before."""
        return not (
            self.steps or self.needs_human or self.reported or self.already_undone
        )

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-able data (``bb compensate --json``)."""
        return {
            "goal_id": self.goal_id,
            "status": self.status,
            "clean": self.clean,
            "steps": [
                {**_recorded_json(s.recorded), "outcome": s.outcome, "detail": s.detail}
                for s in self.steps
            ],
            "needs_human": [
                {**_recorded_json(n.recorded), "reason": n.reason, "reported_before": b}
                for b, items in ((False, self.needs_human), (True, self.reported))
                for n in items
            ],
            "already_undone": self.already_undone,
        }

    def lines(self) -> list[str]:
        """The report for a person: one line per undo, then what needs a human."""
        out: list[str] = []
        for s in self.steps:
            what = f"{s.recorded.name} {_target(s.recorded)}".rstrip()
            where = f"(task {s.recorded.task_id})"
            if s.outcome == "undone":
                out.append(f"undone  {what}: {_done(s.detail)}  {where}")
            else:
                out.append(f"FAILED  {what}: {s.detail}  {where}")
        humans = [(n, "") for n in self.needs_human]
        humans += [(n, " (reported before)") for n in self.reported]
        if humans:
            out.append(f"needs a human ({len(humans)}):")
        for n, before in humans:
            r = n.recorded
            kind = "side effect" if r.origin == "side_effect" else "tool call"
            args = summary(r.arguments, 200)
            out.append(
                f"  {r.name} ({r.effect} {kind}) {args}".rstrip()
                + f"  (task {r.task_id})"
            )
            out.append(f"    {n.reason}{before}")
        return out


def _masked(value: Any) -> bool:
    """Whether redaction masked anything in a recorded value."""
    if isinstance(value, str):
        return MASK in value
    if isinstance(value, dict):
        return any(_masked(k) or _masked(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_masked(v) for v in value)
    return False


def _recorded_json(r: Recorded) -> dict[str, Any]:
    return {
        "task_id": r.task_id,
        "name": r.name,
        "origin": r.origin,
        "key": r.key,
        "effect": r.effect,
        "seq": r.seq,
        # As the events have them: a write's whole content is in the log.
        "arguments": summary(r.arguments),
    }


def _target(r: Recorded) -> str:
    """What the effect acted on, in a word: a path when it has one."""
    if r.origin == "side_effect":
        return ""
    if isinstance(r.arguments, dict) and isinstance(r.arguments.get("path"), str):
        return str(r.arguments["path"])
    return summary(r.arguments, 80)


def _done(detail: Any) -> str:
    if isinstance(detail, dict) and isinstance(detail.get("action"), str):
        return str(detail["action"])
    return summary(detail, 120) or "done"


async def compensate_goal(
    store: EventStore,
    settings: Settings,
    goal_id: str,
    *,
    by: str,
    toolbox: Toolbox | None = None,
) -> CompensationReport:
    """Undo a cancelled or failed goal's reversible effects; report the rest.

    Args:
        store: The log.
        settings: The settings the goal's workers ran with (its tools, its
            workspace and data dir).
        goal_id: The goal.
        by: Who asks (recorded on every event).
        toolbox: The tools to undo with (default: built from ``settings``).

    Raises:
        NotFound: No such goal.
        ConfigError: The goal is still open, or done.
    """
    envs = [env async for env in store.read_goal(goal_id)]
    goal = fold(envs).goals.get(goal_id)
    if goal is None:
        raise NotFound(f"no goal {goal_id!r} in the log")
    if goal.status not in COMPENSABLE:
        hint = (
            "cancel it first (bb cancel --compensate)"
            if goal.status in ("running", "halted")
            else "compensation undoes the effects of a cancelled or failed goal"
        )
        raise ConfigError(f"goal {goal_id} is {goal.status}: {hint}")
    undo = plan(envs)
    runner = _Runner(store, settings, goal_id, by, toolbox or Toolbox(settings))
    for needed in undo.needs_human:
        await runner.needed(needed)
    steps: list[Step] = []
    late: list[Needed] = []
    for recorded in undo.undo:
        outcome = await runner.undo(recorded)
        if isinstance(outcome, Needed):
            late.append(outcome)
        else:
            steps.append(outcome)
    return CompensationReport(
        goal_id=goal_id,
        status=goal.status,
        steps=tuple(steps),
        needs_human=(*undo.needs_human, *late),
        reported=undo.reported,
        already_undone=len(undo.undone),
    )


class OnFailure:
    """``[policy] on_failure = "compensate"``: compensates each goal that fails.

    What ``bb up`` hands the runtime (``inprocess.running(compensator=...)``);
    the report goes to the log, a line per step that did not simply undo.

    Args:
        store: The log.
        settings: The process settings (its tools, its workspaces).
    """

    def __init__(self, store: EventStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.toolbox = Toolbox(settings)

    async def compensate(self, goal_id: str) -> None:
        """Compensate a goal that failed; say what is left to a human."""
        report = await compensate_goal(
            self.store,
            self.settings,
            goal_id,
            by=on_failure_by(self.settings),
            toolbox=self.toolbox,
        )
        if report.nothing_to_do:
            return
        undone = sum(s.outcome == "undone" for s in report.steps)
        log.info("goal %s failed: %d effect(s) undone", goal_id, undone)
        for line in report.lines():
            if not line.startswith("undone"):
                log.warning("goal %s: %s", goal_id, line.strip())


class _Runner:
    """Runs undo steps and records each; one per compensation."""

    def __init__(
        self,
        store: EventStore,
        settings: Settings,
        goal_id: str,
        by: str,
        toolbox: Toolbox,
    ) -> None:
        self.store = store
        self.settings = settings
        self.goal_id = goal_id
        self.by = by
        self.toolbox = toolbox
        try:
            self.redactor = Redactor.from_env(settings.redact, os.environ)
        except ValueError as e:
            raise ConfigError(f"redact: {e}") from e

    def _base(self, r: Recorded, event_id: str) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "goal_id": self.goal_id,
            "task_id": r.task_id,
            "at": ids.utcnow(),
            "actor": f"compensate:{self.by}",
            "name": r.name,
            "idempotency_key": r.key,
            "origin": r.origin,
            "by": self.by,
        }

    async def _append(self, event: Event) -> None:
        # Unguarded: the task is over, and the ids make a second run's copies
        # of the same record duplicates, which the log drops.
        await self.store.append(event)

    async def needed(self, n: Needed) -> None:
        r = n.recorded
        await self._append(
            CompensationNeeded(
                **self._base(r, f"needed:{r.key}"),
                effect=r.effect,
                arguments=summary(r.arguments),
                reason=n.reason,
            )
        )

    async def undo(self, r: Recorded) -> Step | Needed:
        why = self._impossible(r)
        if why is not None:
            n = Needed(r, why)
            await self.needed(n)
            return n
        try:
            async with asyncio.timeout(self.settings.tools.timeout_s):
                result = await self._run(r)
        except TimeoutError:
            error = f"the undo took longer than {self.settings.tools.timeout_s:g}s"
            return await self._failed(r, error)
        except ToolError as e:
            return await self._failed(r, self.redactor.text(str(e)))
        except OSError as e:
            # strerror only: the full message would show the host's paths.
            why = e.strerror or type(e).__name__
            return await self._failed(r, f"cannot undo {r.name}: {why}")
        except Exception as e:  # a user's compensator's bug: recorded, go on
            log.exception("the compensator of %s raised", r.name)
            return await self._failed(r, self.redactor.text(f"{type(e).__name__}: {e}"))
        result = self.redactor.apply(result)
        await self._append(
            EffectCompensated(**self._base(r, f"compensated:{r.key}"), result=result)
        )
        return Step(r, "undone", result)

    async def _failed(self, r: Recorded, error: str) -> Step:
        await self._append(
            CompensationFailed(**self._base(r, ids.new_id()), error=error)
        )
        return Step(r, "failed", error)

    def _impossible(self, r: Recorded) -> str | None:
        """Why the undo can never be done safely, if so: a human must look."""
        tool = self.toolbox.registry.get(r.name) if r.origin == "tool_call" else None
        if tool is not None and tool.source != WORKSPACE and _masked(r.result):
            # The workspace's undo checks what it restores against its sha256;
            # another tool's compensator would take the masked value as true.
            return REDACTED
        return None

    async def _run(self, r: Recorded) -> Any:
        if r.origin == "side_effect":
            path = artifact_path(r.name, r.result)
            if path is None:  # the plan undoes no other side effect
                raise ToolError(f"Blackboard has no undo for the side effect {r.name}")
            root = artifacts_of(self.settings, self.goal_id)
            return await asyncio.to_thread(undo_write, root, path, r.result)
        tool = self.toolbox.registry.get(r.name)
        if tool is None or tool.compensate is None:
            # Maybe the settings differ from the workers': worth another try.
            what = "is not configured here" if tool is None else "has no compensator"
            raise ToolError(
                f"cannot undo {r.name}: the tool {what} (see [tools] in the"
                " settings); fix that and compensate again"
            )
        arguments = r.arguments if isinstance(r.arguments, dict) else {}
        where = Invocation(
            self.goal_id, r.task_id, workspace_of(self.settings, self.goal_id)
        )
        return await tool.compensate(where, dict(arguments), r.result)
