"""The model-backed task handlers: plan, execute, review, aggregate.

The orchestrator is not a process: it is ``plan`` (decompose the goal) and
``aggregate`` (close it), run by frontier workers a handful of times per goal.
``execute`` does the volume on the local lane; a local model that lacks a fact
answers ``NEED: ...`` and the task spawns a frontier task for it and runs
again after it. ``review`` checks work and may ask for fix-ups.

Every model call is a conversation (:meth:`Agents.converse`): the lane's
model is offered the lane's tools, and each tool call it makes is run and its
result sent back, turn after turn, until it answers without tools or reaches
the goal's ``max_turns`` (the goal halts, resumably). Every model call is
recorded as a ``ModelCalled`` event the moment it returns, and every tool call
as a ``ToolCallStarted``/``ToolCallFinished`` pair, before the handler goes on
(the worker's context appends them, guarded), so a crash never loses a
paid-for answer and ``bb replay`` sees every step. A later attempt of the same
task reuses every recorded answer whose request it sends again (by request
hash) and every finished tool call's result: it resumes the conversation
where it stopped, and spends nothing twice.

::

    Exception
    └── UnusableAnswer     a model's answer stayed invalid after one repair
        └── NeedLoop       a task kept answering NEED after it was answered
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import posixpath
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import msgspec

from agents import outcomes
from agents.answers import (
    AggregateAnswer,
    InvalidAnswer,
    PlanAnswer,
    ReviewAnswer,
    WorkItem,
    decode,
    need_of,
    plan_specs,
)
from agents.compensation import ARTIFACT_EFFECT
from agents.governance import Governor
from agents.lanes import Lanes, unpriced
from agents.models import (
    CallRecord,
    Message,
    ModelRequest,
    RetryableModelError,
    TerminalModelError,
    ToolCall,
    ToolResult,
    request_hash,
)
from agents.outcomes import Kind, expected_kind
from agents.prompts import (
    AGGREGATE,
    ANSWERS_HEADER,
    DELIVER,
    EXECUTE,
    EXPECTS,
    FIXUPS_HEADER,
    FOLLOWUPS_HEADER,
    PLAN,
    REDO,
    REDO_TEXT,
    REDO_WRITE,
    REVIEW,
    Prompt,
    as_text,
)
from agents.toolbox import Toolbox, artifacts_of, with_demo_tools
from agents.tools.registry import Invocation, Tool, ToolError, ToolRefused
from agents.tools.workspace import previous_of
from blackboard import ids
from blackboard.engine.handlers import GuardrailBreached, RetryableError
from blackboard.engine.transcript import ToolCallRecord, ToolOutcome
from blackboard.errors import BlackboardError, ConfigError
from blackboard.log.events import BreakerChanged
from blackboard.log.redact import Redactor

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from agents.breaker import Transition
    from blackboard.engine.context import TaskContext
    from blackboard.engine.handlers import Followup, Handler
    from blackboard.log.events import ModelCalled, TaskSpec
    from blackboard.runtime.config import Settings

__all__ = ["MAX_NEEDS", "Agents", "NeedLoop", "UnusableAnswer", "for_worker"]

T = TypeVar("T")

MAX_NEEDS = 2
"""NEED escalations a task may make; one more means it is going in circles."""

RESULT_CHARS = 2000
"""How much of each dependency's result a prompt quotes."""


class UnusableAnswer(BlackboardError):
    """A model's answer stayed unusable after the one repair turn."""


class NeedLoop(UnusableAnswer):
    """A task kept answering NEED after what it asked for was supplied."""


class ModelRefused(BlackboardError):
    """The provider refused the request for good (a 400, a 401...)."""


log = logging.getLogger("blackboard.agents")

CUT_OFF = frozenset({"length", "max_tokens"})
"""Stop reasons (OpenAI's, Anthropic's) of an answer cut off at max_tokens."""

CONVERSE_VERSION = "converse/v1"
"""The prompt version recorded for a handler's own ``ctx.converse`` prompt."""


class _Answer(msgspec.Struct, frozen=True, kw_only=True):
    """One model answer as the conversation goes on with it (as recorded)."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    event_id: str
    """The ``ModelCalled`` event that recorded it."""
    dispatch: int
    attempt: int
    """The run that made the call (a reused answer keeps its own)."""
    stop_reason: str | None = None


class _Conversation(NamedTuple):
    """How a conversation ended."""

    text: str
    """The final answer's text."""
    messages: tuple[Message, ...]
    """Every message before the final answer (tool turns included)."""
    written: dict[str, str]
    """Workspace files its successful ``workspace.write`` calls wrote, by
    normalised path: content (as recorded, so a replay sees the same)."""
    cut_off: bool = False
    """The final answer stopped at the request's ``max_tokens``."""


class Agents:
    """The agent handlers of one process, over its model lanes.

    Args:
        settings: The process settings.
        lanes: The model lanes (default: built from ``settings``); replay's
            ``--verify`` passes lanes that answer from the log.
    """

    def __init__(
        self,
        settings: Settings,
        lanes: Lanes | None = None,
        toolbox: Toolbox | None = None,
    ) -> None:
        self.settings = settings
        self.lanes = lanes if lanes is not None else Lanes(settings)
        self.toolbox = toolbox if toolbox is not None else Toolbox(settings)
        self.governor = Governor(settings.policy, self.lanes.prices)
        missing = unpriced(settings, self.lanes.prices)
        if missing:
            raise ConfigError(
                f"no price for {', '.join(missing)}, and goals have a dollar budget"
                f" ([limits] max_cost_usd = {settings.limits.max_cost_usd:g}): add"
                ' [prices."<model>"] input_per_mtok = ..., output_per_mtok = ...'
                " (zeros for a model you host)"
            )
        try:
            self.redactor = Redactor.from_env(settings.redact, self.lanes.env)
        except ValueError as e:
            raise ConfigError(f"redact: {e}") from e

    def handlers(self) -> dict[str, Handler]:
        """Task type to handler."""
        return {
            "plan": self.plan,
            "execute": self.execute,
            "review": self.review,
            "aggregate": self.aggregate,
        }

    async def start(self) -> None:
        """Start the MCP servers before a first task needs their tools."""
        await self.toolbox.start()

    async def aclose(self) -> None:
        """Close the model clients and stop the MCP servers."""
        try:
            await self.toolbox.aclose()
        finally:
            await self.lanes.aclose()

    # --- asking models ------------------------------------------------------

    async def ask(self, ctx: TaskContext, prompt: Prompt, **values: Any) -> str:
        """A conversation on the task's lane, recorded; the final answer's text."""
        lane = self.lanes.lane(ctx.lane)
        meta = {"task_type": ctx.task_type, "lane": ctx.lane}
        request = prompt.request(lane.model, meta, **values)
        return await self._complete(ctx, request)

    async def converse(
        self,
        ctx: TaskContext,
        prompt: str,
        *,
        system: str = "",
        tools: Sequence[str] | None = None,
        max_tokens: int = 2048,
    ) -> str:
        """A handler's own conversation (``ctx.converse``): the final answer.

        ``tools`` are glob patterns of the tools to offer (default: the
        lane's ``tools`` setting).
        """
        lane = self.lanes.lane(ctx.lane)
        request = ModelRequest(
            model=lane.model,
            system=system,
            messages=(Message("user", prompt),),
            max_tokens=max_tokens,
            prompt_version=CONVERSE_VERSION,
            metadata={"task_type": ctx.task_type, "lane": ctx.lane},
        )
        return await self._complete(ctx, request, tools)

    async def ask_json(
        self,
        ctx: TaskContext,
        prompt: Prompt,
        kind: type[T],
        check: Callable[[T], object] | None = None,
        **values: Any,
    ) -> T:
        """A JSON answer decoded into ``kind`` (and checked), with one repair.

        An invalid answer is shown back to the model with what is wrong, once;
        a second invalid answer raises UnusableAnswer. Both answers are in the
        log as ModelCalled events.
        """
        lane = self.lanes.lane(ctx.lane)
        meta = {"task_type": ctx.task_type, "lane": ctx.lane}
        request = prompt.request(lane.model, meta, **values)
        text = await self._complete(ctx, request)
        try:
            return _checked(text, kind, check)
        except InvalidAnswer as first:
            repair = prompt.repair(lane.model, meta, request, text, str(first))
            again = await self._complete(ctx, repair)
            try:
                return _checked(again, kind, check)
            except InvalidAnswer as second:
                raise UnusableAnswer(
                    f"{prompt.name}: the model's answer was unusable, and again "
                    f"after one repair: {second} (answer: {_clip(again, 300)!r})"
                ) from second

    async def _complete(
        self,
        ctx: TaskContext,
        request: ModelRequest,
        patterns: Sequence[str] | None = None,
    ) -> str:
        """Run the conversation that starts with ``request``; the final text."""
        return (await self._conversation(ctx, request, patterns)).text

    async def _conversation(
        self,
        ctx: TaskContext,
        request: ModelRequest,
        patterns: Sequence[str] | None = None,
    ) -> _Conversation:
        """Run the conversation that starts with ``request``, to its end."""
        if patterns is None:
            patterns = self.lanes.lane(ctx.lane).tools
        offered = await self.toolbox.offered(patterns)
        by_name = {t.name: t for t in offered}
        specs = tuple(t.spec() for t in offered)
        limit = (await ctx.limits()).max_turns or self.settings.limits.max_turns
        cap = self.lanes.lane(ctx.lane).max_tokens
        if cap is not None and cap < request.max_tokens:
            request = msgspec.structs.replace(request, max_tokens=cap)
        request = await self.governor.shape(ctx, request)
        messages = list(request.messages)
        written: dict[str, str] = {}
        turns = 0
        while True:
            sent = msgspec.structs.replace(
                request, messages=tuple(messages), tools=specs
            )
            answer = await self._answer(ctx, sent)
            turns += 1
            if not answer.tool_calls:
                cut = answer.stop_reason in CUT_OFF
                return _Conversation(answer.text, tuple(messages), written, cut)
            if limit is not None and turns >= limit:
                # The answer is recorded: a resumed run reuses it and goes on.
                raise GuardrailBreached("max_turns", limit, turns)
            results = [
                await self._tool(ctx, call, answer, by_name)
                for call in answer.tool_calls
            ]
            written.update(_written(answer.tool_calls, results))
            messages += [
                Message("assistant", answer.text, tool_calls=answer.tool_calls),
                Message("user", "", tool_results=tuple(results)),
            ]

    async def _answer(self, ctx: TaskContext, request: ModelRequest) -> _Answer:
        """An earlier run's recorded answer to this request, else a new call's."""
        known = await ctx.transcript()
        for c in known.answers:
            if c.event_id in known.used:
                continue
            if c.request_hash == request_hash(
                msgspec.structs.replace(request, model=c.model)
            ):
                known.used.add(c.event_id)
                return _Answer(
                    text=c.text,
                    tool_calls=tuple(
                        msgspec.convert(t, ToolCall) for t in c.tool_calls
                    ),
                    event_id=c.event_id,
                    dispatch=c.dispatch,
                    attempt=c.attempt,
                    stop_reason=c.stop_reason,
                )
        return await self._call(ctx, request)

    async def _call(self, ctx: TaskContext, request: ModelRequest) -> _Answer:
        recorded: list[tuple[str, CallRecord]] = []
        # The reservation of the provider call in progress (one at a time).
        held: list[str] = []

        async def before(provider: str, model: str, sent: ModelRequest) -> bool:
            allowed, reservation = await self.governor.before_call(ctx, model, sent)
            held[:] = [reservation] if allowed else []
            return allowed

        async def record(call: CallRecord) -> None:
            index = ctx.calls
            ctx.calls += 1
            clean = self._redacted(call)
            reservation = held.pop() if held else ""

            def make(event_id: str) -> ModelCalled:
                recorded.append((event_id, clean))
                return _model_called(ctx, clean, index, event_id, reservation)

            await ctx.append(make)
            used = call.tokens_in + call.tokens_cached + call.tokens_out
            await ctx.settle(reservation, (used, call.cost_usd))

        async def moved(provider: str, model: str, change: Transition) -> None:
            # In the goal of the task whose call moved it, on its task.
            def make(event_id: str) -> BreakerChanged:
                return BreakerChanged(
                    event_id=event_id,
                    goal_id=ctx.goal_id,
                    task_id=ctx.task_id,
                    at=ids.utcnow(),
                    actor=ctx.worker,
                    provider=provider,
                    model=model,
                    lane=ctx.lane,
                    from_state=change.from_state,
                    to_state=change.to_state,
                    failures=change.failures,
                    reason=self.redactor.text(change.reason),
                )

            await ctx.append(make)

        model = self.lanes.model(
            ctx.lane, record, before, ctx.shared_state(), on_breaker=moved
        )
        try:
            await model.complete(request)
        except RetryableModelError as e:
            raise RetryableError(
                f"{e.message} (status {e.status})", retry_after=e.retry_after
            ) from e
        except TerminalModelError as e:
            raise ModelRefused(
                f"the model refused the request: {self.redactor.text(e.message)}"
            ) from e
        # The conversation goes on with the answer as it is recorded (the
        # last, successful call), so nothing it passes on (a result, the next
        # prompt, a tool's arguments) holds what was redacted, and a resumed
        # run sends exactly the requests this one did.
        event_id, clean = recorded[-1]
        (await ctx.transcript()).used.add(event_id)
        return _Answer(
            text=clean.text,
            tool_calls=tuple(msgspec.convert(t, ToolCall) for t in clean.tool_calls),
            event_id=event_id,
            dispatch=ctx.dispatch,
            attempt=ctx.attempt,
            stop_reason=clean.stop_reason,
        )

    async def _tool(
        self,
        ctx: TaskContext,
        call: ToolCall,
        answer: _Answer,
        by_name: Mapping[str, Tool],
    ) -> ToolResult:
        """Run one tool call once, recorded; its result as the model sees it."""
        tool = by_name.get(call.name)
        record = ToolCallRecord(
            tool=call.name,
            call_id=call.id,
            # The run of the answer that asked: the same in every run reusing it.
            key=f"{ctx.goal_id}:{ctx.task_id}:{answer.dispatch}.{answer.attempt}"
            f":{call.id}",
            arguments=call.arguments,
            # A call to a tool that is not offered runs nothing: nothing to undo.
            effect=tool.effect if tool is not None else "read",
            source=tool.source if tool is not None else "",
            model_call=answer.event_id,
            idempotent=tool.idempotent if tool is not None else True,
        )

        refusal = None
        if tool is not None and record.key not in (await ctx.transcript()).finished:
            # A call a run finished keeps its recorded outcome; the policy is
            # asked about calls still to be made.
            refusal = await self.governor.before_tool(
                ctx, call.name, tool.effect, record.key
            )

        async def run() -> ToolOutcome:
            if refusal is not None:
                return refusal
            if tool is None:
                offered = ", ".join(sorted(by_name)) or "none"
                return ToolOutcome(
                    error=f"unknown tool {call.name!r}; offered: {offered}",
                    refused=True,
                )
            where = Invocation(
                ctx.goal_id, ctx.task_id, self.toolbox.workspace(ctx.goal_id)
            )
            limit = self.settings.tools.timeout_s
            try:
                async with asyncio.timeout(limit):
                    result = _plain(await tool.run(where, dict(call.arguments)))
            except TimeoutError:
                return ToolOutcome(error=f"{call.name} took longer than {limit:g}s")
            except ToolRefused as e:
                return ToolOutcome(error=self.redactor.text(str(e)), refused=True)
            except ToolError as e:
                return ToolOutcome(error=self.redactor.text(str(e)))
            except Exception as e:  # a bug in a tool: the model is told, we log
                log.exception("tool %s raised", call.name)
                return ToolOutcome(error=self.redactor.text(f"{type(e).__name__}: {e}"))
            return ToolOutcome(result=self.redactor.apply(result))

        outcome = await ctx.tool_call(record, run)
        if outcome.error is not None:
            return ToolResult(call_id=call.id, content=outcome.error, is_error=True)
        result = outcome.result
        content = (
            result if isinstance(result, str) else json.dumps(result, sort_keys=True)
        )
        return ToolResult(call_id=call.id, content=content)

    def _redacted(self, call: CallRecord) -> CallRecord:
        """The call as it may be recorded: no keys, no configured patterns."""
        r = self.redactor
        return msgspec.structs.replace(
            call,
            request=r.apply(call.request),
            response=r.apply(call.response),
            text=r.text(call.text),
            tool_calls=tuple(r.apply(list(call.tool_calls))),
            error=r.text(call.error) if call.error is not None else None,
        )

    # --- the handlers -------------------------------------------------------

    async def plan(self, ctx: TaskContext) -> object:
        """Decompose the goal into tasks, and an aggregate after the leaves."""
        goal = await ctx.goal()
        lanes = self.lanes.names
        max_tasks = goal.limits.max_tasks or self.settings.limits.max_tasks
        specs: list[TaskSpec] = []

        def check(plan: PlanAnswer) -> None:
            # Not checked against max_tasks: the scheduler's guardrail holds
            # what is over it and halts the goal, resumably.
            specs[:] = plan_specs(plan, lanes=lanes, new_id=ids.new_id, goal=goal.text)

        plan = await self.ask_json(
            ctx,
            PLAN,
            PlanAnswer,
            check,
            goal=goal.text,
            lanes=", ".join(lanes),
            max_tasks=max_tasks if max_tasks is not None else "no limit on",
        )
        for spec in specs:
            ctx.spawn(spec)
        by_lane: dict[str, int] = {}
        for spec in specs:
            by_lane[spec.lane] = by_lane.get(spec.lane, 0) + 1
        return {
            "title": "plan",
            "tasks": len(specs),
            "by_lane": dict(sorted(by_lane.items())),
            "plan": [t.title for t in plan.tasks],
        }

    async def execute(self, ctx: TaskContext) -> object:
        """Do one well-specified piece of work; escalate what is missing.

        The work must be what the task promises (:mod:`agents.outcomes`): a
        patch that is a diff, JSON that matches its schema, anything but an
        echo of the task. Work that is not gets one redo turn, told what is
        wrong; then it goes to the lane's ``escalate_to`` lane, or the task
        fails, with the reason recorded either way.
        """
        payload = await ctx.payload()
        title = str(payload.get("title", ctx.task_id))
        children = await ctx.children_results()
        handed = _handed_back(ctx.task_id, children)
        if handed is not None:
            return {**handed[1], "title": title, "escalated_to": handed[0]}
        try:
            kind = expected_kind(payload)
        except InvalidAnswer as e:
            raise UnusableAnswer(f"the task cannot be checked: {e}") from e
        artifact = payload.get("artifact")
        if not isinstance(artifact, str) or not artifact:
            artifact = None
        # An agent that can write files delivers the artifact itself.
        writes = artifact is not None and self._offers(ctx, "workspace.write")
        goal = await self._goal_text(ctx, payload)
        instruction = payload.get("instruction", "")
        schema = payload.get("schema")
        schema = schema if isinstance(schema, dict) else None
        lane = self.lanes.lane(ctx.lane)
        meta = {"task_type": ctx.task_type, "lane": ctx.lane}
        values: dict[str, Any] = {
            "goal": goal,
            "title": title,
            "instruction": instruction,
            "expects": EXPECTS[kind].format(
                schema=f" matching this JSON Schema: {as_text(schema)}"
                if schema
                else ""
            ),
            "deliver": DELIVER.format(artifact=artifact) if writes else "",
        }
        request = EXECUTE.request(
            lane.model,
            meta,
            dependencies=_brief(await ctx.dependency_results()),
            answers=(ANSWERS_HEADER + _brief(children) + "\n\n") if children else "",
            **values,
        )
        talk = await self._conversation(ctx, request)
        need = need_of(talk.text)
        if need is not None:
            return await self._escalate_need(ctx, payload, title, need)
        # An answer that only repeats what the model was told (the prompt but
        # for other tasks' results, which work may rightly quote) is no work.
        told = EXECUTE.request("", {}, dependencies="", answers="", **values)
        task = f"{told.system}\n{told.messages[0].content}"
        written = dict(talk.written)
        delivered = artifact if writes else None
        try:
            _work_checked(kind, talk, written, delivered, task=task, schema=schema)
        except InvalidAnswer as first:
            how = (EXPECTS[kind].format(schema="") or REDO_TEXT) + (
                REDO_WRITE.format(artifact=artifact) if writes else ""
            )
            asked = REDO.user.format(error=str(first), how=how)
            if kind == "text":
                # Repeating the redo's own words back is no work either (seen).
                # Structured work is judged by its form: the redo quotes what
                # was wrong, and a right answer may share all its words.
                task = f"{task}\n{asked}"
            redo = ModelRequest(
                model=lane.model,
                system=request.system,
                messages=(
                    *talk.messages,
                    Message("assistant", talk.text),
                    Message("user", asked),
                ),
                max_tokens=request.max_tokens,
                prompt_version=f"{EXECUTE.tag}+{REDO.tag}",
                metadata={**meta, "repair": "1"},
            )
            talk = await self._conversation(ctx, redo)
            written.update(talk.written)
            try:
                _work_checked(kind, talk, written, delivered, task=task, schema=schema)
            except InvalidAnswer as second:
                reason = f"{second} (answer: {_clip(talk.text, 200)!r})"
                return self._escalate_unusable(ctx, payload, lane.escalate_to, reason)
        text = talk.text
        result: dict[str, Any] = {"title": title, "output": text}
        if writes:
            result["artifact"] = {"path": artifact, "in": "workspace"}
        elif artifact is not None:
            written = await ctx.effect(
                f"{ARTIFACT_EFFECT}{artifact}",
                lambda: self._write(ctx.goal_id, artifact, text),
                idempotent=True,
                request={"artifact": artifact, "bytes": len(text.encode())},
            )
            # What the file held before is for compensation, in the log; the
            # task's result (read by later prompts) names the artifact only.
            result["artifact"] = (
                {k: v for k, v in written.items() if k != "previous"}
                if isinstance(written, dict)
                else written
            )
        escalated_from = payload.get("escalated_from")
        if isinstance(escalated_from, str):
            result["escalated_from"] = escalated_from
        return result

    async def _escalate_need(
        self, ctx: TaskContext, payload: Mapping[str, Any], title: str, need: str
    ) -> Followup:
        """Ask the frontier lane for what is missing; run again after it."""
        asked = len((await ctx.history()).children)
        if asked >= MAX_NEEDS:
            raise NeedLoop(
                f"the task answered NEED again after {asked} escalation(s) "
                f"were answered: {need!r}"
            )
        child = ctx.new_task(
            "execute",
            self._lane("frontier"),
            {
                "goal": payload.get("goal", ""),
                "title": f"supply: {_clip(need, 80)}",
                "instruction": (
                    f"A {ctx.lane} worker doing '{title}' is missing this; "
                    f"supply it precisely and briefly: {need}"
                ),
                "need": need,
                "for_task": ctx.task_id,
            },
        )
        return ctx.wait_for(child, reason=f"NEED: {need}")

    def _escalate_unusable(
        self,
        ctx: TaskContext,
        payload: Mapping[str, Any],
        target: str | None,
        reason: str,
    ) -> Followup:
        """Hand work that stayed unusable to ``target``, or fail the task."""
        if target is None or target == ctx.lane or target not in self.lanes.names:
            raise UnusableAnswer(
                f"the work is not what the task promises, and again after one "
                f"redo: {reason}"
            )
        instruction = as_text(payload.get("instruction", ""))
        child = ctx.new_task(
            "execute",
            target,
            {
                **payload,
                "instruction": (
                    f"{instruction}\n(A {ctx.lane} worker's work on this could "
                    f"not be used: {_clip(reason, 300)})"
                ),
                "escalated_from": ctx.task_id,
                "escalation": reason,
                "for_task": ctx.task_id,
            },
        )
        return ctx.wait_for(
            child, reason=f"escalated to {target}: {_clip(reason, 300)}"
        )

    async def review(self, ctx: TaskContext) -> object:
        """Check the work it depends on; ask for fix-ups once if needed."""
        payload = await ctx.payload()
        done = await ctx.children_results()
        answer = await self.ask_json(
            ctx,
            REVIEW,
            ReviewAnswer,
            goal=await self._goal_text(ctx, payload),
            instruction=payload.get("instruction", "check the work"),
            work=_brief(await ctx.dependency_results()),
            fixups=(FIXUPS_HEADER + _brief(done) + "\n\n") if done else "",
        )
        if answer.verdict == "changes_requested" and answer.fixups and not done:
            children = self._items(ctx, payload, answer.fixups, "fix-up")
            return ctx.wait_for(
                *children, reason=f"review asked for {len(children)} fix-up(s)"
            )
        return {
            "title": str(payload.get("title", "review")),
            "verdict": answer.verdict,
            "notes": answer.notes,
            "fixups": len(done),
        }

    async def aggregate(self, ctx: TaskContext) -> object:
        """Summarise the goal's results; spawn follow-ups once if not done."""
        payload = await ctx.payload()
        done = await ctx.children_results()
        results = {k: v for k, v in (await ctx.goal_results()).items() if k not in done}
        answer = await self.ask_json(
            ctx,
            AGGREGATE,
            AggregateAnswer,
            goal=await self._goal_text(ctx, payload),
            results=_brief(results),
            followups=(FOLLOWUPS_HEADER + _brief(done) + "\n\n") if done else "",
        )
        if not answer.done and answer.followups and not done:
            children = self._items(ctx, payload, answer.followups, "follow-up")
            return ctx.wait_for(
                *children, reason=f"aggregate asked for {len(children)} follow-up(s)"
            )
        return {
            "title": "summary",
            "done": answer.done,
            "summary": answer.summary,
            "tasks": len(results) + len(done),
        }

    # --- helpers ------------------------------------------------------------

    def _offers(self, ctx: TaskContext, tool: str) -> bool:
        """Whether the task's lane offers this (built-in or Python) tool."""
        patterns = self.lanes.lane(ctx.lane).tools
        return any(t.name == tool for t in self.toolbox.registry.offered(patterns))

    def _lane(self, wanted: str) -> str:
        names = self.lanes.names
        return wanted if wanted in names else names[0]

    def _items(
        self,
        ctx: TaskContext,
        payload: Mapping[str, Any],
        items: tuple[WorkItem, ...],
        what: str,
    ) -> list[TaskSpec]:
        return [
            ctx.new_task(
                "execute",
                self._lane(item.lane),
                {
                    "goal": payload.get("goal", ""),
                    "title": f"{what}: {item.title}",
                    "instruction": item.instruction,
                    "for_task": ctx.task_id,
                },
            )
            for item in items
        ]

    async def _goal_text(self, ctx: TaskContext, payload: Mapping[str, Any]) -> str:
        goal = payload.get("goal")
        if isinstance(goal, str) and goal:
            return goal
        return (await ctx.goal()).text

    async def _write(self, goal_id: str, artifact: str, text: str) -> dict[str, Any]:
        root = artifacts_of(self.settings, goal_id).resolve()
        path = (root / artifact).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"artifact path {artifact!r} leaves the goal's folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = text.encode()
        # Recorded like workspace.write's, so compensation can put it back.
        # Redacted as a tool's result is: a masked content no longer matches
        # its sha256, and the undo refuses rather than restore it wrong.
        previous = previous_of(path)
        if previous["content"] is not None:
            previous["content"] = self.redactor.text(previous["content"])
        path.write_bytes(data)
        return {
            "path": str(path.relative_to(root)),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "previous": previous,
        }


def for_worker(settings: Settings) -> Agents:
    """The agent of a worker process: scripted ones also get the demo's tools."""
    return Agents(with_demo_tools(settings))


def _checked(text: str, kind: type[T], test: Callable[[T], object] | None) -> T:
    value = decode(text, kind)
    if test is not None:
        test(value)
    return value


def _written(
    calls: Sequence[ToolCall], results: Sequence[ToolResult]
) -> dict[str, str]:
    """What the successful ``workspace.write`` calls of one turn wrote."""
    out: dict[str, str] = {}
    for call, result in zip(calls, results, strict=True):
        path = call.arguments.get("path") if isinstance(call.arguments, dict) else None
        content = (
            call.arguments.get("content") if isinstance(call.arguments, dict) else None
        )
        if (
            call.name == "workspace.write"
            and not result.is_error
            and isinstance(path, str)
            and isinstance(content, str)
        ):
            out[posixpath.normpath(path)] = content
    return out


def _work_checked(
    kind: Kind,
    talk: _Conversation,
    written: Mapping[str, str],
    artifact: str | None,
    *,
    task: str,
    schema: Mapping[str, Any] | None,
) -> None:
    """Raise InvalidAnswer unless the work delivered is what the task promised.

    The work is the artifact the agent wrote (when it was asked to write one:
    then only its summary may have been cut off), else its answer.
    """
    if artifact is None:
        if talk.cut_off:
            raise InvalidAnswer(
                "the answer was cut off at the max_tokens limit; give a shorter,"
                " complete answer"
            )
        outcomes.check(kind, talk.text, task=task, schema=schema)
        return
    content = written.get(posixpath.normpath(artifact))
    if content is None:
        others = ", ".join(f"`{p}`" for p in sorted(written)) or "nothing"
        raise InvalidAnswer(
            f"the file `{artifact}` was not written (written: {others}); write "
            "it with the workspace.write tool"
        )
    try:
        outcomes.check(kind, content, task=task, schema=schema)
    except InvalidAnswer as e:
        raise InvalidAnswer(f"the file `{artifact}`: {e}") from e


def _handed_back(
    task_id: str, children: Mapping[str, Any]
) -> tuple[str, dict[str, Any]] | None:
    """The child this task's work was escalated to, and its result (if done)."""
    for child, result in children.items():
        if isinstance(result, dict) and result.get("escalated_from") == task_id:
            return child, {k: v for k, v in result.items() if k != "escalated_from"}
    return None


def _plain(value: Any) -> Any:
    """A tool's result as JSON-able builtins (what the log can hold)."""
    try:
        return msgspec.to_builtins(value)
    except TypeError as e:
        raise ToolError(f"the tool returned something not JSON-able: {e}") from e


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _brief(results: Mapping[str, Any]) -> str:
    """Results as prompt lines, in task-id order, each clipped."""
    if not results:
        return "(none)"
    lines = []
    for task_id in sorted(results):
        value = results[task_id]
        if isinstance(value, dict):
            title = value.get("title", task_id)
            body = value.get("output", value.get("summary", value.get("notes", value)))
        else:
            title, body = task_id, value
        # Sorted JSON, not repr: the prompt must not depend on key order (a
        # result read back from an export has its keys sorted).
        text = body if isinstance(body, str) else json.dumps(body, sort_keys=True)
        lines.append(f"- {title}: {_clip(text, RESULT_CHARS)}")
    return "\n".join(lines)


def _model_called(
    ctx: TaskContext, call: CallRecord, index: int, event_id: str, reservation: str
) -> ModelCalled:
    event = call.to_event(
        event_id=event_id,
        goal_id=ctx.goal_id,
        task_id=ctx.task_id,
        at=ids.utcnow(),
        actor=ctx.worker,
        lane=ctx.lane,
        call_index=index,
        attempt=ctx.attempt,
        dispatch=ctx.dispatch,
    )
    if not reservation:
        return event
    return msgspec.structs.replace(event, reservation=reservation)
