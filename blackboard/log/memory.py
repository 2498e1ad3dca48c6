"""The in-memory twin of the event store: the same semantics, no server.

What the JetStream store guarantees, the twin does too, and the contract suite
(tests/contract/test_store.py) runs on both: one sequence for every event,
starting at 1; an event id stored once within the duplicate window (a re-sent
event returns the first sequence); the task-wide guard (``expect``: the
sequence of the last message on ``<prefix>.evt.<goal>.<task>.*``, 0 for none)
checked before deduplication, with the same ConcurrencyConflict and the same
recognition of a retried write that had landed, and skipping of garbage;
atomic batches, guards checked in order at commit; reads to the end, follows
that yield ``[]`` when idle; subject filters with ``*`` and ``>``. Writers'
subjects are transformed as the stream does (``<prefix>.in.evt...`` is stored
as ``<prefix>.evt...``); bodies above the blob threshold are kept aside behind
a ``BlobStub``, as in the object store; watchers see stored events only.

Time comes from ``clock`` (injectable), so a test can move past a duplicate
window, a lease or an ack wait without waiting for it. Every call yields to
the event loop once, as a round trip to a server would.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from blackboard import ids
from blackboard.errors import (
    BatchRejected,
    ConcurrencyConflict,
    StoreError,
)
from blackboard.log import codec, subjects, wire
from blackboard.log.events import Event, kind
from blackboard.log.memory_reads import MemoryReads, Stored
from blackboard.log.memory_work import (
    Leases,
    MemoryLeaderLock,
    MemorySharedState,
    MemorySnapshots,
    MemorySubscription,
    MemoryWorkQueue,
)
from blackboard.log.ports import MAX_BATCH, StoreSettings, ignore_bad
from blackboard.log.subjects import Subjects

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

__all__ = ["MemoryEventStore", "Stored"]


class MemoryEventStore(MemoryReads):
    """An EventStore in this process's memory (see the module docstring)."""

    def __init__(
        self,
        settings: StoreSettings | None = None,
        *,
        clock: Callable[[], datetime] = ids.utcnow,
    ) -> None:
        self.settings = settings or StoreSettings()
        self.subjects = Subjects(self.settings.prefix)
        self.clock = clock
        self._msgs: list[Stored] = []
        self._by_goal: dict[str, list[Stored]] = {}
        self._ids: dict[str, tuple[int, datetime]] = {}
        self._blobs: dict[str, bytes] = {}
        self._wake = asyncio.Event()
        self._watchers: list[tuple[str, asyncio.Queue[str]]] = []
        self._services: dict[str, Callable[[bytes], Awaitable[bytes]]] = {}
        self._durables = {}
        self._queue: MemoryWorkQueue | None = None
        self._leases = Leases()
        self._shared = MemorySharedState()
        self._snapshots = MemorySnapshots()
        self._stored_prefix = f"{self.settings.prefix}.evt."
        self._in_prefix = f"{self.settings.prefix}.in.evt."
        self._depth = len(self.settings.prefix.split("."))

    # --- setup ------------------------------------------------------------

    async def ensure(self) -> None:
        """Nothing to create."""
        await asyncio.sleep(0)

    def work_queue(self) -> MemoryWorkQueue:
        """The lanes' work queue of this twin (one per store)."""
        if self._queue is None:
            self._queue = MemoryWorkQueue(
                self.subjects, self.clock, self.settings.duplicate_window_s
            )
        return self._queue

    def leader_lock(self, key: str, holder: str, ttl_s: float) -> MemoryLeaderLock:
        """A lease in this twin's table of leases."""
        return MemoryLeaderLock(self._leases, key, holder, ttl_s, self.clock)

    def shared_state(self) -> MemorySharedState:
        """This twin's shared state (one per store, like the bucket)."""
        return self._shared

    def snapshots(self) -> MemorySnapshots:
        """This twin's snapshots (one per store, like the bucket)."""
        return self._snapshots

    # --- writing ----------------------------------------------------------

    def _prepare(
        self, event: Event, traceparent: str | None
    ) -> tuple[str, bytes, dict[str, str]]:
        subject, body, headers = wire.prepared(event, self.subjects, traceparent)
        if len(body) > self.settings.blob_threshold:
            digest = codec.sha256(body)
            self._blobs[digest] = body
            headers[subjects.H_BLOB] = digest
            body = wire.stub_body(event, body, digest)
        return self._transform(subject), body, headers

    def _transform(self, subject: str) -> str:
        """The subject the stream stores a write under (its subject transform)."""
        if not subject.startswith(self._in_prefix):
            raise StoreError(f"no stream takes {subject}: run `bb up` first")
        return self._stored_prefix + subject[len(self._in_prefix) :]

    def _duplicate(self, msg_id: str) -> int | None:
        """The sequence a message id got within the duplicate window, if any."""
        seen = self._ids.get(msg_id)
        if seen is None:
            return None
        window = timedelta(seconds=self.settings.duplicate_window_s)
        if self.clock() - seen[1] > window:
            del self._ids[msg_id]
            return None
        return seen[0]

    def _store(self, subject: str, data: bytes, headers: dict[str, str] | None) -> int:
        now = self.clock()
        msg = Stored(len(self._msgs) + 1, subject, data, headers, now)
        self._msgs.append(msg)
        self._by_goal.setdefault(self._goal_token(subject), []).append(msg)
        if headers and subjects.H_MSG_ID in headers:
            self._ids[headers[subjects.H_MSG_ID]] = (msg.seq, now)
        for flt, queue in self._watchers:
            if subjects.matches(flt, subject):
                queue.put_nowait(subject)
        return msg.seq

    def _woken(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def append(
        self,
        event: Event,
        *,
        expect: int | None = None,
        traceparent: str | None = None,
        _skips: int = 0,
    ) -> int:
        """Append one event and return its sequence (see ``EventStore``)."""
        await asyncio.sleep(0)
        subject, body, headers = self._prepare(event, traceparent)
        if expect is not None:
            scope = wire.guard(self.subjects, headers, event, expect)
            found = self._found(scope)
            # As JetStream: the guard is checked before deduplication.
            if found != expect:
                landed = await self._landed(scope, event.event_id)
                if landed is not None:
                    return landed
                if await self._garbage_since(scope, expect, found, _skips):
                    return await self.append(
                        event, expect=found, traceparent=traceparent, _skips=_skips + 1
                    )
                raise ConcurrencyConflict(scope, expect, found)
        seen = self._duplicate(event.event_id)
        if seen is not None:
            return seen
        seq = self._store(subject, body, headers)
        self._woken()
        return seq

    async def _garbage_since(
        self, scope: str, expect: int, found: int | None, skips: int
    ) -> bool:
        """Whether only undecodable messages landed on ``scope`` after ``expect``."""
        if found is None or found <= expect or skips >= wire.MAX_GARBAGE_SKIPS:
            return False
        async for env in self.read(scope, from_seq=expect + 1, on_bad=ignore_bad):
            return env.seq > found
        return True

    async def _landed(self, scope: str, event_id: str) -> int | None:
        last = self._last(scope)
        if last is not None and last.event_id == event_id:
            return last.seq
        return None

    async def append_many(self, events: Sequence[Event]) -> list[int]:
        """Append independent events, unguarded."""
        return list(await asyncio.gather(*(self.append(e) for e in events)))

    async def append_batch(
        self,
        items: Sequence[tuple[Event, int | None]],
        traceparent: str | None = None,
        _skips: int = 0,
    ) -> list[int]:
        """Append events atomically: all, contiguous and in order, or none."""
        if not items:
            return []
        if len(items) > MAX_BATCH:
            raise ValueError(f"an atomic batch holds at most {MAX_BATCH} events")
        await asyncio.sleep(0)
        prepared = [self._prepare(e, traceparent) for e, _ in items]
        refused = self._refusal(items, prepared)
        if refused is None:
            first = len(self._msgs) + 1
            for subject, body, headers in prepared:
                self._store(subject, body, headers)
            self._woken()
            return list(range(first, first + len(items)))
        code, found = refused
        event, _ = items[-1]
        exact = self.subjects.event(event.goal_id, event.task_id, kind(event))
        landed = await self._landed(exact, event.event_id)
        if landed is not None:
            return list(range(landed - len(items) + 1, landed + 1))
        if code == wire.ERR_BATCH_DUPLICATE_MSG_ID:
            raise BatchRejected(code, "batch has a duplicate message id")
        if _skips < wire.MAX_GARBAGE_SKIPS:
            moved = await self._guards_past_garbage(items)
            if moved is not None:
                return await self.append_batch(moved, traceparent, _skips=_skips + 1)
        guarded = [(e, x) for e, x in items if x is not None]
        e0, x0 = guarded[0] if guarded else items[0]
        scope = self.subjects.task_events(e0.goal_id, e0.task_id)
        raise ConcurrencyConflict(scope, x0 or 0, found)

    def _refusal(
        self,
        items: Sequence[tuple[Event, int | None]],
        prepared: list[tuple[str, bytes, dict[str, str]]],
    ) -> tuple[int, int] | None:
        """Why the batch cannot commit (error code, last seq found), or None.

        Guards are checked in order, each seeing the batch's earlier events.
        """
        staged: list[str] = []
        next_seq = len(self._msgs) + 1
        for (event, expect), (subject, _, _) in zip(items, prepared, strict=True):
            if expect is not None:
                scope = self.subjects.task_events(event.goal_id, event.task_id)
                found = self._found(scope)
                for i, s in enumerate(staged):
                    if subjects.matches(scope, s):
                        found = next_seq + i
                if found != expect:
                    return wire.ERR_WRONG_LAST_SEQUENCE, found
            if self._duplicate(event.event_id) is not None:
                return wire.ERR_BATCH_DUPLICATE_MSG_ID, 0
            staged.append(subject)
        return None

    async def _guards_past_garbage(
        self, items: Sequence[tuple[Event, int | None]]
    ) -> list[tuple[Event, int | None]] | None:
        out: list[tuple[Event, int | None]] = []
        moved = False
        for event, expect in items:
            if expect is not None:
                scope = self.subjects.task_events(event.goal_id, event.task_id)
                found = self._found(scope)
                if found > expect:
                    if not await self._garbage_since(scope, expect, found, 0):
                        return None
                    expect, moved = found, True
            out.append((event, expect))
        return out if moved else None

    async def publish_raw(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> int:
        """Store any bytes as a writer on ``subject`` would (for tests: garbage)."""
        await asyncio.sleep(0)
        seq = self._store(self._transform(subject), data, headers)
        self._woken()
        return seq

    # --- live subscriptions and durable readers -----------------------------

    async def watch(
        self, filter_subject: str, cb: Callable[[str], Awaitable[None]]
    ) -> MemorySubscription:
        """Call ``cb(subject)`` for each event stored on a filter from now on."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        entry = (filter_subject, queue)
        self._watchers.append(entry)

        async def pump() -> None:
            while True:
                await cb(await queue.get())

        return MemorySubscription(
            asyncio.create_task(pump()), lambda: self._watchers.remove(entry)
        )

    async def serve(
        self, subject: str, handler: Callable[[bytes], Awaitable[bytes]]
    ) -> MemorySubscription:
        """Answer :meth:`request` calls on ``subject``."""
        self._services[subject] = handler
        return MemorySubscription(None, lambda: self._services.pop(subject, None))

    async def request(self, subject: str, data: bytes) -> bytes:
        """Ask what :meth:`serve` answers (core NATS request/reply)."""
        handler = self._services.get(subject)
        if handler is None:
            raise StoreError(f"no responders on {subject}")
        return await handler(data)
