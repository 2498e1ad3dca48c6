"""The in-memory twins of the work queue, the leader lock and the shared state.

:class:`MemoryWorkQueue` behaves as ``BB_WORK`` with its lane consumers: one
sequence for the queue, messages deduplicated by id within the window, kept
until acked or termed; a delivery neither settled nor kept alive
(``in_progress``) within the lane's ``lease_s`` is delivered again with
``num_delivered`` + 1, as is a nak'ed one (after its delay); at most
``max_ack_pending`` deliveries are out at once. As on JetStream, settling
acts on the message, whichever delivery it comes from, and each delivery may
be settled once.

:class:`MemoryLeaderLock` is the key-value lease: created only when absent or
expired (``ttl_s`` after its last write), renewed by compare-and-set every
third of the TTL, and ``lost`` when a renewal finds it gone or taken.

:class:`MemorySharedState` is the key-value bucket of the fleet's shared
state: one revision counter for the bucket, as a stream's sequence, and
compare-and-set on a key's revision.

Time comes from the injected clock; waits are real (an asyncio timeout), and
each wait re-reads the clock, so a test's clock may jump ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from blackboard.errors import StateConflict, StoreError
from blackboard.log.ports import Versioned
from blackboard.log.subjects import H_MSG_ID, H_TRACEPARENT

if TYPE_CHECKING:
    from collections.abc import Callable

    from blackboard.log.ports import Delivery
    from blackboard.log.subjects import Subjects

log = logging.getLogger("blackboard.worker")

_POLL_S = 0.05
"""How often a waiting fetch looks again at leases that may have expired."""


class MemorySubscription:
    """A subscription of the twin (see ``ports.Subscription``)."""

    def __init__(
        self, task: asyncio.Task[None] | None, undo: Callable[[], object]
    ) -> None:
        self._task = task
        self._undo = undo

    async def close(self) -> None:
        """Stop receiving."""
        self._undo()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass(slots=True)
class _Work:
    seq: int
    lane: str
    subject: str
    data: bytes
    headers: dict[str, str]
    at: datetime
    delivered: int = 0
    out_until: datetime | None = None
    """While delivered and neither settled nor expired: its ack deadline."""
    not_before: datetime | None = None
    """A nak'ed message's delay."""


@dataclass(slots=True)
class _Lane:
    lease_s: float
    max_ack_pending: int
    work: dict[int, _Work] = field(default_factory=dict)


class MemoryDelivery:
    """One delivery of a work message (see ``ports.Delivery``)."""

    def __init__(self, queue: MemoryWorkQueue, lane: _Lane, work: _Work) -> None:
        self._queue = queue
        self._lane = lane
        self._work = work
        self._settled = False
        self.subject = work.subject
        self.data = work.data
        self.headers: dict[str, str] | None = dict(work.headers)
        self.seq = work.seq
        self.num_delivered = work.delivered
        self.timestamp: datetime | None = work.at

    def _settle(self, what: str) -> bool:
        """Mark settled; False if the message is gone already."""
        if self._settled:
            raise StoreError(f"{what}: message was already acknowledged")
        self._settled = True
        return self._work.seq in self._lane.work

    async def ack(self) -> None:
        """Done: the message is removed."""
        await asyncio.sleep(0)
        if self._settle("ack"):
            del self._lane.work[self.seq]

    async def term(self) -> None:
        """Never deliver it again."""
        await asyncio.sleep(0)
        if self._settle("term"):
            del self._lane.work[self.seq]

    async def nak(self, delay: float | None = None) -> None:
        """Deliver it again, after ``delay`` seconds if given."""
        await asyncio.sleep(0)
        if self._settle("nak"):
            now = self._queue.clock()
            self._work.out_until = None
            self._work.not_before = now + timedelta(seconds=delay) if delay else None
            self._queue.wake()

    async def in_progress(self) -> None:
        """Still working on it: the ack wait starts again."""
        await asyncio.sleep(0)
        if self._work.seq in self._lane.work and self._work.out_until is not None:
            lease = timedelta(seconds=self._lane.lease_s)
            self._work.out_until = self._queue.clock() + lease


class MemoryConsumer:
    """A lane's consumer, bound (see ``ports.Consumer``)."""

    def __init__(self, queue: MemoryWorkQueue, lane: _Lane) -> None:
        self._queue = queue
        self._lane = lane

    def _ready(self, n: int) -> list[Delivery]:
        now = self._queue.clock()
        lane = self._lane
        out_n = sum(
            1
            for w in lane.work.values()
            if w.out_until is not None and w.out_until > now
        )
        out: list[Delivery] = []
        for work in sorted(lane.work.values(), key=lambda w: w.seq):
            if len(out) >= n or out_n >= lane.max_ack_pending:
                break
            if work.out_until is not None and work.out_until > now:
                continue  # out with a live lease
            if work.not_before is not None and work.not_before > now:
                continue  # nak'ed with a delay
            work.delivered += 1
            work.not_before = None
            work.out_until = now + timedelta(seconds=lane.lease_s)
            out_n += 1
            out.append(MemoryDelivery(self._queue, lane, work))
        return out

    async def fetch(self, n: int, timeout: float) -> list[Delivery]:
        """Up to ``n`` deliveries; ``[]`` if none came within ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            out = self._ready(n)
            if out:
                return out
            left = deadline - loop.time()
            if left <= 0:
                return []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.woken.wait(), min(left, _POLL_S))

    async def close(self) -> None:
        """Nothing held: the lane's consumer stays."""


class MemoryWorkQueue:
    """The lanes' work queue of the twin (see the module docstring)."""

    def __init__(
        self, subjects: Subjects, clock: Callable[[], datetime], window_s: float
    ) -> None:
        self.subjects = subjects
        self.clock = clock
        self.window = timedelta(seconds=window_s)
        self.woken = asyncio.Event()
        self._seq = 0
        self._ids: dict[str, tuple[int, datetime]] = {}
        self._lanes: dict[str, _Lane] = {}
        self._unbound: dict[str, list[_Work]] = {}

    def wake(self) -> None:
        """Tell waiting fetches to look again."""
        woken, self.woken = self.woken, asyncio.Event()
        woken.set()

    async def publish(
        self, lane: str, body: bytes, *, msg_id: str, traceparent: str | None = None
    ) -> int:
        """Queue a message on a lane (deduplicated by ``msg_id``); its sequence."""
        await asyncio.sleep(0)
        now = self.clock()
        seen = self._ids.get(msg_id)
        if seen is not None and now - seen[1] <= self.window:
            return seen[0]
        self._seq += 1
        headers = {H_MSG_ID: msg_id}
        if traceparent is not None:
            headers[H_TRACEPARENT] = traceparent
        work = _Work(self._seq, lane, self.subjects.work(lane), body, headers, now)
        self._ids[msg_id] = (work.seq, now)
        if lane in self._lanes:
            self._lanes[lane].work[work.seq] = work
        else:
            # Kept on the stream until the lane's consumer exists.
            self._unbound.setdefault(lane, []).append(work)
        self.wake()
        return work.seq

    async def ensure_lane(
        self, lane: str, *, lease_s: float, max_ack_pending: int
    ) -> None:
        """Create the lane's consumer if it does not exist."""
        await asyncio.sleep(0)
        have = self._lanes.get(lane)
        if have is None:
            have = self._lanes[lane] = _Lane(lease_s, max_ack_pending)
            for work in self._unbound.pop(lane, []):
                have.work[work.seq] = work
        elif have.lease_s != lease_s:
            log.warning(
                "consumer bb-%s has ack_wait %ss, not the configured lease %ss; "
                "using it as it is",
                lane,
                have.lease_s,
                lease_s,
            )

    async def consumer(self, lane: str) -> MemoryConsumer:
        """Bind to the lane's consumer."""
        await asyncio.sleep(0)
        if lane not in self._lanes:
            raise StoreError(f"binding {lane}: consumer not found")
        return MemoryConsumer(self, self._lanes[lane])

    async def lag(self, lane: str) -> int:
        """Messages on the lane not yet delivered."""
        await asyncio.sleep(0)
        have = self._lanes.get(lane)
        if have is None:
            return len(self._unbound.get(lane, []))
        return sum(1 for w in have.work.values() if w.delivered == 0)


# --- the leader lock ---------------------------------------------------------


@dataclass(slots=True)
class _Lease:
    holder: str
    revision: int
    expires: datetime


@dataclass
class Leases:
    """The twin's key-value bucket of leases."""

    entries: dict[str, _Lease] = field(default_factory=dict)
    revisions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class MemoryLeaderLock:
    """A lease named ``key`` held by ``holder`` (see ``ports.LeaderLock``)."""

    def __init__(
        self,
        leases: Leases,
        key: str,
        holder: str,
        ttl_s: float,
        clock: Callable[[], datetime],
    ) -> None:
        self.leases = leases
        self.key = key
        self.holder = holder
        self.ttl_s = ttl_s
        self.clock = clock
        self.revision: int | None = None
        self.lost = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None

    def _live(self) -> _Lease | None:
        entry = self.leases.entries.get(self.key)
        if entry is None or entry.expires <= self.clock():
            return None
        return entry

    def _write(self) -> int:
        revision = next(self.leases.revisions)
        expires = self.clock() + timedelta(seconds=self.ttl_s)
        self.leases.entries[self.key] = _Lease(self.holder, revision, expires)
        return revision

    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it."""
        await asyncio.sleep(0)
        if self._live() is not None:
            return False
        self.revision = self._write()
        self.lost.clear()
        self._renewer = asyncio.create_task(self._renew())
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait as a standby until the lease is ours (or ``stop`` is set)."""
        announced = False
        while not stop.is_set():
            if await self.try_acquire():
                return True
            if not announced:
                log.info("%s: standby; another holds %s", self.holder, self.key)
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.ttl_s / 4)
        return False

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            entry = self._live()
            if entry is None or entry.revision != self.revision:
                log.warning(
                    "%s: lost the lease %s; stepping down", self.holder, self.key
                )
                self.lost.set()
                return
            self.revision = self._write()

    async def release(self) -> None:
        """Give the lease up so a standby takes over at once."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self.revision is not None and not self.lost.is_set():
            entry = self.leases.entries.get(self.key)
            if entry is not None and entry.revision == self.revision:
                del self.leases.entries[self.key]
        self.revision = None


class MemorySharedState:
    """The twin of ``ports.SharedState``: compare-and-set values by key.

    ``unreachable`` makes every call raise StoreError, as a server that
    cannot be reached would (for tests of what callers do then).
    """

    def __init__(self) -> None:
        self.entries: dict[str, Versioned] = {}
        self.unreachable = False
        self._revisions = itertools.count(1)

    async def _round_trip(self) -> None:
        await asyncio.sleep(0)
        if self.unreachable:
            raise StoreError("shared state: no server answered")

    async def get(self, key: str) -> Versioned | None:
        """The key's value and revision, or None if it was never written."""
        await self._round_trip()
        return self.entries.get(key)

    async def create(self, key: str, value: bytes) -> int:
        """Write a new key; StateConflict if it exists."""
        await self._round_trip()
        if key in self.entries:
            raise StateConflict(key, 0)
        return self._write(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Write the key if it is still at revision ``last``."""
        await self._round_trip()
        found = self.entries.get(key)
        if (found.revision if found is not None else 0) != last:
            raise StateConflict(key, last)
        return self._write(key, value)

    def _write(self, key: str, value: bytes) -> int:
        revision = next(self._revisions)
        self.entries[key] = Versioned(bytes(value), revision)
        return revision


class MemorySnapshots:
    """The twin of ``ports.SnapshotStore``: bytes by name.

    ``unreachable`` makes every call raise StoreError; ``saves`` counts the
    saves (tests look at when a snapshot was taken).
    """

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.unreachable = False
        self.saves = 0

    async def _round_trip(self) -> None:
        await asyncio.sleep(0)
        if self.unreachable:
            raise StoreError("snapshots: no server answered")

    async def load(self, name: str) -> bytes | None:
        """The latest bytes saved under ``name``, or None."""
        await self._round_trip()
        return self.blobs.get(name)

    async def save(self, name: str, data: bytes) -> None:
        """Replace what ``name`` holds."""
        await self._round_trip()
        self.blobs[name] = bytes(data)
        self.saves += 1
