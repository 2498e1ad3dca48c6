"""A goal's budget ledger on the log: reserve before a call, settle after.

Each entry is appended guarded on the goal's last budget entry (the subject
filter ``<prefix>.evt.<goal>.*.budget_entry``), so two workers reserving at
once cannot both spend the same headroom: one write lands, the other is
refused by the server, reads the new last entry and decides again. The
arithmetic is pure (``engine.budget``); this is the compare-and-set loop.

The writers of one process take turns per goal (an asyncio lock) before they
race: a goal's concurrent tasks in one worker would otherwise lose to each
other through the server, each loss one more read and write, and reserving
became most of a call's cost (the demo's 57 calls spent 69 s of their tasks'
time in the ledger, at 4.3 reads per entry). Across processes the guard
still decides. And a process remembers the last entry it wrote to a goal's
ledger: the next writer guards on it without reading it back, and reads only
when another process wrote since (the guard refuses the write then), so a
goal whose calls all go through one worker costs one request per entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import TYPE_CHECKING, Any, Final

from blackboard import ids
from blackboard.engine import budget
from blackboard.engine.state import fold
from blackboard.errors import ConcurrencyConflict, LogUnavailable
from blackboard.log.events import BudgetEntry, BudgetHold

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from blackboard.log.events import Limits
    from blackboard.log.ports import EventStore

MAX_TRIES: Final = 64
"""Lost races before giving up: each loss means another entry landed, so a
goal would need that many calls starting at the same instant."""


_TURNS: dict[tuple[int, str], tuple[asyncio.Lock, int]] = {}
"""Per (store, goal): the lock its writers in this process take turns on, and
how many hold or wait for it (the entry goes when none does)."""

_WROTE: weakref.WeakKeyDictionary[EventStore, dict[str, tuple[int, BudgetEntry]]] = (
    weakref.WeakKeyDictionary()
)
"""Per store, then goal: the last entry this process wrote, and its sequence.
Keyed by the store itself, not its id: a store made after another is gone
may get its id, and a sequence remembered from the first could pass the
second's guard by coincidence."""

_WROTE_MAX: Final = 4096
"""Goals remembered per store at most (the oldest are forgotten: one read
each then)."""


def _wrote(store: EventStore) -> dict[str, tuple[int, BudgetEntry]]:
    found = _WROTE.get(store)
    if found is None:
        found = _WROTE[store] = {}
    return found


def _remember(store: EventStore, goal_id: str, seq: int, entry: BudgetEntry) -> None:
    wrote = _wrote(store)
    wrote.pop(goal_id, None)
    wrote[goal_id] = (seq, entry)
    while len(wrote) > _WROTE_MAX:
        del wrote[next(iter(wrote))]


@contextlib.asynccontextmanager
async def _turn(store: EventStore, goal_id: str) -> AsyncIterator[None]:
    """Hold the goal's ledger against this process's other writers."""
    key = (id(store), goal_id)
    lock, users = _TURNS.get(key, (asyncio.Lock(), 0))
    _TURNS[key] = (lock, users + 1)
    try:
        async with lock:
            yield
    finally:
        lock, users = _TURNS[key]
        if users <= 1:
            del _TURNS[key]
        else:
            _TURNS[key] = (lock, users - 1)


class Ledger:
    """The budget ledger of one goal, as one writer (a worker's task) uses it."""

    def __init__(self, store: EventStore, goal_id: str, actor: str) -> None:
        self.store = store
        self.goal_id = goal_id
        self.actor = actor

    @property
    def _remembered(self) -> bool:
        return self.goal_id in _wrote(self.store)

    async def _guard(self, fresh: bool) -> tuple[int, BudgetEntry | None]:
        """The last entry: the one this process wrote, unless ``fresh``."""
        if not fresh and self._remembered:
            return _wrote(self.store)[self.goal_id]
        return await self.last()

    async def _write(self, entry: BudgetEntry, expect: int) -> None:
        seq = await self.store.append(entry, expect=expect)
        _remember(self.store, self.goal_id, seq, entry)

    async def last(self) -> tuple[int, BudgetEntry | None]:
        """The guard value of the chain and its last entry (0, None: empty)."""
        # Entries are goal-level: the last on the goal's own subject is the
        # last on the guard's filter, read with its body in one request.
        env = await self.store.last_event(self.goal_id, None, "budget_entry")
        if env is None:
            return 0, None
        if not isinstance(env.event, BudgetEntry):
            raise LogUnavailable(f"goal {self.goal_id}: budget entry unreadable")
        return env.seq, env.event

    async def _start(self) -> tuple[int, float]:
        """What the goal spent before its ledger began (calls made unreserved)."""
        state = fold([env async for env in self.store.read_goal(self.goal_id)])
        goal = state.goals.get(self.goal_id)
        return (0, 0.0) if goal is None else (goal.tokens, goal.cost_usd)

    def _base(self) -> dict[str, Any]:
        return {
            "event_id": ids.new_id(),
            "goal_id": self.goal_id,
            "at": ids.utcnow(),
            "actor": self.actor,
        }

    async def _totals(self, last: BudgetEntry | None) -> budget.Totals:
        return budget.Totals.of(last, await self._start() if last is None else (0, 0))

    async def reserve(
        self,
        limits: Limits,
        hold: BudgetHold,
        model: str,
        recorded: Callable[[str], Awaitable[tuple[int, float] | None]],
    ) -> str | budget.Refused:
        """Reserve ``hold`` if it fits; its id, or why it does not.

        ``recorded`` gives what a reservation's call used by its recorded
        ``ModelCalled`` (None: never recorded): reservations an earlier run of
        this task left open are settled with it first, or forfeited (their
        worst case counted as spent: the call may have been made).
        """
        reservation = ids.new_id()
        async with _turn(self.store, self.goal_id):
            return await self._reserve(limits, hold, model, recorded, reservation)

    async def _reserve(
        self,
        limits: Limits,
        hold: BudgetHold,
        model: str,
        recorded: Callable[[str], Awaitable[tuple[int, float] | None]],
        reservation: str,
    ) -> str | budget.Refused:
        for tried in range(MAX_TRIES):
            seq, last = await self._guard(fresh=tried > 0)
            totals = await self._totals(last)
            old = budget.stale(totals, hold.task_id, hold.dispatch, hold.attempt)
            if old:
                use = await recorded(old[0])
                entry = (
                    budget.forfeited(self._base(), totals, old[0])
                    if use is None
                    else budget.settled(self._base(), totals, old[0], use)
                )
            else:
                refused = budget.check(
                    totals, limits, hold.tokens, hold.cost_usd, model
                )
                if refused is not None:
                    if tried == 0 and self._remembered:
                        continue  # refuse only on what the log says now
                    return refused
                entry = budget.reserved(
                    self._base(), totals, reservation, hold, limits, model
                )
            try:
                await self._write(entry, seq)
            except ConcurrencyConflict:
                continue
            if not old:
                return reservation
        raise LogUnavailable(f"goal {self.goal_id}: budget ledger kept changing")

    async def settle(self, reservation: str, used: tuple[int, float] | None) -> None:
        """Settle a reservation with what its call used (None: release it)."""
        async with _turn(self.store, self.goal_id):
            await self._settle(reservation, used)

    async def _settle(self, reservation: str, used: tuple[int, float] | None) -> None:
        for tried in range(MAX_TRIES):
            seq, last = await self._guard(fresh=tried > 0)
            totals = await self._totals(last)
            if reservation not in (totals.held or {}):
                if tried == 0 and self._remembered:
                    continue  # what we remember may be behind: read it
                return  # settled already (a retried write that had landed)
            entry = budget.settled(self._base(), totals, reservation, used)
            try:
                await self._write(entry, seq)
            except ConcurrencyConflict:
                continue
            return
        raise LogUnavailable(f"goal {self.goal_id}: budget ledger kept changing")
