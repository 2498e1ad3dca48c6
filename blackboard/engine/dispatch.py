"""Which ready work goes out now: lane windows, aged priorities, tenants. Pure.

The scheduler does not put every task whose dependencies are done on its
lane's queue: a queue is first in, first out, and what is in it can no longer
be reordered. It keeps them here as *offers* and releases to each lane only as
many as the lane's window has room for (tasks ready or running on it), so
what runs next is decided when a slot frees, among everything waiting then.

Order. A task's effective priority is its goal's priority plus its own, plus
one for every ``aging_s`` seconds it has been waiting (since it became
eligible: created, and its dependencies done). Both terms grow at the same
rate for every task, so the order never changes while tasks wait, and it is a
fixed rank: ``eligible_since - priority * aging_s``, smallest first. Ranks are
grouped in levels of one aging period (``floor(rank / aging_s)``); within a
level the earliest deadline goes first (no deadline: last), then the rank.
The bound this gives: a task of priority ``p`` goes before any task of
priority ``P`` that became eligible more than ``(P - p + 1) * aging_s``
seconds after it (the one period is the level's width).

Tenants. Among the offers of the best level, the next slot goes by stride
scheduling: each tenant has a pass on each lane, the tenant with the smallest
goes, and its pass grows by ``1 / weight``; a tenant that had nothing waiting
joins at the smallest pass of those that had, so idling earns no credit.
Saturating a lane, tenants of weights 2 and 1 get its slots two to one. The
ranks come from the log (eligible since, priorities) and the configuration;
the passes are the scheduler's memory: one that takes over starts them level,
which shifts at most a few slots between tenants.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from datetime import datetime

    from blackboard.engine.state import GoalState, TaskState

T = TypeVar("T")

Key = tuple[str, str]
"""(goal id, task id)."""

Sort = tuple[int, float, float, str]
"""(priority level, deadline, rank, tie): a heap's order."""


@dataclass(frozen=True, slots=True)
class Offer(Generic[T]):
    """A task ready to go out, and what sending it takes (``action``)."""

    key: Key
    lane: str
    tenant: str
    rank: float
    """``eligible_since - priority * aging_s`` in seconds: smallest goes first."""
    tie: str
    """Submission order among equal ranks (goal ULID, then the task's ordinal)."""
    action: T
    deadline: float = math.inf
    """The goal's deadline (POSIX seconds): earliest first within a level."""


def rank(eligible_since: datetime, priority: int, aging_s: float) -> float:
    """The fixed rank of a task: its effective priority, ordered."""
    return eligible_since.timestamp() - priority * aging_s


def effective_priority(
    priority: int, eligible_since: datetime, now: datetime, aging_s: float
) -> float:
    """``priority + waited / aging_s``: what ``bb status`` shows."""
    waited = max((now - eligible_since).total_seconds(), 0.0)
    return priority + waited / aging_s


@dataclass(slots=True)
class ReadySet(Generic[T]):
    """Offers by lane and tenant, each tenant's in rank order."""

    aging_s: float = 60.0
    """Seconds of waiting worth one level of priority."""
    _offers: dict[Key, Offer[T]] = field(default_factory=dict)
    _waiting: Counter[str] = field(default_factory=Counter)
    """Offers by lane."""
    _passes: dict[str, dict[str, float]] = field(default_factory=dict)
    """Stride passes by lane, then tenant."""
    _heaps: dict[str, dict[str, list[tuple[Sort, Key]]]] = field(default_factory=dict)
    _goals: dict[str, Counter[str]] = field(default_factory=dict)
    """Offers by tenant, then goal."""

    def offer(self, o: Offer[T]) -> None:
        """Add ``o``, replacing what was offered for its task before."""
        old = self._offers.get(o.key)
        self._offers[o.key] = o
        self._waiting[o.lane] += 1
        self._count(o, 1)
        if old is not None:
            self._waiting[old.lane] -= 1
            self._count(old, -1)
        if old is not None and (self._sort(old), old.lane, old.tenant) == (
            self._sort(o),
            o.lane,
            o.tenant,
        ):
            return  # same place in the same heap: the entry there now finds ``o``
        heap = self._heaps.setdefault(o.lane, {}).setdefault(o.tenant, [])
        heapq.heappush(heap, (self._sort(o), o.key))

    def _sort(self, o: Offer[T]) -> Sort:
        # Levels of one aging period: earliest deadline first within one.
        return (self.level(o.rank), o.deadline, o.rank, o.tie)

    def discard(self, key: Key) -> None:
        """Forget a task's offer (its heap entry is dropped when reached)."""
        old = self._offers.pop(key, None)
        if old is not None:
            self._waiting[old.lane] -= 1
            self._count(old, -1)

    def waiting(self, lane: str) -> int:
        """Offers waiting on ``lane``."""
        return self._waiting[lane]

    def best(self, lane: str, skip: Iterable[str] = ()) -> Offer[T] | None:
        """The offer of ``lane`` that goes next among tenants not in ``skip``."""
        heads: list[tuple[Sort, Key]] = []
        skipped = set(skip)
        for tenant, heap in self._heaps.get(lane, {}).items():
            head = self._head(lane, tenant, heap) if tenant not in skipped else None
            if head is not None:
                heads.append(head)
        return self._offers[min(heads)[1]] if heads else None

    def level(self, rank: float) -> int:
        """The priority level of a rank: one aging period wide."""
        return math.floor(rank / self.aging_s)

    def goals(self, tenant: str) -> list[str]:
        """Goals with offers of ``tenant`` waiting, on any lane."""
        return [g for g, n in self._goals.get(tenant, Counter()).items() if n > 0]

    def _count(self, o: Offer[T], n: int) -> None:
        goals = self._goals.setdefault(o.tenant, Counter())
        goals[o.key[0]] += n
        if goals[o.key[0]] <= 0:
            del goals[o.key[0]]

    def lanes(self) -> list[str]:
        """Lanes with at least one offer waiting."""
        return sorted(lane for lane, n in self._waiting.items() if n > 0)

    def take(
        self,
        lane: str,
        free: int,
        weights: Mapping[str, float],
        room: Mapping[str, int] | None = None,
    ) -> list[Offer[T]]:
        """Up to ``free`` offers of ``lane``, best first (see the module doc).

        Args:
            lane: The lane with room.
            free: How many it has room for.
            weights: Tenants' weights (absent: 1).
            room: Slots each tenant with a quota may still take on the lane
                (absent: no quota); a tenant at 0 waits, its offers kept.
        """
        left = dict(room or {})
        heaps = self._heaps.get(lane, {})
        passes = self._passes.setdefault(lane, {})
        taken: list[Offer[T]] = []
        while len(taken) < free:
            heads: dict[str, tuple[Sort, Key]] = {}
            for tenant, heap in list(heaps.items()):
                head = self._head(lane, tenant, heap)
                if head is None:
                    del heaps[tenant]
                    passes.pop(tenant, None)  # idle: no credit kept
                elif left.get(tenant, 1) > 0:
                    heads[tenant] = head
            if not heads:
                break
            # A tenant with nothing waiting before joins at the lowest pass.
            known = [passes[t] for t in heads if t in passes]
            floor = min(known) if known else 0.0
            for t in heads:
                passes[t] = max(passes.get(t, floor), floor)
            best = min(h[0] for h in heads.values())
            near = [t for t, h in heads.items() if h[0][0] == best[0]]
            tenant = min(near, key=lambda t: (passes[t], heads[t][0], t))
            _, key = heapq.heappop(heaps[tenant])
            taken.append(self._offers.pop(key))
            self._waiting[lane] -= 1
            self._count(taken[-1], -1)
            passes[tenant] += 1 / max(weights.get(tenant, 1.0), 1e-9)
            if tenant in left:
                left[tenant] -= 1
        return taken

    def _head(
        self, lane: str, tenant: str, heap: list[tuple[Sort, Key]]
    ) -> tuple[Sort, Key] | None:
        """The heap's first entry that is still the offer of its task."""
        while heap:
            sort, key = heap[0]
            o = self._offers.get(key)
            if o is not None and (self._sort(o), o.lane, o.tenant) == (
                sort,
                lane,
                tenant,
            ):
                return heap[0]
            heapq.heappop(heap)  # replaced or discarded since it was pushed
        return None


@dataclass(frozen=True, slots=True)
class LaneLoad:
    """One lane's window as the log shows it: in flight, and waiting for room."""

    lane: str
    window: int
    """0: no window."""
    in_flight: int
    waiting: int
    tenants: dict[str, tuple[int, int]]
    """Tenant -> (in flight, waiting)."""


def lane_loads(
    goals: Iterable[GoalState], window: Callable[[str], int]
) -> list[LaneLoad]:
    """Each lane's load from the fold: what ``bb status --lanes`` shows.

    In flight: tasks ready or running. Waiting: tasks of running goals that
    could run (dependencies done, or the tasks they spawned finished) and
    that the window holds back.
    """
    flying: dict[str, Counter[str]] = {}
    waiting: dict[str, Counter[str]] = {}
    for goal in goals:
        tenant = goal.submitted.tenant
        for task in goal.tasks.values():
            if task.status in ("ready", "claimed"):
                flying.setdefault(task.lane, Counter())[tenant] += 1
            elif goal.status == "running" and _could_run(goal, task):
                waiting.setdefault(task.lane, Counter())[tenant] += 1
    return [
        LaneLoad(
            lane=lane,
            window=window(lane),
            in_flight=sum(flying.get(lane, Counter()).values()),
            waiting=sum(waiting.get(lane, Counter()).values()),
            tenants={
                t: (flying.get(lane, Counter())[t], waiting.get(lane, Counter())[t])
                for t in sorted(
                    {*flying.get(lane, Counter()), *waiting.get(lane, Counter())}
                )
            },
        )
        for lane in sorted({*flying, *waiting})
    ]


def _could_run(goal: GoalState, task: TaskState) -> bool:
    if task.status == "pending":
        deps = [goal.tasks.get(d) for d in task.depends_on]
        return all(d is not None and d.status == "done" for d in deps)
    if task.status == "needs_followup":
        kids = [goal.tasks.get(c) for c in task.waiting_on]
        return all(c is not None and c.status == "done" for c in kids)
    return False
