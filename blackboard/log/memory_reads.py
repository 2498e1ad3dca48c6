"""Reading the in-memory twin: reads to the end, follows, last messages.

The reading half of :class:`blackboard.log.memory.MemoryEventStore`, as
reading.py is of the JetStream store. Messages are kept as stored (bytes and
headers) and decoded on the way out, so a reader meets garbage and blob stubs
exactly as it would on JetStream.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from blackboard.errors import MalformedEvent, StoreError
from blackboard.log import subjects, wire
from blackboard.log.ports import DerivedReads, Last, OnBad, warn_bad

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Iterator
    from datetime import datetime

    from blackboard.log.codec import Envelope
    from blackboard.log.ports import (
        Consumer,
        Delivery,
        Share,
        StoredMessage,
        StoreSettings,
    )
    from blackboard.log.subjects import Subjects


@dataclass(frozen=True, slots=True)
class Stored:
    """A message as the twin stored it (a ``StoredMessage``)."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str] | None
    at: datetime


class MemoryReads(DerivedReads):
    """The reading half of the in-memory event store (see memory.py)."""

    settings: StoreSettings
    subjects: Subjects
    _msgs: list[Stored]
    _by_goal: dict[str, list[Stored]]
    _blobs: dict[str, bytes]
    _wake: asyncio.Event
    _depth: int
    _durables: dict[str, _Durable]

    def _goal_token(self, subject: str) -> str:
        """The goal token of an event subject or filter ('' if it has none)."""
        parts = subject.split(".")
        if len(parts) > self._depth + 1 and parts[self._depth] == "evt":
            return parts[self._depth + 1]
        return ""

    def _candidates(self, filter_subject: str) -> list[Stored]:
        token = self._goal_token(filter_subject)
        if token in ("*", ">", ""):
            return self._msgs
        return self._by_goal.get(token, [])

    def _scan(self, filter_subject: str | None, from_seq: int) -> Iterator[Stored]:
        """Messages on a filter from ``from_seq``, including those stored meanwhile."""
        flt = filter_subject or self.subjects.events_all
        msgs = self._candidates(flt)
        i = bisect.bisect_left(msgs, from_seq, key=lambda m: m.seq)
        while i < len(msgs):
            msg = msgs[i]
            i += 1
            if subjects.matches(flt, msg.subject):
                yield msg

    def _last(self, scope: str) -> Last | None:
        for msg in reversed(self._candidates(scope)):
            if subjects.matches(scope, msg.subject):
                msg_id = (msg.headers or {}).get(subjects.H_MSG_ID, "")
                return Last(msg.seq, msg_id, msg.subject)
        return None

    async def decode(
        self, msg: StoredMessage, on_bad: OnBad = warn_bad
    ) -> Envelope | None:
        """Decode a stored message into an Envelope; None (reported) if bad."""
        subject, data, seq = msg.subject, msg.data, msg.seq
        try:
            stub = wire.stub_of(msg.headers, data, subject, seq)
            if stub is not None:
                blob = self._blobs.get(stub.blob_sha256)
                if blob is None:
                    raise MalformedEvent(subject, seq, "blob is missing")
                data = blob
                wire.check_blob(data, stub, subject, seq)
            return wire.envelope(self.subjects, subject, data, seq)
        except MalformedEvent as e:
            on_bad(e)
            return None
        except ValueError as e:
            on_bad(MalformedEvent(subject, seq, str(e)))
            return None

    async def read(
        self,
        filter_subject: str | None = None,
        from_seq: int = 1,
        on_bad: OnBad = warn_bad,
        batch: int = 1000,
    ) -> AsyncGenerator[Envelope, None]:
        """Yield every event stored so far on ``filter_subject``, in order."""
        await asyncio.sleep(0)
        for n, msg in enumerate(self._scan(filter_subject, max(1, from_seq)), 1):
            env = await self.decode(msg, on_bad)
            if env is not None:
                yield env
            if n % batch == 0:
                await asyncio.sleep(0)

    async def follow_batches(
        self,
        filter_subject: str | None = None,
        from_seq: int | None = None,
        on_bad: OnBad = warn_bad,
        batch: int = 500,
        idle_s: float = 0.25,
    ) -> AsyncGenerator[list[Envelope], None]:
        """Yield batches of events as they arrive, forever (``[]`` when idle)."""
        next_seq = len(self._msgs) + 1 if from_seq is None else max(1, from_seq)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + idle_s
        while True:
            msgs: list[Stored] = []
            for msg in self._scan(filter_subject, next_seq):
                msgs.append(msg)
                if len(msgs) == batch:
                    break
            if msgs:
                next_seq = msgs[-1].seq + 1
                envs = [await self.decode(m, on_bad) for m in msgs]
                yield [e for e in envs if e is not None]
                deadline = loop.time() + idle_s
                continue
            left = deadline - loop.time()
            if left <= 0:
                yield []
                deadline = loop.time() + idle_s
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)

    async def last_on(self, scope: str) -> Last | None:
        """Sequence, event id and subject of the last message on a filter."""
        await asyncio.sleep(0)
        return self._last(scope)

    # A partition's share is read here by leaving the others' goals out of
    # the whole log, at the log's own positions: the twin has no partitions
    # stream, and what a scheduler sees of its share is the same.

    async def ensure_share(self, share: Share) -> None:
        """Nothing to make: the twin reads partitions from the log itself."""
        await asyncio.sleep(0)

    async def read_share(
        self, share: Share, on_bad: OnBad = warn_bad
    ) -> AsyncGenerator[Envelope, None]:
        """Yield ``share``'s events after its position, to the end so far."""
        async for env in self.read(from_seq=share.position + 1, on_bad=on_bad):
            share.position = env.seq
            if share.holds(env.event.goal_id):
                yield env

    async def follow_share(
        self, share: Share, on_bad: OnBad = warn_bad, batch: int = 500
    ) -> AsyncGenerator[list[Envelope], None]:
        """Follow ``share`` from after its position, moving it on."""
        batches = self.follow_batches(
            from_seq=share.position + 1, on_bad=on_bad, batch=batch
        )
        async with contextlib.aclosing(batches):
            async for envs in batches:
                if envs:
                    share.position = envs[-1].seq
                yield [e for e in envs if share.holds(e.event.goal_id)]

    async def share_at(self, share: Share, position: int) -> int | None:
        """The log's own position: the twin reads shares from the log."""
        await asyncio.sleep(0)
        return position if 1 <= position <= len(self._msgs) else None

    async def last_seq(self, goal_id: str, task_id: str | None) -> int:
        """The guard value of a task now: its last event's sequence, or 0."""
        await asyncio.sleep(0)
        return self._found(self.subjects.task_events(goal_id, task_id))

    async def last_event(
        self, goal_id: str, task_id: str | None, kind_: str | None = None
    ) -> Envelope | None:
        """The last event of a task (optionally of one kind), or None."""
        scope = (
            self.subjects.event(goal_id, task_id, kind_)
            if kind_
            else self.subjects.task_events(goal_id, task_id)
        )
        last = await self.last_on(scope)
        return None if last is None else await self.decode(self._msgs[last.seq - 1])

    async def get(self, seq: int, on_bad: OnBad = warn_bad) -> Envelope | None:
        """One event by its stream sequence."""
        await asyncio.sleep(0)
        if not 1 <= seq <= len(self._msgs):
            raise StoreError(f"event {seq}: no message with that sequence")
        return await self.decode(self._msgs[seq - 1], on_bad)

    async def goal_of_task(self, task_id: str) -> str | None:
        """The goal a task belongs to, found from its TaskCreated; None if none."""
        last = await self.last_on(self.subjects.task_anywhere(task_id, "task_created"))
        return None if last is None else self.subjects.parse_event(last.subject)[0]

    async def events_last_seq(self) -> int:
        """The last sequence of the log (0 when empty)."""
        await asyncio.sleep(0)
        return len(self._msgs)

    def _found(self, scope: str) -> int:
        last = self._last(scope)
        return last.seq if last else 0

    async def durable(self, name: str, from_seq: int) -> Consumer:
        """A durable consumer of every event from ``from_seq``, created afresh."""
        await asyncio.sleep(0)
        self._durables[name] = _Durable(self, max(1, from_seq))
        return self._durables[name]

    async def drop_durable(self, name: str) -> None:
        """Delete a durable consumer if it exists."""
        await asyncio.sleep(0)
        self._durables.pop(name, None)


class _DurableDelivery:
    """A delivery of an event by a durable consumer; settling it changes nothing.

    The twin's durable consumer never redelivers: its users (the projector)
    start a fresh one from their own checkpoint after a restart.
    """

    def __init__(self, msg: Stored) -> None:
        self.subject = msg.subject
        self.data = msg.data
        self.headers = msg.headers
        self.seq = msg.seq
        self.num_delivered = 1
        self.timestamp: datetime | None = msg.at

    async def ack(self) -> None:
        """Acked (and everything before it)."""

    async def nak(self, delay: float | None = None) -> None:
        """Not redelivered by the twin."""

    async def term(self) -> None:
        """Not redelivered by the twin."""

    async def in_progress(self) -> None:
        """Nothing to extend."""


class _Durable:
    """A durable consumer of the twin's events (see ``EventStore.durable``)."""

    def __init__(self, store: MemoryReads, from_seq: int) -> None:
        self.store = store
        self.next_seq = from_seq

    async def fetch(self, n: int, timeout: float) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            out: list[Delivery] = []
            for msg in self.store._scan(None, self.next_seq):
                out.append(_DurableDelivery(msg))
                if len(out) == n:
                    break
            if out:
                self.next_seq = out[-1].seq + 1
                return out
            left = deadline - loop.time()
            if left <= 0:
                return []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.store._wake.wait(), left)

    async def close(self) -> None:
        """Nothing held."""
