"""``bb replay --verify``: does today's code still explain yesterday's goal?

Each recorded attempt of a task is run again through today's handler, in a
context that answers from the log: the model calls return the recorded
answers (no model is called), a side effect returns its recorded result (none
is performed), dependency and child results are those recorded before the
attempt's claim. A tool call returns its recorded result and runs nothing.
What the handler does is compared with what was recorded, in order: each
model request (system prompt, messages, prompt version, max tokens), each tool
call (tool and arguments), then the outcome (the result, the tasks it spawned,
or the error). The first difference of each task is reported, recorded beside
today's.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from agents.handlers import Agents
from agents.lanes import Lanes
from agents.models import ModelClient, ModelRequest, ModelResponse, ToolCall
from agents.toolbox import Toolbox
from blackboard.engine.context import BaseTaskContext, check_unfinished
from blackboard.engine.handlers import BUILTIN, Followup, NeedsApproval, RetryableError
from blackboard.engine.state import GoalState, TaskState, fold, fold_task
from blackboard.engine.transcript import ToolOutcome
from blackboard.log.codec import WorkItem
from blackboard.log.events import (
    ApprovalRequested,
    Event,
    GoalSubmitted,
    Limits,
    ModelCalled,
    SideEffectCompleted,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskNeedsFollowup,
    TaskSpec,
    ToolCallFinished,
    ToolCallStarted,
)
from replay.render import trim_diff
from replay.trace import Attempt, TaskTrace, build_trace

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from agents.ratelimit import Limiter
    from blackboard.engine.handlers import Handler
    from blackboard.engine.transcript import ToolCallRecord
    from blackboard.log.codec import Envelope
    from blackboard.log.ports import SharedState
    from blackboard.runtime.config import Settings

__all__ = ["Divergence", "Report", "verify"]


@dataclass(frozen=True, slots=True)
class Divergence:
    """The first point where today's code acts differently on a task."""

    task_id: str
    attempt: int
    where: str
    recorded: Any
    today: Any
    dispatch: int = 1
    """With ``attempt``, the run (attempts restart at 1 in each dispatch)."""

    def diff(self) -> str:
        """A unified diff of the two, as indented JSON."""
        a = _pretty(self.recorded).splitlines()
        b = _pretty(self.today).splitlines()
        return "\n".join(
            difflib.unified_diff(a, b, "recorded", "today", lineterm="", n=2)
        )


@dataclass(slots=True)
class Report:
    """What --verify found."""

    goal_id: str
    attempts: int = 0
    tasks: int = 0
    skipped: list[str] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-able data."""
        return {
            "goal_id": self.goal_id,
            "tasks_verified": self.tasks,
            "attempts_verified": self.attempts,
            "skipped": self.skipped,
            "ok": not self.divergences,
            "divergences": [
                {
                    "task_id": d.task_id,
                    "attempt": d.attempt,
                    "dispatch": d.dispatch,
                    "where": d.where,
                    "recorded": d.recorded,
                    "today": d.today,
                    "diff": d.diff(),
                }
                for d in self.divergences
            ],
        }

    def text(self) -> str:
        """The report for a terminal."""
        out = [
            f"verify {self.goal_id}: {self.attempts} attempt(s) of {self.tasks} "
            f"task(s) re-run on the recorded answers; no model called, "
            f"no side effect performed"
        ]
        out += [f"  skipped: {s}" for s in self.skipped]
        if not self.divergences:
            out.append("OK: today's code does what was recorded")
            return "\n".join(out) + "\n"
        # The summary first: how many differ, and where; the details after.
        wheres = sorted({d.where.split(":")[0] for d in self.divergences})
        out.append(
            f"DIFFERS: {len(self.divergences)} of {self.tasks} task(s), at "
            + ", ".join(wheres)
        )
        out += [f"  {d.task_id}  {d.where}" for d in self.divergences]
        for d in self.divergences:
            run = f"attempt {d.attempt}" + (
                f" (dispatch {d.dispatch})" if d.dispatch > 1 else ""
            )
            out.append("")
            out.append(f"task {d.task_id} {run}: {d.where}")
            out += ["  " + line for line in trim_diff(d.diff())]
        return "\n".join(out) + "\n"


class _Stop(Exception):
    """Today's handler did something the log has no answer for."""

    def __init__(self, where: str, today: Any) -> None:
        super().__init__(where)
        self.where = where
        self.today = today


class _ToolDiverged(Exception):
    """Today's handler calls another tool, or with other arguments."""

    def __init__(self, index: int, recorded: Any, today: Any) -> None:
        super().__init__(f"tool call {index}")
        self.index = index
        self.recorded = recorded
        self.today = today


class _RecordedModel(ModelClient):
    """Answers with the recorded successful calls of one attempt, in order."""

    provider = "recorded"

    def __init__(self, calls: Sequence[ModelCalled]) -> None:
        self.calls = list(calls)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        if not self.calls:
            raise _Stop("a model call the log does not have", _request(request))
        c = self.calls.pop(0)
        return ModelResponse(
            provider=c.provider,
            model=c.model,
            text=c.text,
            stop_reason=c.stop_reason,
            tokens_in=c.tokens_in,
            tokens_out=c.tokens_out,
            tokens_cached=c.tokens_cached,
            tool_calls=tuple(msgspec.convert(t, ToolCall) for t in c.tool_calls),
            raw=c.response,
            scripted=c.scripted,
        )


class _RecordedLanes(Lanes):
    """The configured lanes, each answering from the recorded calls."""

    def __init__(self, settings: Settings, model: _RecordedModel) -> None:
        super().__init__(settings, env={})
        self.recorded = model

    def chain(self, name: str) -> list[tuple[ModelClient, str]]:
        return [(self.recorded, self.lane(name).model)]

    def limiters(
        self,
        name: str,
        chain: Sequence[tuple[ModelClient, str]],
        shared: SharedState | None = None,
    ) -> dict[tuple[str, str], Limiter]:
        return {}


class _ReplayContext(BaseTaskContext):
    """A task context whose reads come from the log as of the attempt.

    Its writes are collected in ``emitted``, never appended: it needs no store.
    """

    def __init__(
        self,
        envs: list[Envelope],
        task: TaskTrace,
        attempt: Attempt,
        goal: GoalSubmitted,
    ) -> None:
        created = task.created
        item = WorkItem(
            goal_id=created.goal_id,
            task_id=task.task_id,
            lane=created.lane,
            task_type=created.task_type,
            dispatch=attempt.dispatch,
            ready_seq=0,
        )
        super().__init__(
            item,
            worker=attempt.worker,
            attempt=attempt.n,
            seq=attempt.claimed_seq,
            approved=_approved_before(envs, task.task_id, attempt.claimed_seq),
        )
        self._before = [e for e in envs if e.seq <= attempt.claimed_seq]
        self._until = attempt.outcome_seq or attempt.claimed_seq
        self._envs = envs
        self._created = created
        self._submitted = goal
        self.emitted: list[Event] = []
        self._folded: GoalState | None = None
        self.tools_today: list[dict[str, Any]] = []
        # This run's own tool calls (an abandoned run has no outcome to bound
        # it: its events are told apart by their run).
        self.tools = [
            e.event
            for e in envs
            if e.seq > attempt.claimed_seq
            and isinstance(e.event, ToolCallStarted | ToolCallFinished)
            and e.event.task_id == task.task_id
            and (e.event.dispatch, e.event.attempt) == (attempt.dispatch, attempt.n)
        ]

    async def task(self) -> TaskCreated:
        return self._created

    async def goal(self) -> GoalSubmitted:
        return self._submitted

    async def limits(self) -> Limits:
        state = self._goal_state()
        return state.limits if state is not None else self._submitted.limits

    def _goal_state(self) -> GoalState | None:
        # Folded once per attempt: handlers read results more than once.
        if self._folded is None:
            self._folded = fold(self._before).goals.get(self.goal_id)
        return self._folded

    async def results_of(self, task_ids: Sequence[str]) -> dict[str, Any]:
        state = self._goal_state()
        if state is None:
            return {}
        return {
            t: state.tasks[t].result
            for t in task_ids
            if t in state.tasks and state.tasks[t].status == "done"
        }

    async def _task_events(self) -> list[Envelope]:
        return [e for e in self._before if e.event.task_id == self.task_id]

    async def history(self) -> TaskState:
        if self._history is None:
            state = fold_task(self.goal_id, await self._task_events())
            assert state is not None
            self._history = state
        return self._history

    async def tool_call(
        self, call: ToolCallRecord, run: Callable[[], Awaitable[ToolOutcome]]
    ) -> ToolOutcome:
        known = await self.transcript()
        done = known.finished.get(call.key)
        if done is not None:
            return ToolOutcome.recorded(done)  # an earlier run's, as live
        check_unfinished(known, call, approved=self.approved)
        index = len(self.tools_today)
        today = {"tool": call.tool, "arguments": _plain(call.arguments)}
        self.tools_today.append(today)
        started = [e for e in self.tools if isinstance(e, ToolCallStarted)]
        if index >= len(started):
            raise _Stop(f"a tool call the log does not have: {call.tool}", today)
        r = started[index]
        recorded = {"tool": r.tool, "arguments": _plain(r.arguments)}
        if recorded != today:
            raise _ToolDiverged(index, recorded, today)
        finished = next(
            (
                e
                for e in self.tools
                if isinstance(e, ToolCallFinished)
                and e.idempotency_key == r.idempotency_key
            ),
            None,
        )
        if finished is None:
            raise _Stop(f"a tool call that never finished: {call.tool}", today)
        return ToolOutcome.recorded(finished)

    async def goal_results(self) -> dict[str, Any]:
        state = self._goal_state()
        if state is None:
            return {}
        return {t.task_id: t.result for t in state.tasks.values() if t.status == "done"}

    async def append(self, make: Callable[[str], Event]) -> int:
        self.emitted.append(make(f"verify-{len(self.emitted)}"))
        return self.seq

    async def effect(
        self,
        name: str,
        fn: Callable[[], Awaitable[Any]],
        *,
        idempotent: bool = False,
        request: Any = None,
    ) -> Any:
        key = f"{self.task_id}:{name}"
        for env in self._envs:
            e = env.event
            if (
                env.seq <= self._until
                and isinstance(e, SideEffectCompleted)
                and e.idempotency_key == key
            ):
                return e.result
        raise _Stop(f"a side effect the log does not have: {name}", request)


async def verify(
    settings: Settings,
    envs: list[Envelope],
    goal_id: str,
    handlers: dict[str, Handler] | None = None,
) -> Report:
    """Re-run every recorded attempt of a goal; report the first divergences."""
    trace = build_trace(envs, goal_id)
    report = Report(goal_id)
    # Tool calls answer from the log: no MCP server is started to verify.
    no_servers = msgspec.structs.replace(
        settings, tools=msgspec.structs.replace(settings.tools, mcp={})
    )
    if trace.submitted is None:
        return report
    for task in trace.tasks.values():
        diverged = False
        counted = False
        for attempt in task.attempts:
            if attempt.outcome in ("running", "abandoned") and not attempt.calls:
                continue  # it never got to do anything: nothing to compare
            model = _RecordedModel(
                [c.event for c in attempt.calls if c.event.error is None]
            )
            agents = Agents(
                settings, _RecordedLanes(settings, model), Toolbox(no_servers)
            )
            registry = {**BUILTIN, **agents.handlers(), **(handlers or {})}
            handler = registry.get(task.created.task_type)
            if handler is None:
                report.skipped.append(
                    f"{task.task_id}: no handler for type {task.created.task_type!r}"
                )
                break
            ctx = _ReplayContext(envs, task, attempt, trace.submitted)
            found = await _check(envs, task, attempt, ctx, handler, model)
            report.attempts += 1
            counted = True
            if found is not None:
                report.divergences.append(found)
                diverged = True
                break
        if counted or diverged:
            report.tasks += 1
    return report


async def _check(
    envs: list[Envelope],
    task: TaskTrace,
    attempt: Attempt,
    ctx: _ReplayContext,
    handler: Handler,
    model: _RecordedModel,
) -> Divergence | None:
    def diverge(where: str, recorded: Any, today: Any) -> Divergence:
        return Divergence(
            task.task_id, attempt.n, where, recorded, today, attempt.dispatch
        )

    outcome: Any
    try:
        outcome = await handler(ctx)
        kind_ = "followup" if isinstance(outcome, Followup) else "done"
    except _Stop as stop:
        first = _first_call_difference(attempt, ctx)
        if first is not None or attempt.outcome_seq is None:
            # A run that never ended (its worker died) stops where its log
            # does: what it did up to there is all there is to compare.
            return first
        return diverge(f"today's handler makes {stop.where}", None, stop.today)
    except _ToolDiverged as tool:
        return _first_call_difference(attempt, ctx) or diverge(
            f"tool call {tool.index}: {tool.recorded['tool']}",
            tool.recorded,
            tool.today,
        )
    except NeedsApproval as e:
        outcome, kind_ = e.reason, "approval"
    except RetryableError as e:
        outcome, kind_ = f"{type(e).__name__}: {e}", "retry"
    except Exception as e:
        outcome, kind_ = f"{type(e).__name__}: {e}", "failed"
    calls = _first_call_difference(attempt, ctx)
    if calls is not None:
        return calls
    if model.calls:
        return diverge(
            f"today's handler stops after {len(_today_calls(ctx))} model call(s)",
            [_request_of(c.request) for c in model.calls],
            None,
        )
    made = len([e for e in ctx.tools if isinstance(e, ToolCallStarted)])
    if len(ctx.tools_today) < made:
        return diverge(
            f"today's handler stops after {len(ctx.tools_today)} tool call(s)",
            made,
            len(ctx.tools_today),
        )
    recorded = _recorded_outcome(envs, task, attempt)
    if recorded is None:
        return None  # the attempt never finished: nothing to compare with
    r_kind, r_value, r_children = recorded
    if kind_ == "retry" and r_kind == "retrying":
        return None if _same(outcome, r_value) else diverge("error", r_value, outcome)
    if kind_ != r_kind:
        return diverge("outcome", {r_kind: r_value}, {kind_: _plain(outcome)})
    if kind_ == "followup":
        specs = [*ctx.spawned, *outcome.children]
        return _children_difference(task, attempt, r_children, specs)
    if kind_ == "done":
        if not _same(_plain(outcome), r_value):
            return diverge("result", r_value, _plain(outcome))
        return _children_difference(task, attempt, r_children, ctx.spawned)
    if not _same(outcome, r_value):
        return diverge(kind_, r_value, outcome)
    return None


def _today_calls(ctx: _ReplayContext) -> list[ModelCalled]:
    return [e for e in ctx.emitted if isinstance(e, ModelCalled) and e.error is None]


def _first_call_difference(attempt: Attempt, ctx: _ReplayContext) -> Divergence | None:
    recorded = [c.event for c in attempt.calls if c.event.error is None]
    for i, (r, t) in enumerate(zip(recorded, _today_calls(ctx), strict=False)):
        a, b = _request_of(r.request), _request_of(t.request)
        if a != b:
            return Divergence(
                ctx.task_id,
                attempt.n,
                f"model call {i}: the request",
                a,
                b,
                attempt.dispatch,
            )
    return None


def _request_of(request: dict[str, Any]) -> dict[str, Any]:
    """What the handler chose to send (the model may differ by fallback)."""
    return {
        k: request.get(k)
        for k in ("system", "messages", "prompt_version", "max_tokens")
    }


def _request(request: ModelRequest) -> dict[str, Any]:
    return _request_of(msgspec.to_builtins(request))


def _recorded_outcome(
    envs: list[Envelope], task: TaskTrace, attempt: Attempt
) -> tuple[str, Any, list[TaskCreated]] | None:
    if attempt.outcome_seq is None:
        return None
    end = next(e for e in envs if e.seq == attempt.outcome_seq).event
    children = [
        e.event
        for e in envs
        if attempt.claimed_seq < e.seq < attempt.outcome_seq
        and isinstance(e.event, TaskCreated)
        and e.event.parent_id == task.task_id
    ]
    match end:
        case TaskCompleted():
            return "done", _plain(end.result), children
        case TaskNeedsFollowup():
            return "followup", end.waiting_on, children
        case TaskFailed():
            return ("retrying" if end.retryable else "failed"), end.error, []
        case ApprovalRequested():
            return "approval", end.reason, []
        case _:
            return None


def _children_difference(
    task: TaskTrace,
    attempt: Attempt,
    recorded: list[TaskCreated],
    today: Sequence[TaskSpec],
) -> Divergence | None:
    rec_ids = [c.task_id or "" for c in recorded]
    new_ids = [s.task_id for s in today]
    rename = dict(zip(new_ids, rec_ids, strict=False))
    a = [_child(c.task_type, c.lane, c.payload, c.depends_on, {}) for c in recorded]
    b = [_child(s.type, s.lane, s.payload, s.depends_on, rename) for s in today]
    if a != b:
        return Divergence(
            task.task_id, attempt.n, "the tasks it spawns", a, b, attempt.dispatch
        )
    return None


def _child(
    type_: str, lane: str, payload: Any, deps: Sequence[str], rename: dict[str, str]
) -> dict[str, Any]:
    return {
        "type": type_,
        "lane": lane,
        "payload": _plain(payload),
        "depends_on": [rename.get(d, d) for d in deps],
    }


def _approved_before(envs: list[Envelope], task_id: str, seq: int) -> bool:
    state = fold_task(
        envs[0].event.goal_id if envs else "",
        [e for e in envs if e.event.task_id == task_id and e.seq <= seq],
    )
    return state is not None and state.approved


def _plain(value: Any) -> Any:
    """JSON-normalised (tuples become lists, as they do in the log)."""
    if isinstance(value, Followup):
        return {"followup": [s.type for s in value.children]}
    return json.loads(json.dumps(msgspec.to_builtins(value), sort_keys=True))


def _same(a: Any, b: Any) -> bool:
    return bool(_plain(a) == _plain(b))


def _pretty(value: Any) -> str:
    return json.dumps(_plain(value), sort_keys=True, indent=1, ensure_ascii=False)
