"""Lane workers: fetch work, claim, run the handler, record the outcome.

Workers of a lane compete on one consumer of the work queue (``bb-<lane>`` on
JetStream). The lease is the consumer's ack wait, renewed with in_progress()
while a handler runs. The worker fetches, keeps ``concurrency`` messages in
hand and stops the handlers of a cancelled goal; each message is run to its
outcome by runs.py, whose decisions (who may claim, the events of an outcome,
the backoff) are pure, in attempts.py.

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

from blackboard import ids, telemetry
from blackboard.engine.context import ends_cancelled
from blackboard.engine.handlers import BUILTIN
from blackboard.engine.runs import Runner
from blackboard.errors import ConcurrencyConflict, MalformedEvent, StoreError
from blackboard.log import codec
from blackboard.log.ports import consumer_name

if TYPE_CHECKING:
    from collections.abc import Mapping

    from blackboard.engine.attempts import Claim
    from blackboard.engine.context import Agent
    from blackboard.engine.handlers import Handler
    from blackboard.log.codec import WorkItem
    from blackboard.log.ports import Delivery, EventStore, WorkQueue

__all__ = ["Worker", "WorkerSettings", "consumer_name"]

log = logging.getLogger("blackboard.worker")


_LAG_EVERY_S = 5.0
"""How often a worker measures its lane's lag (only with metrics on)."""


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


class Worker:
    """One worker process's loop for one lane.

    Args:
        store: The log.
        settings: The lane and how to run it.
        handlers: Task types this worker runs, besides the built-in ones.
        worker_id: Its name in the log (default: a fresh one).
        queue: The work queue (default: the one beside ``store``).
        agent: What handlers' ``ctx.converse`` talks to (the model agent).
    """

    def __init__(
        self,
        store: EventStore,
        settings: WorkerSettings,
        handlers: Mapping[str, Handler] | None = None,
        *,
        worker_id: str | None = None,
        queue: WorkQueue | None = None,
        agent: Agent | None = None,
    ) -> None:
        self.store = store
        self.queue = queue if queue is not None else store.work_queue()
        self.settings = settings
        self.worker_id = worker_id or f"worker-{settings.lane}-{ids.new_id()[-8:]}"
        self.runner = Runner(
            store, settings, {**BUILTIN, **(handlers or {})}, self.worker_id, agent
        )
        self._active: set[asyncio.Task[None]] = set()

    @property
    def handlers(self) -> Mapping[str, Handler]:
        """The handlers by task type, built-in ones included."""
        return self.runner.handlers

    @property
    def done(self) -> int:
        """Messages run to a completion (or a follow-up) by this worker."""
        return self.runner.done

    async def ensure_consumer(self) -> None:
        """Create the lane's consumer if it does not exist."""
        await self.queue.ensure_lane(
            self.settings.lane,
            lease_s=self.settings.lease_s,
            max_ack_pending=self.settings.max_ack_pending,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and run work until ``stop`` is set; then finish what runs."""
        await self.ensure_consumer()
        lane = await self.queue.consumer(self.settings.lane)
        # Stored goal cancellations are re-published here (see subjects.py):
        # the handlers of a cancelled goal are stopped as soon as it lands.
        cancels = await self.store.watch(
            self.store.subjects.kind_filter("goal_cancelled"), self._on_cancel
        )
        next_lag = 0.0
        # Tool servers take a second or two to start: meanwhile the first
        # work can already be fetched and claimed, and waits only the rest.
        warming = (
            asyncio.create_task(self._warm_up()) if self.agent is not None else None
        )
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
                    msgs = await lane.fetch(
                        min(free, self.settings.fetch_batch), timeout=0.5
                    )
                except StoreError as e:
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
                await lane.close()
            with contextlib.suppress(Exception):
                await cancels.close()
            if warming is not None and not warming.done():
                warming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await warming

    @property
    def agent(self) -> Agent | None:
        """The process's model agent, if it has one."""
        return self.runner.agent

    async def _warm_up(self) -> None:
        """Start the agent; a failure is the first task's to meet, not ours."""
        assert self.runner.agent is not None
        try:
            await self.runner.agent.start()
        except Exception as e:
            log.warning("%s: the agent did not start (%s)", self.worker_id, e)

    async def _on_cancel(self, subject: str) -> None:
        """Stop every running handler of a goal whose cancellation was stored."""
        try:
            goal_id = self.store.subjects.parse_event(subject)[0]
        except ValueError:
            return
        self.runner.stop_goal(goal_id, "goal_cancelled")

    async def _measure_lag(self) -> None:
        """Work messages waiting on the lane's consumer, for the lag gauge."""
        with contextlib.suppress(StoreError):
            lag = await self.queue.lag(self.settings.lane)
            telemetry.get().lag[self.settings.lane] = lag

    async def _guarded(self, msg: Delivery) -> None:
        try:
            await self.handle(msg)
        except ConcurrencyConflict as e:
            if await self._was_cancelled(msg):
                # Cancelled under us: the write was refused by the fence, and
                # the work message has nothing left to do.
                log.info("%s: stopped: its task was cancelled", self.worker_id)
                with contextlib.suppress(StoreError):
                    await msg.ack()
                return
            # Our lease expired and another worker holds the task: the work
            # message is theirs now, so it is neither acked nor nak'ed here.
            log.warning("%s: lost the task (%s); leaving it", self.worker_id, e)
        except (StoreError, OSError) as e:
            # The log could not be written (its appends already retried for
            # transient_s): hand the message back for another try soon, as its
            # lease running out would, but without waiting that out. If even
            # the nak is not confirmed, the lease redelivers it.
            log.warning(
                "%s: could not record an outcome (%s); will be redelivered",
                self.worker_id,
                e,
            )
            with contextlib.suppress(StoreError):
                await msg.nak(delay=self.settings.backoff_base_s)
        except Exception:
            log.exception(
                "%s: unexpected error handling a work message", self.worker_id
            )

    async def _was_cancelled(self, msg: Delivery) -> bool:
        """Whether the task of a work message ends with its cancellation."""
        try:
            item = codec.decode_work(msg.data)
            return await ends_cancelled(self.store, item.goal_id, item.task_id)
        except (MalformedEvent, StoreError):
            return False

    async def handle(self, msg: Delivery) -> None:
        """Run one work message to an outcome."""
        await self.runner.handle(msg)

    async def _claim(
        self, item: WorkItem, work_seq: int, delivered: int
    ) -> Claim | Literal["stale", "theirs"]:
        """Claim the task for this delivery of its work message (see runs.py)."""
        return await self.runner.claim(item, work_seq, delivered)
