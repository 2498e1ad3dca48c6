"""The scheduler's decisions: state in, events to write out. Pure.

``decide`` looks at the goals and tasks that changed and returns actions. Every
event it makes has a deterministic id derived from the state it was decided on
(``ready:<goal>:<task>:<dispatch>``, ...), and every task write is guarded on
the task's last sequence, so a restarted or deposed scheduler can decide again
without anything happening twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from blackboard.engine import builders, dag
from blackboard.engine.policy import ALLOW_ALL, Facts, PolicySet, evaluate
from blackboard.engine.state import TERMINAL, BoardState, GoalState, TaskState
from blackboard.errors import InvalidDag
from blackboard.log.events import (
    ApprovalRequested,
    Event,
    GoalCompleted,
    GoalFailed,
    GoalHalted,
    PolicyDecided,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskHeld,
    TaskReady,
    TaskSpec,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from datetime import datetime

    from blackboard.engine.quota import RateQuota

ROOT_TASK = "plan"
"""Id of the task created for a goal submitted without a DAG."""


@dataclass(frozen=True, slots=True)
class Policy:
    """The scheduler's configuration that decisions depend on."""

    approval_task_types: frozenset[str] = frozenset()
    approval_lanes: frozenset[str] = frozenset()
    max_attempts: int = 3
    root_lane: str = "frontier"
    lanes: frozenset[str] = frozenset()
    """Configured lanes; a task on another lane fails at admission. Empty: any."""
    rules: PolicySet = ALLOW_ALL
    """The policy (``engine.policy``), asked at every admission."""
    windows: Mapping[str, int] = field(default_factory=dict)
    """Each lane's window (``engine.dispatch``); 0: none."""
    default_window: int = 64
    """The window of a lane not in ``windows``."""
    aging_s: float = 60.0
    """Seconds of waiting worth one level of priority."""
    weights: Mapping[str, float] = field(default_factory=dict)
    """Tenants' weights (absent: 1)."""
    quotas: Mapping[str, int] = field(default_factory=dict)
    """Tenants' ``max_in_flight`` per lane (absent: none)."""
    rates: Mapping[str, RateQuota] = field(default_factory=dict)
    """Tenants' tokens per minute and dollars per day (absent: none)."""
    on_deadline: str = "halt"
    """What a goal past its deadline does: ``halt`` (resumable) or ``fail``."""
    preempt: str = "off"
    """``requeue``: a dispatched, unclaimed task of a worse level gives its
    slot to the best waiting offer (``engine.scheduler``)."""

    def window(self, lane: str) -> int:
        """How many of ``lane``'s tasks may be ready or running at once."""
        return self.windows.get(lane, self.default_window)

    def split(self, index: int, count: int) -> Policy:
        """Partition ``index``'s part of the fleet-wide limits, of ``count``.

        Each partition's scheduler counts only its own goals' tasks, so each
        lane window and tenant quota is shared out: partition ``i`` gets
        ``limit // count``, plus one if ``i < limit % count``, so the parts
        add up to the limit; but never 0 (which would mean no window at all),
        so a limit below ``count`` is exceeded, up to ``count``. A window of
        0 (none) stays none. Tenants' rate quotas need every partition's
        model calls and are refused with partitions (config.py).
        """
        if count == 1:
            return self

        def part(limit: int) -> int:
            if limit <= 0:
                return limit
            return max(1, limit // count + (1 if index < limit % count else 0))

        return replace(
            self,
            windows={lane: part(w) for lane, w in self.windows.items()},
            default_window=part(self.default_window),
            quotas={tenant: part(q) for tenant, q in self.quotas.items()},
        )


@dataclass(frozen=True, slots=True)
class Append:
    """Write one event, guarded on ``expect`` when it is not None."""

    event: Event
    expect: int | None


@dataclass(frozen=True, slots=True)
class AppendBatch:
    """Write events atomically, in order (a goal's initial tasks)."""

    items: tuple[tuple[Event, int | None], ...]


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Write TaskReady (guarded), then put a work item on the task's lane."""

    ready: TaskReady
    expect: int
    lane: str
    task_type: str


Action = Append | AppendBatch | Dispatch


@dataclass(slots=True)
class Decider:
    """Decides for one scheduler; holds only its identity and policy."""

    actor: str
    policy: Policy = field(default_factory=Policy)

    def decide(
        self,
        state: BoardState,
        goal_ids: Iterable[str],
        task_keys: Iterable[tuple[str, str]],
        now: datetime,
        busy: set[str],
    ) -> list[Action]:
        """Actions for the goals and tasks that changed.

        Args:
            state: the folded log.
            goal_ids: goals to look at as a whole (new, cancelled, resumed...).
            task_keys: (goal, task) pairs whose events arrived.
            now: the time written into new events.
            busy: keys (goal id, or ``goal:task``) with a write still in flight;
                they are skipped until their event is back in the log.
        """
        actions: list[Action] = []
        tasks_by_goal: dict[str, set[str]] = {}
        for goal_id in goal_ids:
            tasks_by_goal.setdefault(goal_id, set())
            goal = state.goals.get(goal_id)
            if goal is not None:
                tasks_by_goal[goal_id].update(goal.tasks)
        for goal_id, task_id in task_keys:
            tasks_by_goal.setdefault(goal_id, set()).add(task_id)
        for goal_id, task_ids in tasks_by_goal.items():
            goal = state.goals.get(goal_id)
            if goal is not None:
                actions.extend(self._goal(goal, task_ids, now, busy))
        # Work made ready together is dispatched by priority: the goal's, then
        # the task's, then the oldest first (sorted() is stable for the rest).
        return sorted(actions, key=lambda a: _dispatch_order(state, a))

    # --- per goal -----------------------------------------------------------

    def _goal(
        self, goal: GoalState, task_ids: set[str], now: datetime, busy: set[str]
    ) -> list[Action]:
        if goal.status in ("done", "failed"):
            return []
        if goal.status == "cancelled":
            # Unguarded, like the canceller's own: a fence that refuses every
            # later guarded write of the task. `bb cancel` writes these with
            # the goal's cancellation; this catches any task created after.
            return [
                self._cancel(
                    goal,
                    t,
                    now,
                    f"goal cancelled: {goal.reason}".strip(": "),
                    expect=None,
                )
                for t in goal.tasks.values()
                if t.status not in TERMINAL and builders.task_key(t) not in busy
            ]
        late = self._past_deadline(goal, now, busy)
        if late is not None:
            return [late]
        created = self._materialise(goal, now, busy)
        if created is not None:
            return created
        # A finished task can unblock its dependents and its waiting parent.
        considered = set(task_ids)
        for tid in task_ids:
            task = goal.tasks.get(tid)
            if task is not None and task.status in TERMINAL:
                considered.update(task.dependents)
                if task.parent_id:
                    considered.add(task.parent_id)
                # An original's end settles the duplicates that wait for it.
                if task.dedupe_key is not None:
                    same = goal.dedupe.get(task.dedupe_key, [])
                    if same and same[0] == task.task_id:
                        considered.update(same[1:])
        actions: list[Action] = []
        halting = goal.goal_id in busy
        for tid in sorted(considered, key=lambda t: builders.consider_order(goal, t)):
            task = goal.tasks.get(tid)
            if task is None or builders.task_key(task) in busy:
                continue
            for action in self._task(goal, task, now, halting):
                if isinstance(action, Append) and isinstance(action.event, GoalHalted):
                    halting = True
                actions.append(action)
        if goal.goal_id not in busy and not halting:
            end = self._end(goal, now)
            if end is not None:
                actions.append(end)
        return actions

    def _past_deadline(
        self, goal: GoalState, now: datetime, busy: set[str]
    ) -> Append | None:
        """A running goal past its deadline halts (or fails), with the figures."""
        deadline = goal.limits.deadline
        if (
            deadline is None
            or now < deadline
            or goal.status != "running"
            or goal.goal_id in busy
        ):
            return None
        late = (now - deadline).total_seconds()
        if self.policy.on_deadline == "fail":
            reason = (
                f"deadline {deadline:%Y-%m-%d %H:%M:%S%z} passed ({late:.0f} s ago)"
            )
            return Append(
                self._goal_ev(GoalFailed, goal, now, reason=reason), goal.last_seq
            )
        return Append(
            self._goal_ev(
                GoalHalted,
                goal,
                now,
                guardrail="deadline",
                limit=deadline.timestamp(),
                observed=now.timestamp(),
            ),
            goal.last_seq,
        )

    def _materialise(
        self, goal: GoalState, now: datetime, busy: set[str]
    ) -> list[Action] | None:
        """Create the goal's initial tasks if they are not all in the log yet."""
        specs = goal.submitted.tasks
        if goal.goal_id in busy:
            return []
        if not specs:
            if goal.tasks:
                return None
            specs = (
                TaskSpec(
                    task_id=ROOT_TASK,
                    type="plan",
                    lane=self.policy.root_lane,
                    payload={"goal": goal.text},
                ),
            )
        elif goal.specs_created == len(goal.spec_ids):
            return None  # every task of the DAG is in the log
        missing = [s for s in specs if s.task_id not in goal.tasks]
        if not missing:
            return None
        try:
            ordered = dag.order(missing, existing=goal.tasks.keys())
        except InvalidDag as e:
            return [
                Append(
                    self._goal_ev(GoalFailed, goal, now, reason=f"invalid DAG: {e}"),
                    goal.last_seq,
                )
            ]
        items: list[tuple[Event, int | None]] = [
            (self._created(goal, spec, now), 0) for spec in ordered
        ]
        # Batches hold at most 1,000 events; dependency order is kept across them.
        return [
            AppendBatch(tuple(items[i : i + 1000])) for i in range(0, len(items), 1000)
        ]

    def _created(self, goal: GoalState, spec: TaskSpec, now: datetime) -> TaskCreated:
        return builders.task_created(
            goal.goal_id,
            spec,
            at=now,
            actor=self.actor,
            max_attempts=self.policy.max_attempts,
        )

    # --- per task -----------------------------------------------------------

    def _task(
        self, goal: GoalState, task: TaskState, now: datetime, halting: bool
    ) -> list[Action]:
        if task.status == "pending":
            return self._admit(goal, task, now, halting)
        if task.status == "needs_followup":
            waiting = [goal.tasks.get(c) for c in task.waiting_on]
            if any(c is None or c.status not in TERMINAL for c in waiting):
                return []
            bad = [c for c in waiting if c is not None and c.status != "done"]
            if bad:
                return [
                    self._fail(
                        goal,
                        task,
                        now,
                        f"spawned task {bad[0].task_id} {bad[0].status}: "
                        f"{bad[0].error}",
                    )
                ]
            return [self._dispatch(goal, task, now)]
        return []

    def _admit(
        self, goal: GoalState, task: TaskState, now: datetime, halting: bool
    ) -> list[Action]:
        if goal.status == "halted" or halting:
            return []
        if self.policy.lanes and task.lane not in self.policy.lanes:
            return [
                self._fail(
                    goal,
                    task,
                    now,
                    f"unknown lane {task.lane!r}; configured: "
                    f"{', '.join(sorted(self.policy.lanes))}",
                )
            ]
        for dep in task.depends_on:
            d = goal.tasks.get(dep)
            if d is None:
                return [self._fail(goal, task, now, f"unknown dependency {dep!r}")]
            if d.status in ("failed", "cancelled"):
                return [
                    self._cancel(
                        goal,
                        task,
                        now,
                        f"dependency {dep} {d.status}",
                        expect=task.last_seq,
                    )
                ]
        if not all(goal.tasks[d].status == "done" for d in task.depends_on):
            return []
        original = builders.dedupe_original(goal, task)
        if original is not None:
            # Before guardrails and approval: a duplicate runs nothing.
            return self._duplicate(goal, task, original, now)
        breach = builders.breach(goal, task)
        if breach is not None:
            guardrail, limit, observed = breach
            why = f"{guardrail} {observed:g} exceeds {limit:g}"
            return [
                Append(
                    self._ev(
                        TaskHeld,
                        goal,
                        task,
                        now,
                        f"held:{goal.goal_id}:{task.task_id}:{task.last_seq}",
                        guardrail=guardrail,
                        reason=why,
                    ),
                    task.last_seq,
                ),
                Append(
                    self._goal_ev(
                        GoalHalted,
                        goal,
                        now,
                        guardrail=guardrail,
                        limit=limit,
                        observed=observed,
                        event_id=f"halted:{goal.goal_id}:{task.task_id}:{task.last_seq}",
                    ),
                    # Unguarded, as a worker's halt: the hold above is the
                    # guarded decision, and a halt that lost a race with a
                    # budget entry would never be decided again (the task is
                    # held by then). Its id makes a second copy a duplicate,
                    # and the fold halts only a running goal.
                    None,
                ),
            ]
        ruled = self._ruled(goal, task, now)
        if ruled is not None:
            return ruled
        policy = self._approval_policy(task)
        if policy and not task.approved:
            return [
                Append(
                    self._ev(
                        ApprovalRequested,
                        goal,
                        task,
                        now,
                        f"approval:{goal.goal_id}:{task.task_id}:{task.last_seq}",
                        reason=f"{task.task_type} on {task.lane} needs approval",
                        policy=policy,
                    ),
                    task.last_seq,
                )
            ]
        return [self._dispatch(goal, task, now)]

    def _duplicate(
        self, goal: GoalState, task: TaskState, original: TaskState, now: datetime
    ) -> list[Action]:
        """Settle a task whose dedupe key an earlier task of the goal has.

        The original done: the duplicate completes with its result. Failed or
        cancelled: the duplicate is cancelled. Still open: wait; its end wakes
        the duplicate (see ``_goal``).
        """
        if original.status == "done":
            return [
                Append(
                    self._ev(
                        TaskCompleted,
                        goal,
                        task,
                        now,
                        f"duplicate:{goal.goal_id}:{task.task_id}",
                        result=original.result,
                        attempt=0,
                        duplicate_of=original.task_id,
                    ),
                    task.last_seq,
                )
            ]
        if original.status in TERMINAL:
            return [
                self._cancel(
                    goal,
                    task,
                    now,
                    f"duplicate of {original.task_id} (dedupe key "
                    f"{task.dedupe_key!r}), which {original.status}",
                    expect=task.last_seq,
                )
            ]
        return []

    def _ruled(
        self, goal: GoalState, task: TaskState, now: datetime
    ) -> list[Action] | None:
        """What the policy says of admitting ``task``; None: go on.

        A decision that is not a plain allow is recorded first, on its own
        (``PolicyDecided``); its return to the log wakes the task, and the
        next round acts on it: a denied task fails, one moved to another lane
        is admitted there (the fold moves it), one that needs approval waits.
        """
        rules = self.policy.rules
        if rules.allows_all:
            return None
        facts = Facts(
            point="task",
            tenant=goal.submitted.tenant,
            lane=task.lane,
            task_type=task.task_type,
            depth=task.depth,
        )
        verdict = evaluate(rules, facts)
        if verdict.decision == "allow":
            return None
        lane = verdict.constraints.get("lane")
        if verdict.decision == "allow_with":
            if not isinstance(lane, str) or lane == task.lane:
                return None
            key = f"task:lane:{task.lane}:{lane}"
        else:
            key = f"task:{verdict.decision}"
        if key not in task.policy_keys:
            decided = self._ev(
                PolicyDecided,
                goal,
                task,
                now,
                f"policy:{goal.goal_id}:{task.task_id}:{task.last_seq}",
                point="task",
                subject=task.lane,
                decision=verdict.decision,
                rule=verdict.rule,
                policy_hash=verdict.policy_hash,
                constraints=verdict.constraints,
                reason=verdict.reason,
                key=key,
            )
            return [Append(decided, task.last_seq)]
        if verdict.decision == "deny":
            why = f"denied by policy: {verdict.explain()}"
            return [self._fail(goal, task, now, why)]
        if verdict.decision == "require_approval" and not task.approved:
            asked = self._ev(
                ApprovalRequested,
                goal,
                task,
                now,
                f"approval:{goal.goal_id}:{task.task_id}:{task.last_seq}",
                reason=f"{task.task_type} on {task.lane}: {verdict.explain()}",
                policy=f"rule:{verdict.rule}",
            )
            return [Append(asked, task.last_seq)]
        return None

    def _approval_policy(self, task: TaskState) -> str:
        if task.requires_approval:
            return "task"
        if task.task_type in self.policy.approval_task_types:
            return f"task_type:{task.task_type}"
        if task.lane in self.policy.approval_lanes:
            return f"lane:{task.lane}"
        return ""

    def _dispatch(self, goal: GoalState, task: TaskState, now: datetime) -> Dispatch:
        n = task.dispatch + 1
        ready = self._ev(
            TaskReady,
            goal,
            task,
            now,
            f"ready:{goal.goal_id}:{task.task_id}:{n}",
            dispatch=n,
        )
        assert isinstance(ready, TaskReady)
        return Dispatch(ready, task.last_seq, task.lane, task.task_type)

    def _cancel(
        self,
        goal: GoalState,
        task: TaskState,
        now: datetime,
        reason: str,
        *,
        expect: int | None,
    ) -> Append:
        """Cancel a task; ``cancel:<goal>:<task>`` whoever decides it."""
        event = self._ev(
            TaskCancelled,
            goal,
            task,
            now,
            f"cancel:{goal.goal_id}:{task.task_id}",
            reason=reason,
        )
        return Append(event, expect)

    def _fail(
        self, goal: GoalState, task: TaskState, now: datetime, error: str
    ) -> Append:
        return Append(
            self._ev(
                TaskFailed,
                goal,
                task,
                now,
                f"fail:{goal.goal_id}:{task.task_id}:{task.last_seq}",
                error=error,
                retryable=False,
                attempt=task.attempt,
            ),
            task.last_seq,
        )

    def _end(self, goal: GoalState, now: datetime) -> Append | None:
        if goal.open_tasks > 0 or not goal.tasks or goal.status != "running":
            return None
        bad = [t for t in goal.tasks.values() if t.status != "done"]
        if bad:
            first = min(bad, key=lambda t: t.ordinal)
            reason = (
                f"{len(bad)} task(s) did not finish; first: {first.task_id} "
                f"{first.status}: {first.error or ''}".rstrip(": ")
            )
            return Append(
                self._goal_ev(GoalFailed, goal, now, reason=reason), goal.last_seq
            )
        return Append(
            self._goal_ev(GoalCompleted, goal, now, summary=builders.summary(goal)),
            goal.last_seq,
        )

    # --- event builders -----------------------------------------------------

    def _ev(
        self,
        cls: type[Event],
        goal: GoalState,
        task: TaskState,
        now: datetime,
        event_id: str,
        **fields: object,
    ) -> Event:
        return cls(
            event_id=event_id,
            goal_id=goal.goal_id,
            task_id=task.task_id,
            at=now,
            actor=self.actor,
            **fields,
        )

    def _goal_ev(
        self,
        cls: type[Event],
        goal: GoalState,
        now: datetime,
        event_id: str | None = None,
        **fields: object,
    ) -> Event:
        kind = cls.__name__
        return cls(
            event_id=event_id or f"{kind}:{goal.goal_id}:{goal.last_seq}",
            goal_id=goal.goal_id,
            task_id=None,
            at=now,
            actor=self.actor,
            **fields,
        )


def _dispatch_order(state: BoardState, action: Action) -> tuple[int, int, int, str]:
    if not isinstance(action, Dispatch):
        return (0, 0, 0, "")
    goal = state.goals[action.ready.goal_id]
    task = goal.tasks[action.ready.task_id or ""]
    # Goal ids are ULIDs: their order is submission order.
    return (
        1,
        -goal.submitted.priority,
        -task.priority,
        f"{goal.goal_id}{task.ordinal:09d}",
    )
