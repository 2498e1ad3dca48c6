"""One work message, run to an outcome: claim, handler, lease, record.

The worker (worker.py) fetches; a :class:`Runner` does the rest for each
message. Every write is guarded on the task's last sequence, so a runner whose
lease expired (and whose task another worker took over) has its late writes
refused and stops without touching the work message. Who may claim, the events
of an outcome and the backoff are decided in attempts.py (pure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from blackboard import ids, telemetry
from blackboard.engine import attempts
from blackboard.engine.attempts import Claim, Exhausted
from blackboard.engine.context import LiveTaskContext
from blackboard.engine.handlers import (
    Followup,
    GuardrailBreached,
    Handler,
    NeedsApproval,
    RetryableError,
)
from blackboard.engine.state import fold_task
from blackboard.errors import (
    ConcurrencyConflict,
    InvalidDag,
    LogUnavailable,
    MalformedEvent,
    StoreError,
)
from blackboard.log import codec
from blackboard.log.events import ApprovalRequested, Event, GoalHalted, TaskHeld

if TYPE_CHECKING:
    from collections.abc import Mapping

    from blackboard.engine.context import Agent
    from blackboard.engine.worker import WorkerSettings
    from blackboard.log.codec import WorkItem
    from blackboard.log.ports import Delivery, EventStore

log = logging.getLogger("blackboard.worker")


class Runner:
    """Runs work messages of one lane's worker, each to an outcome."""

    def __init__(
        self,
        store: EventStore,
        settings: WorkerSettings,
        handlers: Mapping[str, Handler],
        worker_id: str,
        agent: Agent | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.handlers = handlers
        self.worker_id = worker_id
        self.agent = agent
        """What ``ctx.converse`` talks to (the process's model agent)."""
        self.done = 0
        self.running: dict[str, dict[asyncio.Task[object], list[str]]] = {}
        """Running handlers by goal, each with the list its stop reason goes in."""

    def stop_goal(self, goal_id: str, why: str) -> None:
        """Stop every running handler of a goal (it was cancelled)."""
        for run, reasons in list(self.running.get(goal_id, {}).items()):
            if not reasons:
                reasons.append(why)
                run.cancel()

    async def handle(self, msg: Delivery) -> None:
        """Run one work message to an outcome."""
        try:
            item = codec.decode_work(msg.data)
        except MalformedEvent as e:
            log.exception(
                "%s: dropped malformed work message on %s: %s",
                self.worker_id,
                msg.subject,
                e.reason,
            )
            await msg.term()
            return
        claim = await self.claim(item, msg.seq, msg.num_delivered)
        if claim == "stale":
            await msg.ack()
            return
        if claim == "theirs":
            # An older copy of a message another worker holds now: acking it
            # would remove the message under them, and if they died the task
            # would never be redelivered.
            return
        handler = self.handlers.get(item.task_type)
        if handler is None:
            await self._fail(
                item,
                claim.seq,
                claim.attempt,
                retryable=False,
                error=f"no handler for task type {item.task_type!r} "
                f"on lane {item.lane!r} (worker {self.worker_id})",
            )
            await msg.term()
            return
        ctx = LiveTaskContext(
            self.store,
            item,
            worker=self.worker_id,
            attempt=claim.attempt,
            seq=claim.seq,
            approved=claim.approved,
            spent=claim.spent or claim.attempt,
            dispatch=claim.dispatch,
        )
        ctx.agent = self.agent
        tm = telemetry.get()
        if not tm.enabled:
            await self._run(msg, item, ctx, handler)
            return
        await self._traced(tm, msg, item, ctx, handler)

    async def _traced(
        self,
        tm: telemetry.Telemetry,
        msg: Delivery,
        item: WorkItem,
        ctx: LiveTaskContext,
        handler: Handler,
    ) -> None:
        """Run the attempt inside its span, and count its outcome."""
        parent = (
            (item.parent_id, item.parent_attempt or 1, item.parent_dispatch)
            if item.parent_id
            else None
        )
        started = time.monotonic()
        published = msg.timestamp
        wait_s = (ids.utcnow() - published).total_seconds() if published else None
        with tm.task_span(
            goal_id=item.goal_id,
            task_id=item.task_id,
            task_type=item.task_type,
            lane=item.lane,
            worker=self.worker_id,
            attempt=ctx.attempt,
            dispatch=ctx.dispatch,
            carrier=msg.headers,
            parent_task=parent,
        ) as span:
            status = await self._run(msg, item, ctx, handler)
            if span is not None:
                span.set_attribute("bb.status", status)
                if status == "failed":
                    span.set_status(telemetry.error_status(status))
        tm.outcome(
            item.lane, item.task_type, status, time.monotonic() - started, wait_s
        )

    async def _run(
        self, msg: Delivery, item: WorkItem, ctx: LiveTaskContext, handler: Handler
    ) -> str:
        """Run the handler to an outcome; return the task's status after it."""
        run: asyncio.Task[object] = asyncio.create_task(handler(ctx))
        preempted: list[str] = []
        running = self.running.setdefault(item.goal_id, {})
        running[run] = preempted
        heartbeat = asyncio.create_task(self._renew(msg, ctx, run, preempted))
        try:
            outcome = await run
        except asyncio.CancelledError:
            if not preempted:
                raise  # the worker is shutting down
            heartbeat.cancel()
            log.info("%s: stopped %s: %s", self.worker_id, item.task_id, preempted[0])
            if preempted[0] in ("task_cancelled", "goal_cancelled"):
                await msg.ack()
                return "cancelled"
            return "preempted"
        except NeedsApproval as e:
            heartbeat.cancel()
            reason, policy, actor = e.reason, e.policy, self.worker_id
            key, on_deny = e.key, e.on_deny
            await ctx.append(
                lambda i: ApprovalRequested(
                    event_id=i,
                    goal_id=item.goal_id,
                    task_id=item.task_id,
                    at=ids.utcnow(),
                    actor=actor,
                    reason=reason,
                    policy=policy,
                    key=key,
                    on_deny=on_deny,
                )
            )
            await msg.ack()
            return "awaiting_approval"
        except GuardrailBreached as e:
            heartbeat.cancel()
            await self._hold(item, ctx, e)
            await msg.ack()
            return "held"
        except RetryableError as e:
            heartbeat.cancel()
            return await self._retry_or_fail(
                msg, item, ctx, f"{type(e).__name__}: {e}", e.retry_after
            )
        except LogUnavailable as e:
            heartbeat.cancel()
            return await self._transient(msg, item, ctx, e)
        except (ConcurrencyConflict, StoreError):
            raise
        except (TimeoutError, ConnectionError) as e:
            heartbeat.cancel()
            return await self._retry_or_fail(
                msg, item, ctx, f"{type(e).__name__}: {e}", None
            )
        except Exception as e:
            heartbeat.cancel()
            await self._fail(
                item,
                ctx.seq,
                ctx.attempt,
                retryable=False,
                error=f"{type(e).__name__}: {e}",
            )
            await msg.term()
            return "failed"
        finally:
            heartbeat.cancel()
            running.pop(run, None)
            if not running:
                self.running.pop(item.goal_id, None)
        try:
            await self._finish(item, ctx, outcome)
        except InvalidDag as e:
            # The handler asked for tasks that can never exist (a bad id, a
            # cycle): a bug in the handler, not something a retry can fix.
            await self._fail(
                item, ctx.seq, ctx.attempt, retryable=False, error=f"spawn refused: {e}"
            )
            await msg.term()
            return "failed"
        await msg.ack()
        self.done += 1
        return "needs_followup" if isinstance(outcome, Followup) else "done"

    async def _hold(
        self, item: WorkItem, ctx: LiveTaskContext, breach: GuardrailBreached
    ) -> None:
        """Hold the task and halt its goal, as the scheduler does for its limits.

        Both in one atomic batch, the hold guarded on the task: a worker that
        lost its lease halts nothing.
        """
        now = ids.utcnow()
        base: dict[str, Any] = {
            "goal_id": item.goal_id,
            "at": now,
            "actor": self.worker_id,
        }
        held = TaskHeld(
            event_id=ids.new_id(),
            task_id=item.task_id,
            guardrail=breach.guardrail,
            reason=str(breach),
            **base,
        )
        halted = GoalHalted(
            event_id=ids.new_id(),
            guardrail=breach.guardrail,
            limit=breach.limit,
            observed=breach.observed,
            **base,
        )
        await self.store.append_batch([(held, ctx.seq), (halted, None)])

    async def _finish(
        self, item: WorkItem, ctx: LiveTaskContext, outcome: object
    ) -> None:
        now = ids.utcnow()
        if isinstance(outcome, Followup):
            children = await ctx.children_events([*ctx.spawned, *outcome.children])
            waiting = [
                c.task_id or ""
                for c in children
                if any(c.task_id == s.task_id for s in outcome.children)
            ]
            last: Event = attempts.needs_followup(
                item, self.worker_id, ctx.seq, ctx.attempt, waiting, outcome.reason, now
            )
        else:
            children = await ctx.children_events(ctx.spawned)
            last = attempts.completed(
                item, self.worker_id, ctx.seq, ctx.attempt, outcome, now
            )
        if children:
            items: list[tuple[Event, int | None]] = [(c, 0) for c in children]
            await self.store.append_batch([*items, (last, ctx.seq)])
        else:
            await self.store.append(last, expect=ctx.seq)

    async def claim(
        self, item: WorkItem, work_seq: int, delivered: int
    ) -> Claim | Literal["stale", "theirs"]:
        """Claim the task for this delivery of its work message.

        Returns "stale" when the message has nothing left to do (the task is
        done, cancelled, waiting, or was claimed from another work message),
        and "theirs" when a later delivery of this same message holds it.
        """
        claim = attempts.claimed(
            item, self.worker_id, work_seq, delivered, ids.utcnow()
        )
        if delivered == 1:
            # Fast path: the task is as the scheduler left it when it dispatched.
            with contextlib.suppress(ConcurrencyConflict):
                seq = await self.store.append(claim, expect=item.ready_seq)
                return Claim(
                    seq, 1, approved=item.approved, spent=1, dispatch=item.dispatch
                )
        scope = self.store.subjects.task_events(item.goal_id, item.task_id)
        for _ in range(5):
            envs = [env async for env in self.store.read(scope)]
            decision = attempts.decide_claim(
                fold_task(item.goal_id, envs),
                work_seq=work_seq,
                delivered=delivered,
                max_attempts=item.max_attempts,
                dispatch=item.dispatch,
            )
            if isinstance(decision, str):
                return decision
            if isinstance(decision, Exhausted):
                await self._fail(
                    item,
                    decision.expect,
                    decision.attempt,
                    retryable=False,
                    error=decision.error,
                )
                return "stale"
            try:
                seq = await self.store.append(
                    msgspec.structs.replace(claim, attempt=decision.attempt),
                    expect=decision.expect,
                )
            except ConcurrencyConflict:
                continue
            return Claim(
                seq,
                decision.attempt,
                approved=decision.approved,
                spent=decision.spent,
                dispatch=decision.dispatch,
            )
        return "stale"

    async def _transient(
        self,
        msg: Delivery,
        item: WorkItem,
        ctx: LiveTaskContext,
        error: LogUnavailable,
    ) -> str:
        """The log did not answer in time: try again later, spending nothing.

        Recorded as a transient failure when the log takes the write (the next
        claim then does not count this attempt); the message is nak'ed with a
        backoff either way, never failed for good.
        """
        s = self.settings
        delay = attempts.transient_backoff_s(
            ctx.attempt, s.backoff_base_s, s.backoff_cap_s
        )
        log.warning(
            "%s: %s: the log is unavailable (%s); again in %.0fs",
            self.worker_id,
            item.task_id,
            error,
            delay,
        )
        with contextlib.suppress(StoreError):
            await self._fail(
                item,
                ctx.seq,
                ctx.attempt,
                retryable=True,
                error=f"LogUnavailable: {error}",
                transient=True,
            )
        await msg.nak(delay=delay)
        return "retrying"

    async def _retry_or_fail(
        self,
        msg: Delivery,
        item: WorkItem,
        ctx: LiveTaskContext,
        error: str,
        retry_after: float | None,
    ) -> str:
        if ctx.spent < item.max_attempts:
            await self._fail(item, ctx.seq, ctx.attempt, retryable=True, error=error)
            s = self.settings
            delay = (
                retry_after
                if retry_after is not None
                else attempts.backoff_s(ctx.attempt, s.backoff_base_s, s.backoff_cap_s)
            )
            await msg.nak(delay=delay)
            return "retrying"
        await self._fail(
            item,
            ctx.seq,
            ctx.attempt,
            retryable=False,
            error=f"{error} (attempt {ctx.spent} of {item.max_attempts})",
        )
        await msg.term()
        return "failed"

    async def _fail(
        self,
        item: WorkItem,
        expect: int,
        attempt: int,
        *,
        retryable: bool,
        error: str,
        transient: bool = False,
    ) -> None:
        event = attempts.failed(
            item,
            self.worker_id,
            expect,
            attempt,
            ids.utcnow(),
            retryable=retryable,
            error=error,
            transient=transient,
        )
        await self.store.append(event, expect=expect)

    async def _renew(
        self,
        msg: Delivery,
        ctx: LiveTaskContext,
        run: asyncio.Task[object],
        why: list[str],
    ) -> None:
        """Keep the lease while the handler runs; stop it if the task moved on.

        If another writer appended to the task (it was cancelled, or another
        worker took it over after our lease expired), going on would only
        produce writes the guard refuses: the handler is cancelled instead.
        """
        interval = max(0.2, self.settings.lease_s / 3)
        scope = self.store.subjects.task_events(ctx.goal_id, ctx.task_id)
        while True:
            await asyncio.sleep(interval)
            # A renewal that fails (the log is unavailable) is tried again at
            # the next beat; the lease may lapse meanwhile, which the guards
            # make safe.
            with contextlib.suppress(StoreError):
                await msg.in_progress()
                last = await self.store.last_on(scope)
                if last is not None and last.seq > ctx.seq and not ctx.writing:
                    why.append(self.store.subjects.parse_event(last.subject)[2])
                    run.cancel()
                    return
