"""The task context a handler receives: its task, its goal, and its powers.

:class:`TaskContext` is the Protocol every handler is written against (and
what ``from blackboard import TaskContext`` gives). Two contexts implement it:
:class:`LiveTaskContext`, which the worker hands a handler, reads the log and
appends to it; ``replay/verify.py``'s reads the log as of a past attempt and
collects what the handler would write. What they share (new task specs,
spawning, waiting, asking for approval) is :class:`BaseTaskContext`.

Every write a live handler makes through the context (a model call, a side
effect, a tool call) is appended to the log at once, guarded on the task's
last sequence: if the worker's lease has expired and another worker took the
task over, the write is refused with ConcurrencyConflict and this attempt
stops.

A handler that wants a model to act (call tools over several turns) asks the
process's agent through :meth:`TaskContext.converse`; the agent records each
tool call through :meth:`TaskContext.tool_call`, which runs a call once and
returns the recorded result ever after.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from blackboard import ids, telemetry
from blackboard.engine import budget, builders, dag
from blackboard.engine.handlers import Followup, NeedsApproval
from blackboard.engine.ledger import Ledger
from blackboard.engine.state import TaskState, fold, fold_task
from blackboard.engine.transcript import (
    ToolCallRecord,
    ToolOutcome,
    Transcript,
    transcript,
)
from blackboard.errors import ConcurrencyConflict, ConfigError, LogUnavailable
from blackboard.log.events import (
    BreakerChanged,
    BudgetHold,
    Event,
    GoalResumed,
    GoalSubmitted,
    Limits,
    ModelCalled,
    SideEffectCompleted,
    SideEffectFailed,
    SideEffectStarted,
    TaskCompleted,
    TaskCreated,
    TaskSpec,
    ToolCallFinished,
    ToolCallStarted,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from blackboard.log.codec import Envelope, WorkItem
    from blackboard.log.ports import EventStore, SharedState


class Agent(Protocol):
    """The process's agent: a model that acts through tools, turn by turn.

    ``agents.handlers.Agents`` is one; the worker hands it to every context.
    """

    async def start(self) -> None:
        """Get ready for a first task: start tool servers.

        Each worker calls it as it starts, beside its first fetch; doing it
        once is the agent's part.
        """
        ...

    async def converse(
        self,
        ctx: TaskContext,
        prompt: str,
        *,
        system: str = "",
        tools: Sequence[str] | None = None,
        max_tokens: int = 2048,
    ) -> str:
        """Talk with the task's lane model until it answers without tools."""
        ...


class TaskContext(Protocol):
    """What a handler knows and may do during one attempt of its task."""

    goal_id: str
    task_id: str
    task_type: str
    lane: str
    worker: str
    attempt: int
    dispatch: int
    """The dispatch this attempt belongs to: ``(dispatch, attempt)`` is the run."""
    approved: bool
    spawned: list[TaskSpec]
    """Tasks to create when this one completes (``spawn``)."""
    calls: int
    """Model calls recorded by this attempt: the next call's index."""

    async def task(self) -> TaskCreated:
        """The TaskCreated event of this task (type, payload, deps, depth)."""
        ...

    async def payload(self) -> dict[str, Any]:
        """The task's payload."""
        ...

    async def goal(self) -> GoalSubmitted:
        """The goal this task serves."""
        ...

    async def limits(self) -> Limits:
        """The goal's limits now: as submitted, or as ``bb resume`` raised them."""
        ...

    async def results_of(self, task_ids: Sequence[str]) -> dict[str, Any]:
        """Results of other tasks of the goal that completed (missing: absent)."""
        ...

    async def dependency_results(self) -> dict[str, Any]:
        """Results of the tasks this one depends on, by task id."""
        ...

    async def history(self) -> TaskState:
        """This task's own events, folded (its calls, effects and attempts)."""
        ...

    async def goal_results(self) -> dict[str, Any]:
        """Results of every task of the goal that completed, by task id."""
        ...

    async def children_results(self) -> dict[str, Any]:
        """Results of the tasks this one spawned, by task id."""
        ...

    def new_task(
        self,
        task_type: str,
        lane: str,
        payload: dict[str, Any] | None = None,
        *,
        depends_on: Sequence[str] = (),
        requires_approval: bool = False,
        priority: int = 0,
        dedupe_key: str | None = None,
    ) -> TaskSpec:
        """A spec for a new task of this goal, with a fresh id."""
        ...

    def spawn(self, spec: TaskSpec) -> str:
        """Create a task when this one completes, without waiting for it."""
        ...

    def wait_for(self, *children: TaskSpec, reason: str = "") -> Followup:
        """Return this from the handler: spawn children, run again after them."""
        ...

    def request_approval(self, reason: str) -> None:
        """Stop here until a human approves; the handler runs again after."""
        ...

    async def append(self, make: Callable[[str], Event]) -> int:
        """Record an event on this task; ``make`` gets the event id."""
        ...

    async def effect(
        self,
        name: str,
        fn: Callable[[], Awaitable[Any]],
        *,
        idempotent: bool = False,
        request: Any = None,
    ) -> Any:
        """Perform a side effect once, and record it."""
        ...

    async def transcript(self) -> Transcript:
        """This task's recorded model answers and tool calls, across its runs."""
        ...

    async def tool_call(
        self, call: ToolCallRecord, run: Callable[[], Awaitable[ToolOutcome]]
    ) -> ToolOutcome:
        """Run a tool call once, recorded; a finished one returns its record."""
        ...

    async def reserve(
        self, tokens: int, cost_usd: float, model: str
    ) -> str | budget.Refused:
        """Reserve a call's worst case in the goal's budget; its id, or why not."""
        ...

    async def settle(self, reservation: str, used: tuple[int, float] | None) -> None:
        """Settle a reservation with what its call used (None: release it)."""
        ...

    def shared_state(self) -> SharedState | None:
        """The deployment's shared state (fleet-wide rate limits, breakers).

        None where there is no deployment to share with (``replay --verify``).
        """
        ...

    async def converse(
        self,
        prompt: str,
        *,
        system: str = "",
        tools: Sequence[str] | None = None,
        max_tokens: int = 2048,
    ) -> str:
        """Let the lane's model act through tools until it answers; its answer.

        ``tools`` are glob patterns of tool names (default: what the lane
        offers). Every model call and tool call is recorded; a resumed task
        reuses what its earlier attempts recorded.
        """
        ...


class BaseTaskContext(ABC):
    """What every task context does the same way, whatever it reads from.

    Subclasses say where reads come from and where writes go.
    """

    def __init__(
        self,
        item: WorkItem,
        *,
        worker: str,
        attempt: int,
        seq: int,
        approved: bool = False,
        spent: int | None = None,
        dispatch: int | None = None,
    ) -> None:
        self.goal_id = item.goal_id
        self.task_id = item.task_id
        self.task_type = item.task_type
        self.lane = item.lane
        self.worker = worker
        self.attempt = attempt
        self.spent = attempt if spent is None else spent
        """Attempts of this dispatch that count against max_attempts."""
        self.dispatch = item.dispatch if dispatch is None else dispatch
        """The dispatch this attempt belongs to: ``(dispatch, attempt)`` is the run."""
        self.seq = seq
        """The task's last sequence: the guard of the next write."""
        self.approved = approved
        self.spawned: list[TaskSpec] = []
        self.calls = 0
        """Model calls recorded by this attempt: the next call's index."""
        self._task: TaskCreated | None = None
        self._goal: GoalSubmitted | None = None
        self._history: TaskState | None = None
        self._transcript: Transcript | None = None
        self.agent: Agent | None = None
        """The process's agent, for :meth:`converse` (set by the worker)."""

    @abstractmethod
    async def task(self) -> TaskCreated:
        """The TaskCreated event of this task."""

    @abstractmethod
    async def goal(self) -> GoalSubmitted:
        """The goal this task serves."""

    @abstractmethod
    async def limits(self) -> Limits:
        """The goal's limits now: as submitted, or as ``bb resume`` raised them."""

    @abstractmethod
    async def results_of(self, task_ids: Sequence[str]) -> dict[str, Any]:
        """Results of other tasks of the goal that completed."""

    @abstractmethod
    async def history(self) -> TaskState:
        """This task's own events, folded."""

    @abstractmethod
    async def goal_results(self) -> dict[str, Any]:
        """Results of every task of the goal that completed, by task id."""

    @abstractmethod
    async def append(self, make: Callable[[str], Event]) -> int:
        """Record an event on this task; ``make`` gets the event id."""

    @abstractmethod
    async def effect(
        self,
        name: str,
        fn: Callable[[], Awaitable[Any]],
        *,
        idempotent: bool = False,
        request: Any = None,
    ) -> Any:
        """Perform a side effect once, and record it."""

    @abstractmethod
    async def _task_events(self) -> list[Envelope]:
        """This task's own envelopes, as far as this context may see them."""

    @abstractmethod
    async def tool_call(
        self, call: ToolCallRecord, run: Callable[[], Awaitable[ToolOutcome]]
    ) -> ToolOutcome:
        """Run a tool call once, recorded; a finished one returns its record."""

    async def transcript(self) -> Transcript:
        """This task's recorded model answers and tool calls, across its runs.

        Read once per attempt: what this attempt adds, its caller knows.
        """
        if self._transcript is None:
            self._transcript = transcript(await self._task_events())
        return self._transcript

    async def reserve(
        self, tokens: int, cost_usd: float, model: str
    ) -> str | budget.Refused:
        """No budget to keep by default (replay calls no model): nothing held."""
        return ""

    async def settle(self, reservation: str, used: tuple[int, float] | None) -> None:
        """Nothing was reserved by default."""
        return

    def shared_state(self) -> SharedState | None:
        """No shared state: a context with no store shares nothing."""
        return None

    async def converse(
        self,
        prompt: str,
        *,
        system: str = "",
        tools: Sequence[str] | None = None,
        max_tokens: int = 2048,
    ) -> str:
        """Let the lane's model act through tools until it answers; its answer."""
        if self.agent is None:
            raise ConfigError(
                "this worker has no agent (no model lanes): converse() needs one"
            )
        return await self.agent.converse(
            self, prompt, system=system, tools=tools, max_tokens=max_tokens
        )

    async def payload(self) -> dict[str, Any]:
        """The task's payload."""
        return (await self.task()).payload

    async def dependency_results(self) -> dict[str, Any]:
        """Results of the tasks this one depends on, by task id."""
        return await self.results_of((await self.task()).depends_on)

    async def children_results(self) -> dict[str, Any]:
        """Results of the tasks this one spawned, by task id."""
        return await self.results_of((await self.history()).children)

    def new_task(
        self,
        task_type: str,
        lane: str,
        payload: dict[str, Any] | None = None,
        *,
        depends_on: Sequence[str] = (),
        requires_approval: bool = False,
        priority: int = 0,
        dedupe_key: str | None = None,
    ) -> TaskSpec:
        """A spec for a new task of this goal, with a fresh id.

        A ``dedupe_key`` an earlier task of the goal has makes this task a
        duplicate: it does not run, and gets that task's result.
        """
        return TaskSpec(
            task_id=ids.new_id(),
            type=task_type,
            lane=lane,
            payload=payload or {},
            depends_on=tuple(depends_on),
            requires_approval=requires_approval,
            priority=priority,
            dedupe_key=dedupe_key,
        )

    def spawn(self, spec: TaskSpec) -> str:
        """Create a task when this one completes, without waiting for it."""
        self.spawned.append(spec)
        return spec.task_id

    def wait_for(self, *children: TaskSpec, reason: str = "") -> Followup:
        """Return this from the handler: spawn children, run again after them."""
        return Followup(children, reason)

    def request_approval(self, reason: str) -> None:
        """Stop here until a human approves; the handler runs again after."""
        if not self.approved:
            raise NeedsApproval(reason)


class LiveTaskContext(BaseTaskContext):
    """The context of a running attempt: reads the log, appends to it."""

    def __init__(
        self,
        store: EventStore,
        item: WorkItem,
        *,
        worker: str,
        attempt: int,
        seq: int,
        approved: bool = False,
        spent: int | None = None,
        dispatch: int | None = None,
    ) -> None:
        super().__init__(
            item,
            worker=worker,
            attempt=attempt,
            seq=seq,
            approved=approved,
            spent=spent,
            dispatch=dispatch,
        )
        self.store = store
        self._envs: list[Envelope] | None = None
        self.writing = False
        """True while a write is in flight (its sequence is not known yet)."""
        self._lock = asyncio.Lock()

    # --- what the handler knows ---------------------------------------------

    async def task(self) -> TaskCreated:
        """The TaskCreated event of this task (type, payload, deps, depth)."""
        if self._task is None:
            env = await self.store.last_event(
                self.goal_id, self.task_id, "task_created"
            )
            if env is None or not isinstance(env.event, TaskCreated):
                # We hold its work item, so the creation is in the log: a
                # read that cannot see it is the log's trouble, not the task's.
                raise LogUnavailable(f"task {self.task_id}: creation not readable")
            self._task = env.event
        return self._task

    async def goal(self) -> GoalSubmitted:
        """The goal this task serves."""
        if self._goal is None:
            env = await self.store.last_event(self.goal_id, None, "goal_submitted")
            if env is None or not isinstance(env.event, GoalSubmitted):
                raise LogUnavailable(f"goal {self.goal_id}: submission not readable")
            self._goal = env.event
        return self._goal

    async def limits(self) -> Limits:
        """The goal's limits now: as submitted, or as ``bb resume`` raised them."""
        env = await self.store.last_event(self.goal_id, None, "goal_resumed")
        if env is not None and isinstance(env.event, GoalResumed):
            return env.event.limits
        return (await self.goal()).limits

    async def results_of(self, task_ids: Sequence[str]) -> dict[str, Any]:
        """Results of other tasks of the goal that completed (missing: absent)."""
        envs = await asyncio.gather(
            *(
                self.store.last_event(self.goal_id, t, "task_completed")
                for t in task_ids
            )
        )
        return {
            t: env.event.result
            for t, env in zip(task_ids, envs, strict=True)
            if env is not None and isinstance(env.event, TaskCompleted)
        }

    async def _task_events(self) -> list[Envelope]:
        if self._envs is None:
            self._envs = [
                env
                async for env in self.store.read(
                    self.store.subjects.task_events(self.goal_id, self.task_id)
                )
            ]
        return self._envs

    async def history(self) -> TaskState:
        """This task's own events, folded (its calls, effects and attempts)."""
        if self._history is None:
            state = fold_task(self.goal_id, await self._task_events())
            if state is None:
                raise LogUnavailable(f"task {self.task_id}: history not readable")
            self._history = state
        return self._history

    async def goal_results(self) -> dict[str, Any]:
        """Results of every task of the goal that completed, by task id."""
        state = fold([env async for env in self.store.read_goal(self.goal_id)])
        goal = state.goals.get(self.goal_id)
        if goal is None:
            return {}
        return {t.task_id: t.result for t in goal.tasks.values() if t.status == "done"}

    # --- what the handler may do ----------------------------------------------

    async def append(self, make: Callable[[str], Event]) -> int:
        """Append an event on this task, guarded; ``make`` gets the event id.

        Writes of one attempt are serialised so each is guarded on the one
        before it.
        """
        async with self._lock:
            event = make(ids.new_id())
            self.writing = True
            try:
                self.seq = await self.store.append(event, expect=self.seq)
            except ConcurrencyConflict:
                if isinstance(event, ModelCalled) and await ends_cancelled(
                    self.store, self.goal_id, self.task_id
                ):
                    # The call was made and paid for before the cancellation
                    # reached us: its cost stays in the ledger (unguarded, after
                    # the fence); its answer is never used.
                    await self.store.append(event)
                raise
            finally:
                self.writing = False
        if isinstance(event, ModelCalled):
            telemetry.get().model_call(event)
        elif isinstance(event, BreakerChanged):
            telemetry.get().breaker_changed(event)
        return self.seq

    async def effect(
        self,
        name: str,
        fn: Callable[[], Awaitable[Any]],
        *,
        idempotent: bool = False,
        request: Any = None,
    ) -> Any:
        """Perform a side effect once, and record it.

        A completed effect recorded by an earlier attempt is not performed
        again: its recorded result is returned. One recorded as started but
        never finished (the worker died in between) is performed again only if
        ``idempotent``; otherwise a human is asked to check and approve.
        """
        key = f"{self.task_id}:{name}"
        history = await self.history()
        seen = history.effects.get(key)
        if seen == "completed":
            return history.effect_results.get(key)
        if seen == "started" and not idempotent and not self.approved:
            raise NeedsApproval(
                f"side effect {name!r} may have been performed by a worker that "
                "died before recording its result; check it, then approve to redo",
                policy="side_effect",
            )
        base = {"goal_id": self.goal_id, "task_id": self.task_id, "actor": self.worker}
        await self.append(
            lambda i: SideEffectStarted(
                event_id=i,
                at=ids.utcnow(),
                name=name,
                idempotency_key=key,
                request=request,
                idempotent=idempotent,
                **base,
            )
        )
        try:
            result = await fn()
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
            await self.append(
                lambda i: SideEffectFailed(
                    event_id=i,
                    at=ids.utcnow(),
                    name=name,
                    idempotency_key=key,
                    error=err,
                    **base,
                )
            )
            raise
        await self.append(
            lambda i: SideEffectCompleted(
                event_id=i,
                at=ids.utcnow(),
                name=name,
                idempotency_key=key,
                result=result,
                **base,
            )
        )
        history.effects[key] = "completed"
        history.effect_results[key] = result
        return result

    async def tool_call(
        self, call: ToolCallRecord, run: Callable[[], Awaitable[ToolOutcome]]
    ) -> ToolOutcome:
        """Run a tool call once, and record its start and its end.

        A call an earlier attempt finished is not run again: its recorded
        outcome is returned. One that started and never finished (the worker
        died in between) runs again only if its effect is ``read`` or the tool
        is idempotent; otherwise a human is asked to check and approve (or
        deny) before it is redone.
        """
        known = await self.transcript()
        done = known.finished.get(call.key)
        if done is not None:
            return ToolOutcome.recorded(done)
        check_unfinished(known, call, approved=self.approved)
        base: dict[str, Any] = {
            "goal_id": self.goal_id,
            "task_id": self.task_id,
            "actor": self.worker,
            "tool": call.tool,
            "call_id": call.call_id,
            "idempotency_key": call.key,
            "effect": call.effect,
            "attempt": self.attempt,
            "dispatch": self.dispatch,
        }
        started = ToolCallStarted(
            event_id="",
            at=ids.utcnow(),
            arguments=call.arguments,
            source=call.source,
            model_call=call.model_call,
            idempotent=call.idempotent,
            **base,
        )
        await self.append(lambda i: msgspec.structs.replace(started, event_id=i))
        clock = time.monotonic()
        outcome = await run()
        took = round((time.monotonic() - clock) * 1000, 3)
        finished = ToolCallFinished(
            event_id="",
            at=ids.utcnow(),
            result=outcome.result,
            error=outcome.error,
            refused=outcome.refused,
            duration_ms=took,
            **base,
        )
        await self.append(lambda i: msgspec.structs.replace(finished, event_id=i))
        known.started[call.key] = started
        known.finished[call.key] = finished
        telemetry.get().tool_call(started, finished)
        return outcome

    async def reserve(
        self, tokens: int, cost_usd: float, model: str
    ) -> str | budget.Refused:
        """Reserve a call's worst case against the goal's limits now.

        Nothing is reserved for a goal with neither ``max_tokens`` nor
        ``max_cost_usd``. A reservation an earlier run of this task left open
        (its worker died) is settled with the call it recorded, or forfeited.
        """
        limits = await self.limits()
        if limits.max_tokens is None and limits.max_cost_usd is None:
            return ""
        hold = BudgetHold(
            task_id=self.task_id,
            dispatch=self.dispatch,
            attempt=self.attempt,
            tokens=tokens,
            cost_usd=cost_usd,
        )
        return await self._ledger().reserve(limits, hold, model, self._used_by)

    async def settle(self, reservation: str, used: tuple[int, float] | None) -> None:
        """Settle a reservation (or release it); nothing for an empty id."""
        if reservation:
            await self._ledger().settle(reservation, used)

    def _ledger(self) -> Ledger:
        return Ledger(self.store, self.goal_id, self.worker)

    def shared_state(self) -> SharedState | None:
        """The shared state beside the log (fleet-wide limits and breakers)."""
        return self.store.shared_state()

    async def _used_by(self, reservation: str) -> tuple[int, float] | None:
        """What the call made under ``reservation`` used, by its ``ModelCalled``.

        Read from the log as it is now (not this attempt's cached read): only
        for a reservation an earlier run left open, which is rare.
        """
        scope = self.store.subjects.task_events(self.goal_id, self.task_id)
        async for env in self.store.read(scope):
            e = env.event
            if isinstance(e, ModelCalled) and e.reservation == reservation:
                return (e.tokens_in + e.tokens_cached + e.tokens_out, e.cost_usd)
        return None

    async def children_events(self, specs: Sequence[TaskSpec]) -> list[TaskCreated]:
        """TaskCreated events for specs spawned by this task, validated."""
        if not specs:
            return []
        me = await self.task()
        ordered = dag.order(specs, existing=self._known_ids(me, specs))
        now = ids.utcnow()
        return [
            builders.task_created(
                self.goal_id,
                s,
                at=now,
                actor=self.worker,
                max_attempts=me.max_attempts,
                parent=me,
                parent_attempt=self.attempt,
                parent_dispatch=self.dispatch,
            )
            for s in ordered
        ]

    def _known_ids(self, me: TaskCreated, specs: Sequence[TaskSpec]) -> set[str]:
        # Children may depend on tasks outside the batch; the scheduler refuses
        # any that does not exist, with a recorded reason.
        new = {s.task_id for s in specs}
        return {d for s in specs for d in s.depends_on if d not in new} | {
            me.task_id or ""
        }


def check_unfinished(
    known: Transcript, call: ToolCallRecord, *, approved: bool
) -> None:
    """Ask a human before redoing a call that may have run (unless harmless).

    Harmless: a ``read`` call, or one of an idempotent tool.

    Raises:
        NeedsApproval: The call started in an earlier run and never finished,
            its effect is not ``read``, the tool is not idempotent, and nobody
            approved redoing it.
    """
    if (
        known.unfinished(call.key) is None
        or call.effect == "read"
        or call.idempotent
        or approved
    ):
        return
    raise NeedsApproval(
        f"tool call {call.tool} ({call.effect}) may have run on a worker that "
        "died before recording its result; check it, then approve to run it "
        "again or deny to fail the task",
        policy="tool_call",
    )


async def ends_cancelled(store: EventStore, goal_id: str, task_id: str) -> bool:
    """Whether a task's last event is its cancellation (the fence of a cancel).

    Tells a write refused by a cancel from one refused by a new lease holder.
    """
    last = await store.last_on(store.subjects.task_events(goal_id, task_id))
    return last is not None and store.subjects.parse_event(last.subject)[2] == (
        "task_cancelled"
    )
