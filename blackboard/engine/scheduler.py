"""The scheduler process: fold the log, decide, write; one active at a time.

At start (and at every takeover) it rebuilds its state by folding the whole
events stream, reconciles (re-sends work for tasks that are ready but whose
work message may never have been published), then follows the stream in
batches: fold the batch, decide for what changed, write the decisions
concurrently. Decisions carry deterministic ids and guards (see decide.py),
so nothing it does is doubled by a restart or a takeover.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import math
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING

import msgspec

from blackboard import collector, ids, telemetry
from blackboard.engine import snapshot
from blackboard.engine.decide import Append, AppendBatch, Decider, Dispatch
from blackboard.engine.dispatch import Offer, ReadySet, rank
from blackboard.engine.quota import TenantUsage, Throttle
from blackboard.engine.state import (
    BoardState,
    GoalState,
    TaskState,
    evolve,
    retire,
)
from blackboard.errors import (
    BatchRejected,
    ConcurrencyConflict,
    InvalidEvent,
    PermissionDenied,
    StoreError,
    StreamConfigDrift,
)
from blackboard.log import codec
from blackboard.log.events import (
    ApprovalDenied,
    ApprovalGranted,
    BudgetEntry,
    Event,
    GoalCancelled,
    GoalCompleted,
    GoalFailed,
    GoalHalted,
    GoalResumed,
    GoalSubmitted,
    GoalThrottled,
    ModelCalled,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskNeedsFollowup,
    TaskPreempted,
)
from blackboard.log.ports import Share, ignore_bad

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from blackboard.log.codec import Envelope
    from blackboard.log.ports import EventStore, LeaderLock, SnapshotStore, WorkQueue

log = logging.getLogger("blackboard.scheduler")

# Task events after which the scheduler may have something to decide.
_WAKES = (
    TaskCreated,
    TaskCompleted,
    TaskFailed,
    TaskCancelled,
    TaskNeedsFollowup,
    TaskPreempted,
    ApprovalGranted,
    ApprovalDenied,
)

# How often the tasks-by-status gauge is refreshed (only with metrics on).
_COUNT_EVERY = timedelta(seconds=2)

_MAX_WRITES = 256
"""Writes (appends, work messages) in flight at once. A lane's window bounds
what one step dispatches; with no window (``window = 0``) a goal of 20,000
ready tasks would otherwise have them all in flight, and the publishes past
the server's patience time out and are sent again."""

_READY_BATCH = 64
"""TaskReady events written in one atomic batch at most (see ``_dispatch``)."""

_MAX_SAME_CONFLICT = 20
"""A write that meets the same conflict this many times can never win."""

# Goal events after which a goal's root span is written.
_GOAL_ENDS = (GoalCompleted, GoalFailed, GoalCancelled, GoalHalted)

# Events after which a goal may be finished with nothing open (state.retire).
_ENDS_SOMETHING = (GoalCompleted, GoalFailed, TaskCompleted, TaskFailed, TaskCancelled)

_IN_FLIGHT = ("ready", "claimed")
"""Statuses that take a slot of their lane's window."""

_OFFERABLE = ("pending", "needs_followup")
"""Statuses a task is dispatched from."""

_WARM_UP = timedelta(seconds=5)
"""At most this long after taking the lead, the windows wait for the goals
being created to have their tasks."""

SNAPSHOT = Share().name
"""The name of the scheduler's snapshot in the store's snapshots (of one
reading the whole log; a partition's is its share's name)."""

_SNAPSHOT_SHARE = 4
"""A snapshot is taken once the log has grown by ``snapshot_every`` events
and by a quarter of what the last one held: writing one costs time in
proportion to the fold, so this keeps its cost per event flat as goals grow,
and a new leader's tail at most about a quarter of the history."""

_SAVE_PATIENCE_S = 10.0
"""How long a scheduler that stops waits for a snapshot being saved."""


class Scheduler:
    """The one active scheduler of a deployment (others wait as standbys).

    Args:
        store: The log.
        decider: The pure decisions, with the scheduler's name (its actor).
        lock_ttl_s: The leader lease's time to live.
        clock: Now, for decisions (retry times, metrics).
        queue: Where work goes (default: the work queue beside ``store``).
        lock: The leader lease (default: ``scheduler`` beside ``store``).
        snapshot_every: Events between snapshots of the fold at least (see
            ``_SNAPSHOT_SHARE``); a new leader starts from the latest one and
            reads only the log after it. 0: none taken, none used.
        snapshots: Where they are kept (default: beside ``store``).
        share: The part of the log it schedules: all of it (the default) or
            one partition's goals, with its own lock and snapshot (its
            ``name``); the decider's policy should be the partition's share
            of the windows (``Policy.split``).
    """

    def __init__(
        self,
        store: EventStore,
        decider: Decider,
        *,
        lock_ttl_s: float = 10.0,
        clock: Callable[[], datetime] = ids.utcnow,
        queue: WorkQueue | None = None,
        lock: LeaderLock | None = None,
        snapshot_every: int = 0,
        snapshots: SnapshotStore | None = None,
        share: Share | None = None,
    ) -> None:
        self.store = store
        self.share = share if share is not None else Share()
        self.snapshot_every = snapshot_every
        self.snapshots = snapshots if snapshots is not None else store.snapshots()
        self._last_id = ""
        """The id of the last event folded (a snapshot names it)."""
        self._snap_seq = 0
        """The sequence of the latest snapshot saved or restored."""
        self._saving: asyncio.Task[None] | None = None
        self.queue = queue if queue is not None else store.work_queue()
        self.decider = decider
        self.clock = clock
        self.state = BoardState()
        self.lock = (
            lock
            if lock is not None
            else store.leader_lock(self.share.name, decider.actor, lock_ttl_s)
        )
        self.leading = asyncio.Event()
        self._busy_ids: dict[str, str] = {}
        self._busy: Counter[str] = Counter()
        self._redo_goals: set[str] = set()
        self._outraced: set[str] = set()
        """Goals whose goal-level write lost to an event not yet folded."""
        self._unsent: list[codec.WorkItem] = []
        self._next_count = clock()
        self._conflicts: dict[str, tuple[int | None, int]] = {}
        self._dead: set[str] = set()
        """Goals that cannot even record their failure: never decided again."""
        self._ready: ReadySet[Dispatch] = ReadySet(aging_s=decider.policy.aging_s)
        """Work decided on but held back by its lane's window."""
        self._flight: dict[str, Counter[str]] = {}
        """Tasks ready or running, by lane, then tenant (from the fold)."""
        self._warm_until = clock()
        self._deadlines: list[tuple[datetime, str]] = []
        """Running goals' deadlines, soonest first: when one passes, the goal
        is decided on (it halts) even if nothing else happens."""
        self._dispatching: dict[str, tuple[str, str, str, str]] = {}
        """(lane, tenant, goal, task) of each TaskReady being written: it takes
        its slot before the fold shows the task ready."""
        self._usage = TenantUsage()
        """Tenants' recent tokens and today's dollars, for their rate quotas."""
        self._notes: list[Append] = []
        """What ``_take`` decided to write besides work: GoalThrottled notes
        and TaskPreempted withdrawals, for ``_step`` to write."""
        self._unclaimed: dict[str, set[tuple[str, str]]] = {}
        """Tasks dispatched and not claimed yet, by lane (with preemption on)."""
        self._preempting: dict[str, str] = {}
        """Lane of each TaskPreempted being written: one at a time per lane."""

    async def run(self, stop: asyncio.Event) -> None:
        """Lead when possible, until ``stop`` is set."""
        while not stop.is_set():
            if not await self.lock.acquire(stop):
                return
            log.info("%s: leading%s", self.decider.actor, self.of_share())
            self.leading.set()
            try:
                await self._lead(stop)
            except (StreamConfigDrift, PermissionDenied):
                raise  # not transient: leading again would only fail again
            except StoreError as e:
                # The log was unavailable past the store's patience: step
                # down and lead again from a fresh rebuild, never on a part.
                log.warning("%s: stepping down: %s", self.decider.actor, e)
                await asyncio.sleep(1.0)
            finally:
                self.leading.clear()
                if stop.is_set() and self._last_id:
                    # A clean stop (a rolling restart) leaves the next leader
                    # the fold as it is now, once it is worth one.
                    self._maybe_snapshot(final=True)
                await self._saved()
                await self.lock.release()

    async def _lead(self, stop: asyncio.Event) -> None:
        self._busy_ids.clear()
        self._busy.clear()
        self._ready = ReadySet(aging_s=self.decider.policy.aging_s)
        self._dispatching.clear()
        self._preempting.clear()
        # Hold the windows until the goals that arrived while no scheduler
        # led have their tasks: a lane emptied during the gap would otherwise
        # fill with whatever was already created, before an urgent goal's.
        self._warm_until = self.clock() + _WARM_UP
        await self.store.ensure_share(self.share)
        await self.rebuild()
        self._count_flight()
        self._unclaimed = {}
        if self.decider.policy.preempt != "off":
            for goal in self.state.goals.values():
                for task in goal.tasks.values():
                    self._track_unclaimed(goal.goal_id, task)
        self._deadlines = [
            (g.limits.deadline, g.goal_id)
            for g in self.state.goals.values()
            if g.status == "running" and g.limits.deadline is not None
        ]
        heapq.heapify(self._deadlines)
        await self._reconcile()
        batches = self.store.follow_share(self.share)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                if stop.is_set() or self.lock.lost.is_set():
                    return
                goals: set[str] = set(self._redo_goals)
                self._redo_goals.clear()
                tasks: set[tuple[str, str]] = set()
                for env in batch:
                    self._observe(env, goals, tasks)
                now = self.clock()
                while self._deadlines and self._deadlines[0][0] <= now:
                    goals.add(heapq.heappop(self._deadlines)[1])
                if self._unsent:
                    await self._send_work(self._unsent)
                if goals or tasks or self._ready.lanes():
                    await self._step(goals, tasks)
                for goal_id in goals | {g for g, _ in tasks}:
                    retire(self.state, goal_id)
                self._maybe_snapshot()
                tm = telemetry.get()
                if tm.meter is not None and self.clock() >= self._next_count:
                    self._count_open_tasks(tm)
                    self._next_count = self.clock() + _COUNT_EVERY

    def _observe(
        self, env: Envelope, goals: set[str], tasks: set[tuple[str, str]]
    ) -> None:
        before = self._slot(env.event)
        evolve(self.state, env)
        event = env.event
        self._last_id = event.event_id
        self._dispatching.pop(event.event_id, None)
        self._preempting.pop(event.event_id, None)
        after = self._slot(event)
        if event.task_id is not None and self.decider.policy.preempt != "off":
            goal = self.state.goals.get(event.goal_id)
            task = goal.tasks.get(event.task_id) if goal is not None else None
            if task is not None:
                self._track_unclaimed(event.goal_id, task)
        if before != after:
            if before is not None:
                self._flight[before[0]][before[1]] -= 1
            if after is not None:
                self._flight.setdefault(after[0], Counter())[after[1]] += 1
        key = self._busy_ids.pop(event.event_id, None)
        if key is not None and self._release(key):
            # Events that arrived while the key was busy were not decided on
            # (a goal's first tasks come back in many batches while its
            # creation is in flight): look at the whole key again now.
            goal_id, _, task_id = key.partition(":")
            if task_id:
                tasks.add((goal_id, task_id))
            else:
                goals.add(goal_id)
        if isinstance(event, ModelCalled):
            self._count_usage(event)
        elif isinstance(event, GoalThrottled):
            pass  # our own note of a wait: nothing to decide
        elif isinstance(event, BudgetEntry):
            # A call's reservation: the fold keeps the goal's guard current,
            # and nothing the scheduler decides depends on it, unless it is
            # what made a goal-level write of ours lose its race.
            if event.goal_id in self._outraced:
                self._outraced.discard(event.goal_id)
                goals.add(event.goal_id)
        elif event.task_id is None:
            goals.add(event.goal_id)
            if isinstance(event, GoalSubmitted | GoalResumed):
                goal = self.state.goals.get(event.goal_id)
                if goal is not None and goal.limits.deadline is not None:
                    heapq.heappush(
                        self._deadlines, (goal.limits.deadline, goal.goal_id)
                    )
            self._outraced.discard(event.goal_id)  # decided again now
            self._trace_goal_end(env)
            self._log_goal(event)
        elif isinstance(event, _WAKES):
            tasks.add((event.goal_id, event.task_id))
        elif (g := self.state.goals.get(event.goal_id)) and g.status == "cancelled":
            # Anything a task of a cancelled goal does is a reason to fence it.
            tasks.add((event.goal_id, event.task_id))

    def _slot(self, event: Event) -> tuple[str, str] | None:
        """(lane, tenant) whose window the event's task takes now, if any."""
        if event.task_id is None:
            return None
        goal = self.state.goals.get(event.goal_id)
        task = goal.tasks.get(event.task_id) if goal is not None else None
        if goal is None or task is None or task.status not in _IN_FLIGHT:
            return None
        return (task.lane, goal.submitted.tenant)

    def _track_unclaimed(self, goal_id: str, task: TaskState) -> None:
        """Keep ``task`` among its lane's preemptible tasks while it is one.

        Preemptible: dispatched and nothing since (no claim, no retry), and
        not a task resuming after the tasks it spawned (it would restart
        from pending instead).
        """
        key = (goal_id, task.task_id)
        if (
            task.status == "ready"
            and task.last_seq == task.ready_seq
            and not task.waiting_on
        ):
            self._unclaimed.setdefault(task.lane, set()).add(key)
        else:
            self._unclaimed.get(task.lane, set()).discard(key)

    def _count_usage(self, event: ModelCalled) -> None:
        """Count a call against its tenant's rate quotas."""
        goal = self.state.goals.get(event.goal_id)
        tenant = (
            goal.submitted.tenant
            if goal is not None
            else self.state.retired.get(event.goal_id)
        )
        if tenant is not None and tenant in self.decider.policy.rates:
            self._usage.record(
                tenant,
                event.at,
                event.tokens_in + event.tokens_cached + event.tokens_out,
                event.cost_usd,
            )

    def _count_flight(self) -> None:
        """Tasks in flight by lane and tenant, from the whole fold (at a start)."""
        self._flight = {}
        for goal in self.state.goals.values():
            for task in goal.tasks.values():
                if task.status in _IN_FLIGHT:
                    lane = self._flight.setdefault(task.lane, Counter())
                    lane[goal.submitted.tenant] += 1

    def in_flight(self, lane: str) -> Counter[str]:
        """Tasks taking a slot of ``lane``'s window, by tenant."""
        counts = Counter(self._flight.get(lane, Counter()))
        for event_id, (sent_lane, tenant, goal_id, task_id) in list(
            self._dispatching.items()
        ):
            goal = self.state.goals.get(goal_id)
            task = goal.tasks.get(task_id) if goal is not None else None
            if task is None or task.status not in _OFFERABLE:
                # Read back (or refused, or moved on): the fold counts it now.
                del self._dispatching[event_id]
            elif sent_lane == lane:
                counts[tenant] += 1
        return +counts

    def waiting(self, lane: str) -> int:
        """Tasks of ``lane`` decided on and held back by its window."""
        return self._ready.waiting(lane)

    def _log_goal(self, event: Event) -> None:
        """A line per goal that arrives or ends (live events only)."""
        goal = self.state.goals.get(event.goal_id)
        if goal is None:
            return
        if isinstance(event, GoalSubmitted):
            log.info("goal %s arrived: %s", goal.goal_id, goal.text[:80])
        elif isinstance(event, _GOAL_ENDS):
            why = goal.reason or goal.summary or goal.halted_by or ""
            log.info("goal %s %s %s", goal.goal_id, goal.status, why[:200])

    def _trace_goal_end(self, env: Envelope) -> None:
        """The goal's root span and guardrail metrics, when the goal stops.

        Only events that arrive live get here (a restart's rebuild does not),
        so a goal's span is written once per end; a halted goal that is
        resumed gets a new one at its next end, with the same ids.
        """
        tm = telemetry.get()
        if not tm.enabled:
            return
        event = env.event
        goal = self.state.goals.get(event.goal_id)
        if goal is None or not isinstance(event, _GOAL_ENDS):
            return
        if isinstance(event, GoalHalted):
            tm.breach(event.guardrail)
        tm.goal_span(
            goal.goal_id,
            goal.text,
            goal.status,
            goal.submitted.at,
            event.at,
            {
                "bb.tasks": len(goal.tasks),
                "bb.tokens": goal.tokens,
                "bb.cost_usd": round(goal.cost_usd, 6),
            },
        )
        if tm.meter is not None:
            self._count_open_tasks(tm)

    def _count_open_tasks(self, tm: telemetry.Telemetry) -> None:
        counts: Counter[tuple[str, str]] = Counter(
            (t.lane, t.status)
            for g in self.state.goals.values()
            if g.status == "running"
            for t in g.tasks.values()
        )
        tm.open_tasks = dict(counts)
        policy = self.decider.policy
        windows: dict[tuple[str, str], int] = {}
        for lane in sorted({*self._flight, *self._ready.lanes()}):
            windows[(lane, "in_flight")] = sum(self.in_flight(lane).values())
            windows[(lane, "waiting")] = self._ready.waiting(lane)
            windows[(lane, "limit")] = policy.window(lane)
        tm.windows = windows

    async def rebuild(self) -> int:
        """Fold the log afresh: from the latest snapshot if it is usable.

        Returns the sequence the snapshot restored (0: the whole log was
        folded).
        """
        self.state = BoardState()
        self._usage = TenantUsage()
        self._last_id, self._snap_seq = "", 0
        self.share.position = 0
        collector.catching_up()
        try:
            await self._restore()
            restored = self._snap_seq
            async for env in self.store.read_share(self.share):
                evolve(self.state, env)
                self._last_id = env.event.event_id
                if isinstance(env.event, ModelCalled):
                    self._count_usage(env.event)
                elif isinstance(env.event, _ENDS_SOMETHING):
                    retire(self.state, env.event.goal_id)
        finally:
            collector.caught_up()
        return restored

    async def _restore(self) -> None:
        """Start from the latest snapshot of the fold, if it is this log's.

        Anything less than a snapshot provably of this log and this code
        (snapshot.py) is passed over with a line saying why: the whole log is
        then folded, which is always right, only slower.
        """
        if not self.snapshot_every:
            return
        actor = self.decider.actor
        try:
            data = await self.snapshots.load(self.share.name)
        except StoreError as e:
            log.warning("%s: no snapshot read (%s); folding the whole log", actor, e)
            return
        if data is None:
            return
        try:
            snap = snapshot.decode(data)
        except snapshot.SnapshotRefused as e:
            log.info("%s: snapshot not used: %s; folding the whole log", actor, e)
            return
        try:
            there = await self.store.get(snap.last_seq, on_bad=ignore_bad)
        except StoreError as e:
            log.warning(
                "%s: snapshot at %d not checked against the log (%s); "
                "folding the whole log",
                actor,
                snap.last_seq,
                e,
            )
            return
        if not self.share.whole:
            # The partitions stream is a copy of the log: the snapshot's
            # position in it must hold the copy of its event or one after
            # (a message there it could not read), else it is another copy.
            at = await self.store.share_at(self.share, snap.position)
            if at is None or at < snap.last_seq:
                log.warning(
                    "%s: snapshot at %d is not of this partitions stream (its"
                    " position %d holds %s); folding the whole partition",
                    actor,
                    snap.last_seq,
                    snap.position,
                    "nothing" if at is None else f"the copy of {at}",
                )
                return
        if there is None or there.event.event_id != snap.last_event_id:
            log.warning(
                "%s: snapshot at %d is not of this log (it names event %s, the "
                "log has %s there); folding the whole log",
                actor,
                snap.last_seq,
                snap.last_event_id,
                there.event.event_id if there is not None else "nothing",
            )
            return
        self.state, self._usage = snap.state, snap.usage
        self._last_id, self._snap_seq = snap.last_event_id, snap.last_seq
        self.share.position = snap.position
        log.info(
            "%s: fold restored at sequence %d from a snapshot (%d goals)",
            actor,
            snap.last_seq,
            len(snap.state.goals),
        )

    def _maybe_snapshot(self, final: bool = False) -> None:
        """Take a snapshot if the log has grown enough since the last one.

        ``final``: the leader is stopping; ``snapshot_every`` events since the
        last one are enough.

        Encoding is done here, between two batches, so the snapshot is the
        fold as of one sequence; saving goes on in the background (one at a
        time), and a save that fails is only a line: the next is due anyway.
        """
        if not self.snapshot_every or not self._last_id:
            return
        if self._saving is not None and not self._saving.done():
            return
        seq = self.state.last_seq
        due = (
            self.snapshot_every
            if final
            else max(self.snapshot_every, self._snap_seq // _SNAPSHOT_SHARE)
        )
        if seq - self._snap_seq < due:
            return
        data = snapshot.encode(
            self.state, self._usage, self._last_id, self.share.position
        )
        self._snap_seq = seq
        self._saving = asyncio.create_task(self._save(data, seq))

    async def _save(self, data: bytes, seq: int) -> None:
        try:
            await self.snapshots.save(self.share.name, data)
        except StoreError as e:
            log.warning("%s: snapshot at %d not saved: %s", self.decider.actor, seq, e)
        else:
            log.info(
                "%s: snapshot at sequence %d saved (%.1f MB)",
                self.decider.actor,
                seq,
                len(data) / 1e6,
            )

    async def _saved(self) -> None:
        """Let a snapshot being saved finish (a while), then give up on it."""
        task, self._saving = self._saving, None
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(task, _SAVE_PATIENCE_S)
        except TimeoutError:
            log.warning("%s: snapshot not saved before stopping", self.decider.actor)

    def of_share(self) -> str:
        """`` (partition i of n)`` for a partition's scheduler, else ``""``."""
        if self.share.whole:
            return ""
        return f" (partition {self.share.index} of {self.share.count})"

    async def _reconcile(self) -> None:
        """After a (re)start: decide for every open goal; re-send ready work."""
        open_goals = [
            g
            for g in self.state.goals.values()
            if g.status in ("running", "halted", "cancelled")
            and (g.open_tasks > 0 or not g.tasks or g.status != "cancelled")
        ]
        resend = [
            _work_item(t, t.lane, t.task_type, t.dispatch, t.ready_seq)
            for g in open_goals
            for t in g.tasks.values()
            if t.status == "ready" and t.last_seq == t.ready_seq
        ]
        if resend:
            log.info(
                "re-sending %d ready work item(s) (deduplicated by id)", len(resend)
            )
            await self._send_work(resend)
        await self._step({g.goal_id for g in open_goals}, set())

    async def _step(self, goals: set[str], tasks: set[tuple[str, str]]) -> None:
        if self._dead:
            goals = goals - self._dead
            tasks = {k for k in tasks if k[0] not in self._dead}
        busy = {k for k, n in self._busy.items() if n > 0}
        now = self.clock()
        decided = self.decider.decide(self.state, goals, tasks, now, busy)
        actions: list[Append | AppendBatch | Dispatch] = []
        for action in decided:
            if isinstance(action, Dispatch):
                self._ready.offer(self._offer(action))
            else:
                actions.append(action)
        creating = any(isinstance(a, AppendBatch) for a in actions)
        actions.extend(self._take(busy, now, creating))
        actions.extend(self._notes)
        self._notes = []
        if not actions:
            return
        by_goal: dict[str, list[AppendBatch]] = {}
        singles: list[Append | Dispatch] = []
        for action in actions:
            if isinstance(action, AppendBatch):
                by_goal.setdefault(action.items[0][0].goal_id, []).append(action)
            else:
                singles.append(action)
        gate = asyncio.Semaphore(_MAX_WRITES)

        async def single(action: Append | Dispatch) -> list[codec.WorkItem | None]:
            async with gate:
                return [await self._run(action)]

        async def ready(chunk: list[Dispatch]) -> list[codec.WorkItem | None]:
            async with gate:
                return await self._dispatch(chunk)

        dispatches = [a for a in singles if isinstance(a, Dispatch)]
        chunks = [
            dispatches[i : i + _READY_BATCH]
            for i in range(0, len(dispatches), _READY_BATCH)
        ]
        results = await asyncio.gather(
            *(self._run_batches(batches) for batches in by_goal.values()),
            *(single(a) for a in singles if not isinstance(a, Dispatch)),
            *(ready(chunk) for chunk in chunks),
        )
        # Work goes out in the order decide() gave (priority first), one
        # pipelined burst: the lane queues receive it in that order.
        work = [
            item for items in results if items for item in items if item is not None
        ]
        if work:
            await self._send_work(work)

    def _offer(self, action: Dispatch) -> Offer[Dispatch]:
        goal = self.state.goals[action.ready.goal_id]
        task = goal.tasks[action.ready.task_id or ""]
        priority = goal.submitted.priority + task.priority
        return Offer(
            key=(goal.goal_id, task.task_id),
            lane=action.lane,
            tenant=goal.submitted.tenant,
            rank=rank(
                _eligible_since(goal, task), priority, self.decider.policy.aging_s
            ),
            tie=f"{goal.goal_id}{task.ordinal:09d}",
            action=action,
            deadline=(
                goal.limits.deadline.timestamp()
                if goal.limits.deadline is not None
                else math.inf
            ),
        )

    def _take(
        self, busy: set[str], now: datetime, creating: bool = False
    ) -> list[Dispatch]:
        """The offers each lane's window has room for, best first.

        An offer whose task moved since (its goal halted or cancelled, the
        task decided otherwise) is dropped: whatever moved it was decided on.
        """
        policy = self.decider.policy
        taken: list[Dispatch] = []
        if now < self._warm_until:
            if creating or any(":" not in key for key in busy):
                return taken  # a goal's tasks are still being created
            self._warm_until = now
        throttled = self._throttled(now)
        for lane in self._ready.lanes():
            window = policy.window(lane)
            while True:
                flight = self.in_flight(lane)
                sent = sum(1 for a in taken if a.lane == lane)
                free = (
                    self._ready.waiting(lane)
                    if window <= 0
                    else window - sum(flight.values()) - sent
                )
                if free <= 0:
                    if policy.preempt == "requeue" and not any(
                        a.lane == lane for a in taken
                    ):
                        self._preempt(lane, busy, now, throttled)
                    break
                room = {
                    t: quota
                    - flight[t]
                    - sum(
                        1 for a in taken if a.lane == lane and self._tenant_of(a) == t
                    )
                    for t, quota in policy.quotas.items()
                }
                room.update(dict.fromkeys(throttled, 0))
                offers = self._ready.take(lane, free, policy.weights, room)
                if not offers:
                    break
                for o in offers:
                    if self._current(o.action, busy):
                        ready = msgspec.structs.replace(o.action.ready, at=now)
                        taken.append(dataclasses.replace(o.action, ready=ready))
        return taken

    def _throttled(self, now: datetime) -> set[str]:
        """Tenants at a rate quota now; each goal they hold back notes why.

        One ``GoalThrottled`` per goal and wait: its id names the quota and
        when the wait ends, and the fold keeps the last one until the goal's
        work goes out again, so neither a repeat nor a new leader writes it
        twice.
        """
        rates = self.decider.policy.rates
        out: set[str] = set()
        for tenant, quota in rates.items():
            found = self._usage.throttle(tenant, quota, now)
            if found is None:
                continue
            out.add(tenant)
            for goal_id in self._ready.goals(tenant):
                goal = self.state.goals.get(goal_id)
                if goal is not None and goal.status == "running":
                    self._note_throttle(goal, found, now)
        return out

    def _note_throttle(self, goal: GoalState, found: Throttle, now: datetime) -> None:
        noted = goal.throttled
        if noted is not None and noted.quota == found.quota and noted.until > now:
            return  # this wait is on the log already
        event_id = (
            f"GoalThrottled:{goal.goal_id}:{found.quota}:{found.until:%Y%m%dT%H%M%S}"
        )
        if event_id in self._busy_ids:
            return  # being written
        self._notes.append(
            Append(
                GoalThrottled(
                    event_id=event_id,
                    goal_id=goal.goal_id,
                    at=now,
                    actor=self.decider.actor,
                    tenant=found.tenant,
                    quota=found.quota,
                    used=found.used,
                    limit=found.limit,
                    until=found.until,
                    reason=found.reason,
                ),
                None,
            )
        )
        log.info("goal %s waits: %s", goal.goal_id, found.reason)

    def _preempt(
        self, lane: str, busy: set[str], now: datetime, throttled: set[str]
    ) -> None:
        """Withdraw the worst unclaimed task of a full lane for better work.

        With ``[engine] preempt = "requeue"``: if the best offer waiting (of
        a tenant that could take the slot) is of a better level than a task
        dispatched to the lane and not claimed yet, that task gives its slot
        up: ``TaskPreempted``, guarded on its ``TaskReady``, so a worker's
        claim wins any race. One withdrawal per lane at a time; the slot it
        frees goes to the best offer then, by the usual choice.
        """
        if any(pending == lane for pending in self._preempting.values()):
            return
        policy = self.decider.policy
        flight = self.in_flight(lane)
        full = {t for t, quota in policy.quotas.items() if flight[t] >= quota}
        best = self._ready.best(lane, skip=throttled | full)
        if best is None:
            return
        worst: tuple[int, str, GoalState, TaskState] | None = None
        for goal_id, task_id in self._unclaimed.get(lane, set()):
            goal = self.state.goals.get(goal_id)
            task = goal.tasks.get(task_id) if goal is not None else None
            if goal is None or task is None or goal_id == best.key[0]:
                continue
            if goal_id in busy or f"{goal_id}:{task_id}" in busy:
                continue
            level = self._ready.level(
                rank(
                    _eligible_since(goal, task),
                    goal.submitted.priority + task.priority,
                    policy.aging_s,
                )
            )
            tie = f"{goal.goal_id}{task.ordinal:09d}"
            if worst is None or (level, tie) > worst[:2]:
                worst = (level, tie, goal, task)
        if worst is None or worst[0] <= self._ready.level(best.rank):
            return
        level, _, goal, task = worst
        event = TaskPreempted(
            event_id=f"preempt:{goal.goal_id}:{task.task_id}:{task.dispatch}",
            goal_id=goal.goal_id,
            task_id=task.task_id,
            at=now,
            actor=self.decider.actor,
            reason=(
                f"gave its slot on {lane} to goal {best.key[0]} task {best.key[1]}"
                f" (priority level {self._ready.level(best.rank)} before {level});"
                " it waits again"
            ),
            by_goal=best.key[0],
            by_task=best.key[1],
        )
        self._preempting[event.event_id] = lane
        self._notes.append(Append(event, task.last_seq))

    def _tenant_of(self, action: Dispatch) -> str:
        return self.state.goals[action.ready.goal_id].submitted.tenant

    def _current(self, action: Dispatch, busy: set[str]) -> bool:
        """Whether the task is still as it was when the dispatch was decided."""
        goal = self.state.goals.get(action.ready.goal_id)
        if goal is None or goal.status != "running" or goal.goal_id in busy:
            return False
        task = goal.tasks.get(action.ready.task_id or "")
        return (
            task is not None
            and task.status in _OFFERABLE
            and task.last_seq == action.expect
            and f"{goal.goal_id}:{task.task_id}" not in busy
        )

    def _hold(self, key: str, event_ids: list[str]) -> None:
        for event_id in event_ids:
            self._busy_ids[event_id] = key
        self._busy[key] += len(event_ids)

    def _release(self, key: str, n: int = 1) -> bool:
        """Count ``n`` writes of ``key`` as landed; True when none is left."""
        self._busy[key] -= n
        if self._busy[key] <= 0:
            del self._busy[key]
            return True
        return False

    def _unhold(self, event_ids: list[str]) -> None:
        for event_id in event_ids:
            self._dispatching.pop(event_id, None)  # a dispatch not written
            self._preempting.pop(event_id, None)
            key = self._busy_ids.pop(event_id, None)
            if key is not None:
                self._release(key)

    async def _run_batches(self, batches: list[AppendBatch]) -> None:
        """Write a goal's creation batches in order; stop at the first failure."""
        goal_id = batches[0].items[0][0].goal_id
        all_ids = [e.event_id for b in batches for e, _ in b.items]
        self._hold(goal_id, all_ids)
        for batch in batches:
            try:
                await self.store.append_batch(batch.items)
            except (InvalidEvent, BatchRejected) as e:
                self._unhold(all_ids)
                await self._give_up(goal_id, f"its tasks cannot be created: {e}")
                return
            except ConcurrencyConflict as e:
                self._unhold(all_ids)
                if self._same_conflict(goal_id, e.actual):
                    await self._give_up(
                        goal_id,
                        f"its tasks cannot be created: {e} "
                        f"({_MAX_SAME_CONFLICT} times)",
                    )
                    return
                log.warning(
                    "goal %s: creating tasks failed (%s); will retry", goal_id, e
                )
                self._redo_goals.add(goal_id)
                return
            except StoreError as e:
                log.warning(
                    "goal %s: creating tasks failed (%s); will retry", goal_id, e
                )
                self._unhold(all_ids)
                self._redo_goals.add(goal_id)
                return
        self._conflicts.pop(goal_id, None)

    def _writing(self, action: Append | Dispatch) -> str:
        """Hold the key of a decision being written; return the key."""
        event = action.ready if isinstance(action, Dispatch) else action.event
        key = (
            event.goal_id
            if event.task_id is None
            else f"{event.goal_id}:{event.task_id}"
        )
        self._hold(key, [event.event_id])
        if isinstance(action, Dispatch):
            goal = self.state.goals[event.goal_id]
            self._dispatching[event.event_id] = (
                action.lane,
                goal.submitted.tenant,
                event.goal_id,
                event.task_id or "",
            )
        return key

    async def _dispatch(self, chunk: list[Dispatch]) -> list[codec.WorkItem | None]:
        """Write the TaskReady events of a step's dispatches in one batch.

        One atomic batch of up to ``_READY_BATCH`` guarded events: one round
        trip (and one acknowledgement to read) for all of them instead of one
        each. Atomic, so if any guard lost (a task moved since the fold) or
        the batch is refused, none landed, and each is written on its own as
        it would be without the batch: the stale one meets its conflict
        alone, the others land. The work items follow with the sequences.
        """
        if len(chunk) == 1:
            return [await self._run(chunk[0])]
        for action in chunk:
            self._writing(action)
        written = [a.ready.event_id for a in chunk]
        try:
            seqs = await self.store.append_batch([(a.ready, a.expect) for a in chunk])
        except (ConcurrencyConflict, BatchRejected, InvalidEvent):
            self._unhold(written)
            return [await self._run(action) for action in chunk]
        except StoreError as e:
            log.warning("%d dispatches not written (%s); will retry", len(chunk), e)
            self._unhold(written)
            self._redo_goals.update(a.ready.goal_id for a in chunk)
            return [None] * len(chunk)
        items: list[codec.WorkItem | None] = []
        for action, seq in zip(chunk, seqs, strict=True):
            task = self.state.goals[action.ready.goal_id].tasks[
                action.ready.task_id or ""
            ]
            items.append(
                _work_item(
                    task, action.lane, action.task_type, action.ready.dispatch, seq
                )
            )
        return items

    async def _run(self, action: Append | Dispatch) -> codec.WorkItem | None:
        """Write one decision; a dispatch returns the work item to send."""
        event = action.ready if isinstance(action, Dispatch) else action.event
        key = self._writing(action)
        try:
            seq = await self.store.append(event, expect=action.expect)
        except InvalidEvent as e:
            self._unhold([event.event_id])
            await self._give_up(event.goal_id, f"cannot record a decision: {e}")
            return None
        except ConcurrencyConflict as e:
            # Someone wrote to the task since we folded; their event will
            # arrive and we decide again then.
            self._unhold([event.event_id])
            if event.task_id is None:
                self._outraced.add(event.goal_id)
            if self._same_conflict(key, e.actual):
                await self._give_up(
                    event.goal_id,
                    f"a write to {key} can never win: {e} ({_MAX_SAME_CONFLICT} times)",
                )
            return None
        except StoreError as e:
            log.warning("write of %s failed (%s); will retry", event.event_id, e)
            self._unhold([event.event_id])
            self._redo_goals.add(event.goal_id)
            return None
        if isinstance(action, Dispatch):
            task = self.state.goals[event.goal_id].tasks[event.task_id or ""]
            return _work_item(
                task, action.lane, action.task_type, action.ready.dispatch, seq
            )
        return None

    def _same_conflict(self, key: str, found: int | None) -> bool:
        """Count a conflict of ``key``; True once it repeated without change."""
        prev = self._conflicts.get(key)
        n = prev[1] + 1 if prev is not None and prev[0] == found else 1
        self._conflicts[key] = (found, n)
        return n >= _MAX_SAME_CONFLICT

    async def _give_up(self, goal_id: str, reason: str) -> None:
        """Fail a goal the scheduler cannot move on, instead of looping.

        Only that goal stops; if even its failure cannot be recorded (its own
        id is unusable), it is left out of every later decision, with a log
        line, so the rest of the deployment goes on.
        """
        self._conflicts = {
            k: v for k, v in self._conflicts.items() if not k.startswith(goal_id)
        }
        goal = self.state.goals.get(goal_id)
        if goal is None or goal.status in ("done", "failed", "cancelled"):
            return
        log.warning("goal %s fails: %s", goal_id, reason)
        failed: Event = GoalFailed(
            event_id=f"GoalFailed:{goal_id}:{goal.last_seq}",
            goal_id=goal_id,
            at=self.clock(),
            actor=self.decider.actor,
            reason=reason[:2000],
        )
        try:
            await self.store.append(failed)
        except StoreError as e:
            log.warning(
                "goal %s: cannot record its failure either (%s); leaving it alone",
                goal_id[:80],
                e,
            )
            self._dead.add(goal_id)

    async def _send_work(self, items: list[codec.WorkItem]) -> None:
        """Publish work items; those that fail are kept and retried."""
        self._unsent = [i for i in self._unsent if i not in items]

        gate = asyncio.Semaphore(_MAX_WRITES)

        async def one(item: codec.WorkItem) -> None:
            msg_id = f"work:{item.goal_id}:{item.task_id}:{item.dispatch}"
            async with gate:
                await send(item, msg_id)

        async def send(item: codec.WorkItem, msg_id: str) -> None:
            try:
                await self.queue.publish(
                    item.lane,
                    codec.encode(item),
                    msg_id=msg_id,
                    traceparent=telemetry.traceparent(item.goal_id),
                )
            except Exception as e:
                log.warning("work for %s not sent (%s); will retry", item.task_id, e)
                self._unsent.append(item)

        await asyncio.gather(*(one(i) for i in items))


def _eligible_since(goal: GoalState, task: TaskState) -> datetime:
    """When the task could first run: created, and what it waits for done."""
    times = [task.created_at]
    for other in (*task.depends_on, *task.waiting_on):
        done = goal.tasks.get(other)
        if done is not None and done.finished_at is not None:
            times.append(done.finished_at)
    return max(times)


def _work_item(
    task: TaskState, lane: str, task_type: str, dispatch: int, ready_seq: int
) -> codec.WorkItem:
    return codec.WorkItem(
        goal_id=task.goal_id,
        task_id=task.task_id,
        lane=lane,
        task_type=task_type,
        dispatch=dispatch,
        ready_seq=ready_seq,
        max_attempts=task.max_attempts,
        approved=task.approved,
        parent_id=task.parent_id,
        parent_attempt=task.parent_attempt,
        parent_dispatch=task.parent_dispatch,
    )


async def stop_on(stop: asyncio.Event, *tasks: asyncio.Task[None]) -> None:
    """Set ``stop`` when any of ``tasks`` ends (so one failure stops all)."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
