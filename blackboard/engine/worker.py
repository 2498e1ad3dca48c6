"""Lane workers: fetch work, claim, run the handler, record the outcome.

Workers of a lane compete on one durable pull consumer (``bb-<lane>``) of the
work stream. The lease is the consumer's ack_wait, renewed with in_progress()
while a handler runs. Every write is guarded on the task's last sequence, so a
worker whose lease expired (and whose task another worker took over) has its
late writes refused and stops without touching the work message.

Outcomes:

- result          -> TaskCompleted (+ spawned children, one atomic batch), ack
- Followup        -> children + TaskNeedsFollowup, one atomic batch, ack
- NeedsApproval   -> ApprovalRequested, ack
- RetryableError  -> TaskFailed(retryable) and nak(delay) while attempts remain
- anything else   -> TaskFailed (final, with the error), term
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig

from blackboard import ids, telemetry
from blackboard.engine.context import TaskContext
from blackboard.engine.handlers import (
    BUILTIN,
    Followup,
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
from blackboard.log.events import (
    ApprovalRequested,
    Event,
    TaskClaimed,
    TaskCompleted,
    TaskFailed,
    TaskNeedsFollowup,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nats.aio.msg import Msg

    from blackboard.log.codec import WorkItem
    from blackboard.log.store import JetStreamEventStore

log = logging.getLogger("blackboard.worker")


_LAG_EVERY_S = 5.0
"""How often a worker measures its lane's lag (only with metrics on)."""


def consumer_name(lane: str) -> str:
    """The durable consumer of a lane (KEDA's trigger names it too)."""
    return f"bb-{lane}"


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How a worker runs."""

    lane: str
    concurrency: int = 8
    lease_s: float = 30.0
    max_ack_pending: int = 1000
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    fetch_batch: int = 64
    grace_s: float = 5.0


@dataclass(frozen=True, slots=True)
class _Claim:
    seq: int
    attempt: int
    approved: bool
    spent: int = 0
    """Attempts of this dispatch that count against max_attempts, this one too."""
    dispatch: int = 1


class Worker:
    """One worker process's loop for one lane."""

    def __init__(
        self,
        store: JetStreamEventStore,
        settings: WorkerSettings,
        handlers: Mapping[str, Handler] | None = None,
        *,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.handlers = {**BUILTIN, **(handlers or {})}
        self.worker_id = worker_id or f"worker-{settings.lane}-{ids.new_id()[-8:]}"
        self.done = 0
        self._active: set[asyncio.Task[None]] = set()
        # Running handlers by goal, each with the list its stop reason goes in.
        self._running: dict[str, dict[asyncio.Task[object], list[str]]] = {}

    async def ensure_consumer(self) -> None:
        """Create the lane's durable consumer if it does not exist."""
        name = consumer_name(self.settings.lane)
        js = self.store.js
        try:
            info = await js.consumer_info(self.store.work_stream, name)
        except nats.js.errors.NotFoundError:
            info = None
        if info is None:
            cfg = ConsumerConfig(
                durable_name=name,
                filter_subject=self.store.subjects.work(self.settings.lane),
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.settings.lease_s,
                max_ack_pending=self.settings.max_ack_pending,
                max_deliver=-1,
            )
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await js.add_consumer(self.store.work_stream, cfg)
        elif info.config.ack_wait != self.settings.lease_s:
            log.warning(
                "consumer %s has ack_wait %ss, not the configured lease %ss; "
                "using it as it is",
                name,
                info.config.ack_wait,
                self.settings.lease_s,
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and run work until ``stop`` is set; then finish what runs."""
        await self.ensure_consumer()
        sub = await self.store.js.pull_subscribe_bind(
            durable=consumer_name(self.settings.lane), stream=self.store.work_stream
        )
        # Stored goal cancellations are re-published here (see subjects.py):
        # the handlers of a cancelled goal are stopped as soon as it lands.
        cancels = await self.store.nc.subscribe(
            self.store.subjects.kind_filter("goal_cancelled"), cb=self._on_cancel
        )
        next_lag = 0.0
        try:
            while not stop.is_set():
                if telemetry.get().meter is not None and time.monotonic() >= next_lag:
                    next_lag = time.monotonic() + _LAG_EVERY_S
                    await self._measure_lag()
                free = self.settings.concurrency - len(self._active)
                if free <= 0:
                    await asyncio.wait(
                        self._active, return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                try:
                    msgs = await sub.fetch(
                        min(free, self.settings.fetch_batch), timeout=0.5
                    )
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except (nats.errors.Error, nats.js.errors.Error) as e:
                    log.warning("fetch failed (%s); retrying", e)
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self._guarded(msg))
                    self._active.add(task)
                    task.add_done_callback(self._active.discard)
        finally:
            if self._active:
                # Give running handlers a grace period, then stop them: their
                # messages are not acked, so another worker gets them.
                _, late = await asyncio.wait(
                    self._active, timeout=self.settings.grace_s
                )
                for task in late:
                    task.cancel()
                await asyncio.gather(*self._active, return_exceptions=True)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await cancels.unsubscribe()

    async def _on_cancel(self, msg: Msg) -> None:
        """Stop every running handler of a goal whose cancellation was stored."""
        try:
            goal_id = self.store.subjects.parse_event(msg.subject)[0]
        except ValueError:
            return
        for run, why in list(self._running.get(goal_id, {}).items()):
            if not why:
                why.append("goal_cancelled")
                run.cancel()

    async def _measure_lag(self) -> None:
        """Work messages waiting on the lane's consumer, for the lag gauge."""
        name = consumer_name(self.settings.lane)
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            info = await self.store.js.consumer_info(self.store.work_stream, name)
            telemetry.get().lag[self.settings.lane] = info.num_pending or 0

    async def _guarded(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except ConcurrencyConflict as e:
            if await self._was_cancelled(msg):
                # Cancelled under us: the write was refused by the fence, and
                # the work message has nothing left to do.
                log.info("%s: stopped: its task was cancelled", self.worker_id)
                with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                    await msg.ack()
                return
            # Our lease expired and another worker holds the task: the work
            # message is theirs now, so it is neither acked nor nak'ed here.
            log.warning("%s: lost the task (%s); leaving it", self.worker_id, e)
        except (StoreError, nats.errors.Error, OSError) as e:
            # The log could not be written: leave the message for redelivery.
            log.warning(
                "%s: could not record an outcome (%s); will be redelivered",
                self.worker_id,
                e,
            )
        except Exception:
            log.exception(
                "%s: unexpected error handling a work message", self.worker_id
            )

    async def _was_cancelled(self, msg: Msg) -> bool:
        """Whether the task of a work message ends with its cancellation."""
        try:
            item = codec.decode_work(msg.data)
            last = await self.store.last_on(
                self.store.subjects.task_events(item.goal_id, item.task_id)
            )
        except (MalformedEvent, StoreError):
            return False
        if last is None:
            return False
        return self.store.subjects.parse_event(last.subject)[2] == "task_cancelled"

    async def handle(self, msg: Msg) -> None:
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
        meta = msg.metadata
        claim = await self._claim(item, meta.sequence.stream, meta.num_delivered)
        if claim == "stale":
            await msg.ack()
            return
        if claim == "theirs":
            # An older copy of a message another worker holds now: acking it
            # would remove the message under them, and if they died the task
            # would never be redelivered.
            return
        base = {
            "goal_id": item.goal_id,
            "task_id": item.task_id,
            "actor": self.worker_id,
        }
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
        ctx = TaskContext(
            self.store,
            item,
            worker=self.worker_id,
            attempt=claim.attempt,
            seq=claim.seq,
            approved=claim.approved,
            spent=claim.spent or claim.attempt,
            dispatch=claim.dispatch,
        )
        tm = telemetry.get()
        if not tm.enabled:
            await self._run(msg, item, ctx, handler, base)
            return
        await self._traced(tm, msg, item, ctx, handler, base)

    async def _traced(
        self,
        tm: telemetry.Telemetry,
        msg: Msg,
        item: WorkItem,
        ctx: TaskContext,
        handler: Handler,
        base: dict[str, str],
    ) -> None:
        """Run the attempt inside its span, and count its outcome."""
        parent = (
            (item.parent_id, item.parent_attempt or 1, item.parent_dispatch)
            if item.parent_id
            else None
        )
        started = time.monotonic()
        published = msg.metadata.timestamp
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
            status = await self._run(msg, item, ctx, handler, base)
            if span is not None:
                span.set_attribute("bb.status", status)
                if status == "failed":
                    span.set_status(telemetry.error_status(status))
        tm.outcome(
            item.lane, item.task_type, status, time.monotonic() - started, wait_s
        )

    async def _run(
        self,
        msg: Msg,
        item: WorkItem,
        ctx: TaskContext,
        handler: Handler,
        base: dict[str, str],
    ) -> str:
        """Run the handler to an outcome; return the task's status after it."""
        run: asyncio.Task[object] = asyncio.create_task(handler(ctx))
        preempted: list[str] = []
        running = self._running.setdefault(item.goal_id, {})
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
            reason, policy = e.reason, e.policy
            await ctx.append(
                lambda i: ApprovalRequested(
                    event_id=i, at=ids.utcnow(), reason=reason, policy=policy, **base
                )
            )
            await msg.ack()
            return "awaiting_approval"
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
                self._running.pop(item.goal_id, None)
        try:
            await self._finish(item, ctx, outcome, base)
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

    async def _finish(
        self, item: WorkItem, ctx: TaskContext, outcome: object, base: dict[str, str]
    ) -> None:
        now = ids.utcnow()
        if isinstance(outcome, Followup):
            children = await ctx.children_events([*ctx.spawned, *outcome.children])
            waiting = tuple(
                c.task_id or ""
                for c in children
                if any(c.task_id == s.task_id for s in outcome.children)
            )
            last: Event = TaskNeedsFollowup(
                event_id=f"followup:{item.goal_id}:{item.task_id}:{ctx.seq}",
                at=now,
                waiting_on=waiting,
                attempt=ctx.attempt,
                reason=outcome.reason,
                **base,
            )
        else:
            children = await ctx.children_events(ctx.spawned)
            last = TaskCompleted(
                event_id=f"completed:{item.goal_id}:{item.task_id}:{ctx.seq}",
                at=now,
                result=outcome,
                attempt=ctx.attempt,
                **base,
            )
        if children:
            items: list[tuple[Event, int | None]] = [(c, 0) for c in children]
            await self.store.append_batch([*items, (last, ctx.seq)])
        else:
            await self.store.append(last, expect=ctx.seq)

    async def _claim(
        self, item: WorkItem, work_seq: int, delivered: int
    ) -> _Claim | Literal["stale", "theirs"]:
        """Claim the task for this delivery of its work message.

        Returns "stale" when the message has nothing left to do (the task is
        done, cancelled, waiting, or was claimed from another work message),
        and "theirs" when a later delivery of this same message holds it.
        """
        claim = TaskClaimed(
            event_id=f"claim:{item.goal_id}:{item.task_id}:{work_seq}:{delivered}",
            goal_id=item.goal_id,
            task_id=item.task_id,
            at=ids.utcnow(),
            actor=self.worker_id,
            worker=self.worker_id,
            attempt=1,
            work_seq=work_seq,
            delivery=delivered,
        )
        if delivered == 1:
            # Fast path: the task is as the scheduler left it when it dispatched.
            with contextlib.suppress(ConcurrencyConflict):
                seq = await self.store.append(claim, expect=item.ready_seq)
                return _Claim(
                    seq, 1, approved=item.approved, spent=1, dispatch=item.dispatch
                )
        for _ in range(5):
            envs = [
                env
                async for env in self.store.read(
                    self.store.subjects.task_events(item.goal_id, item.task_id)
                )
            ]
            task = fold_task(item.goal_id, envs)
            if task is None:
                return "stale"
            ours = task.status == "claimed" and task.claim_work_seq == work_seq
            if ours and delivered <= task.claim_delivery:
                return "theirs"
            if task.status != "ready" and not ours:
                return "stale"
            # Either ready, or an earlier delivery's lease expired: take over.
            # Attempts that ended because the log was unavailable are not spent.
            attempt = task.attempt + 1
            spent = attempt - task.transient
            if spent > item.max_attempts:
                await self._fail(
                    item,
                    task.last_seq,
                    task.attempt,
                    retryable=False,
                    error=f"attempts exhausted ({spent - 1} of "
                    f"{item.max_attempts}); last error: {task.error}",
                )
                return "stale"
            try:
                seq = await self.store.append(
                    msgspec.structs.replace(claim, attempt=attempt),
                    expect=task.last_seq,
                )
            except ConcurrencyConflict:
                continue
            # The task's own dispatch, not the message's: an old copy of the
            # message may claim a task that was dispatched again since.
            return _Claim(
                seq,
                attempt,
                approved=task.approved,
                spent=spent,
                dispatch=task.dispatch,
            )
        return "stale"

    async def _transient(
        self, msg: Msg, item: WorkItem, ctx: TaskContext, error: LogUnavailable
    ) -> str:
        """The log did not answer in time: try again later, spending nothing.

        Recorded as a transient failure when the log takes the write (the next
        claim then does not count this attempt); the message is nak'ed with a
        backoff either way, never failed for good.
        """
        delay = min(
            self.settings.backoff_cap_s,
            self.settings.backoff_base_s * 2 ** min(ctx.attempt, 6),
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
        msg: Msg,
        item: WorkItem,
        ctx: TaskContext,
        error: str,
        retry_after: float | None,
    ) -> str:
        if ctx.spent < item.max_attempts:
            await self._fail(item, ctx.seq, ctx.attempt, retryable=True, error=error)
            delay = (
                retry_after
                if retry_after is not None
                else min(
                    self.settings.backoff_cap_s,
                    self.settings.backoff_base_s * 2 ** (ctx.attempt - 1),
                )
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
        await self.store.append(
            TaskFailed(
                event_id=f"failed:{item.goal_id}:{item.task_id}:{expect}",
                goal_id=item.goal_id,
                task_id=item.task_id,
                at=ids.utcnow(),
                actor=self.worker_id,
                error=error,
                retryable=retryable,
                transient=transient,
                attempt=attempt,
            ),
            expect=expect,
        )

    async def _renew(
        self, msg: Msg, ctx: TaskContext, run: asyncio.Task[object], why: list[str]
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
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                await msg.in_progress()
                last = await self.store.last_on(scope)
                if last is not None and last.seq > ctx.seq and not ctx.writing:
                    why.append(self.store.subjects.parse_event(last.subject)[2])
                    run.cancel()
                    return
