"""Running the engine's processes inside one Python process.

``bb up`` and ``bb demo`` run a scheduler and one worker per lane here; the
tests do too, on JetStream or on the in-memory twins (any ``EventStore``, with
its work queue and lease, or others given). Separate processes
(``bb scheduler``, ``bb worker``) run the very same classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from blackboard import ids
from blackboard.engine.decide import Decider, Policy
from blackboard.engine.quota import RateQuota
from blackboard.engine.scheduler import Scheduler
from blackboard.engine.worker import Worker, WorkerSettings
from blackboard.errors import ComponentFailed
from blackboard.log.ports import Share

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping
    from datetime import datetime

    from blackboard.engine.context import Agent
    from blackboard.engine.handlers import Handler
    from blackboard.log.ports import EventStore, LeaderLock, WorkQueue
    from blackboard.runtime.config import Settings

log = logging.getLogger("blackboard.stack")


def shares(settings: Settings, partition: int | None = None) -> list[Share]:
    """The shares of the log one process schedules.

    Every partition of ``[engine] partitions``, or the one named (ValueError
    if out of range).
    """
    count = settings.engine.partitions
    if partition is not None:
        if not 0 <= partition < count:
            msg = (
                f"partition {partition}: [engine] partitions = {count}, so give"
                f" 0 to {count - 1}"
            )
            raise ValueError(msg)
        return [Share(partition, count)]
    return [Share(i, count) for i in range(count)]


def scheduler_for(
    store: EventStore,
    settings: Settings,
    share: Share,
    *,
    clock: Callable[[], datetime] = ids.utcnow,
    queue: WorkQueue | None = None,
    lock: LeaderLock | None = None,
) -> Scheduler:
    """The scheduler of one share, with the settings' policy split for it."""
    decider = Decider(
        f"scheduler-{ids.new_id()[-8:]}",
        policy_from(settings).split(share.index, share.count),
    )
    return Scheduler(
        store,
        decider,
        lock_ttl_s=settings.engine.lock_ttl_s,
        clock=clock,
        queue=queue,
        lock=lock,
        snapshot_every=settings.engine.snapshot_every,
        share=share,
    )


def policy_from(settings: Settings) -> Policy:
    """The scheduler's decision policy from the settings."""
    return Policy(
        approval_task_types=frozenset(settings.approvals.task_types),
        approval_lanes=frozenset(settings.approvals.lanes),
        max_attempts=settings.engine.max_attempts,
        lanes=frozenset(settings.lanes),
        rules=settings.policy,
        windows={name: lane.window for name, lane in settings.lanes.items()},
        aging_s=settings.engine.aging_s,
        weights={name: t.weight for name, t in settings.tenants.items()},
        on_deadline=settings.engine.on_deadline,
        preempt=settings.engine.preempt,
        quotas={
            name: t.max_in_flight
            for name, t in settings.tenants.items()
            if t.max_in_flight is not None
        },
        rates={
            name: RateQuota(t.tokens_per_minute, t.usd_per_day)
            for name, t in settings.tenants.items()
            if t.tokens_per_minute is not None or t.usd_per_day is not None
        },
    )


def worker_settings(
    settings: Settings, lane: str, concurrency: int | None = None
) -> WorkerSettings:
    """A lane worker's settings from the process settings."""
    lane_cfg = settings.lanes.get(lane)
    return WorkerSettings(
        lane=lane,
        concurrency=concurrency or (lane_cfg.concurrency if lane_cfg else 8),
        lease_s=settings.engine.lease_s,
        max_ack_pending=lane_cfg.max_ack_pending if lane_cfg else 1000,
        backoff_base_s=settings.engine.backoff_base_s,
        backoff_cap_s=settings.engine.backoff_cap_s,
    )


class Projecting(Protocol):
    """A projector run beside the engine (``projections.runner.Projector``).

    Handed in by the caller: the runtime does not import projections/.
    """

    async def run(self, stop: asyncio.Event) -> None:
        """Project until ``stop`` is set."""
        ...

    async def caught_up(self, seq: int) -> None:
        """Return once everything up to ``seq`` is projected."""
        ...


class Compensating(Protocol):
    """Undoes a failed goal's effects (``agents.compensate.OnFailure``).

    Handed in by the caller: the runtime does not import agents/.
    """

    async def compensate(self, goal_id: str) -> None:
        """Compensate the goal; errors are the caller's to log, not to raise."""
        ...


async def compensate_failures(
    store: EventStore, compensator: Compensating, stop: asyncio.Event
) -> None:
    """Compensate every goal that fails from now on, until ``stop`` is set.

    Failures are watched live (stored ``goal_failed`` events): one that lands
    while nothing watches is left for ``bb compensate``. Each goal is
    compensated in a task of its own, so a slow undo delays no other; at stop,
    those still running get the stack's grace period.
    """
    running: set[asyncio.Task[None]] = set()

    async def one(goal_id: str) -> None:
        try:
            await compensator.compensate(goal_id)
        except Exception:  # one goal's trouble must not stop the deployment
            log.exception("compensating failed goal %s", goal_id)

    async def failed(subject: str) -> None:
        goal_id, _, _ = store.subjects.parse_event(subject)
        task = asyncio.create_task(one(goal_id))
        running.add(task)
        task.add_done_callback(running.discard)

    sub = await store.watch(store.subjects.kind_filter("goal_failed"), failed)
    try:
        await stop.wait()
    finally:
        await sub.close()
        try:
            if running:
                await asyncio.wait(running)
        except asyncio.CancelledError:
            # Past the stack's grace: stop them too. What they recorded stays,
            # and `bb compensate` goes on from there.
            for task in running:
                task.cancel()
            raise


@dataclass
class Stack:
    """Handles on the in-process components."""

    scheduler: Scheduler | None
    """The first (or only) of ``schedulers``."""
    schedulers: list[Scheduler] = field(default_factory=list)
    """One per partition of the log (``[engine] partitions``)."""
    workers: list[Worker] = field(default_factory=list)
    projector: Projecting | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def running(
    store: EventStore,
    settings: Settings,
    handlers: Mapping[str, Handler] | None = None,
    *,
    lanes: list[str] | None = None,
    scheduler: bool = True,
    concurrency: int | None = None,
    projector: Projecting | None = None,
    queue: WorkQueue | None = None,
    lock: LeaderLock | None = None,
    agent: Agent | None = None,
    compensator: Compensating | None = None,
    clock: Callable[[], datetime] = ids.utcnow,
) -> AsyncIterator[Stack]:
    """Run a scheduler, a worker per lane (and a projector) until the block exits.

    ``clock`` is the scheduler's now (tests inject one to move days).
    ``queue`` and ``lock`` default to the ones beside ``store``
    (``store.work_queue()``, ``store.leader_lock(...)``). With a
    ``compensator``, every goal that fails meanwhile is compensated
    (``[policy] on_failure = "compensate"``: see :func:`compensate_failures`).

    If a component dies, the others are stopped, the block is interrupted and
    ComponentFailed is raised naming it: a command never goes on (or exits 0)
    without a part it started.
    """
    stack = Stack(scheduler=None)
    tasks: list[asyncio.Task[None]] = []
    body = asyncio.current_task()
    failed: list[tuple[str, BaseException]] = []
    inside = False  # the block is running: a failure interrupts it

    def watch(name: str, task: asyncio.Task[None]) -> None:
        def done(t: asyncio.Task[None]) -> None:
            if t.cancelled() or t.exception() is None or failed:
                return
            error = t.exception()
            assert error is not None
            failed.append((name, error))
            stack.stop.set()
            if body is not None and inside:
                body.cancel()

        task.add_done_callback(done)
        tasks.append(task)

    if projector is not None:
        stack.projector = projector
        watch("projector", asyncio.create_task(projector.run(stack.stop)))
    if scheduler:
        for share in shares(settings):
            sched = scheduler_for(
                store,
                settings,
                share,
                clock=clock,
                queue=queue,
                lock=lock if share.whole else None,
            )
            stack.schedulers.append(sched)
            watch(share.name, asyncio.create_task(sched.run(stack.stop)))
        stack.scheduler = stack.schedulers[0]
    if compensator is not None:
        watch(
            "compensator",
            asyncio.create_task(compensate_failures(store, compensator, stack.stop)),
        )
    for lane in lanes if lanes is not None else list(settings.lanes):
        worker = Worker(
            store,
            worker_settings(settings, lane, concurrency),
            handlers,
            queue=queue,
            agent=agent,
        )
        await worker.ensure_consumer()
        stack.workers.append(worker)
        watch(f"{lane} worker", asyncio.create_task(worker.run(stack.stop)))
    try:
        inside = True
        if failed:  # one died while the others were starting
            raise asyncio.CancelledError
        yield stack
    except asyncio.CancelledError:
        if not failed:
            raise
        if body is not None:
            body.uncancel()  # our own interruption, answered below
    finally:
        inside = False
        stack.stop.set()
        _, pending = await asyncio.wait(tasks, timeout=15)
        for task in pending:
            task.cancel()
    if failed:
        name, error = failed[0]
        raise ComponentFailed(f"{name} failed: {error}") from error
