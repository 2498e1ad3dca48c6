"""The event store on JetStream: the ``EventStore`` port's real adapter.

It creates the streams (streams.py), appends events (deduplicated by
``Nats-Msg-Id``; optionally guarded by the task-wide expected-sequence header;
optionally as one atomic batch), reads them back in stream order (reading.py),
and moves bodies above a threshold into the object store. The work queue
(workqueue.py), the scheduler's lease (lease.py) and the fleet's shared
state (sharedstate.py) live on the same connection, and are handed out by
:meth:`JetStreamEventStore.work_queue`, :meth:`JetStreamEventStore.leader_lock`
and :meth:`JetStreamEventStore.shared_state`.

Writers publish on ``<prefix>.in.evt...``; the stream stores each message under
``<prefix>.evt...`` and re-publishes it there, so core NATS subscribers see only
what was stored (see subjects.py). Transient server trouble (a timeout, a 503
during a leader election) is retried with backoff for
``StoreSettings.transient_s``; nats-py's other errors are raised as StoreError.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from blackboard.errors import (
    BatchRejected,
    ConcurrencyConflict,
    InvalidEvent,
    PermissionDenied,
    StoreError,
)
from blackboard.log import codec, streams, wire
from blackboard.log.connect import connect
from blackboard.log.events import Event, kind
from blackboard.log.lease import JetStreamLeaderLock
from blackboard.log.ports import (
    MAX_BATCH,
    EventStore,
    Last,
    StoreSettings,
    ignore_bad,
    limits_bucket,
    lock_bucket,
    snapshot_bucket,
    stream_names,
)
from blackboard.log.pull import RawConsumer
from blackboard.log.reading import JetStreamReads, translated
from blackboard.log.sharedstate import JetStreamSharedState
from blackboard.log.snapshots import JetStreamSnapshots
from blackboard.log.subjects import (
    H_BATCH_COMMIT,
    H_BATCH_ID,
    H_BATCH_SEQ,
    H_BLOB,
    Subjects,
)
from blackboard.log.workqueue import JetStreamWorkQueue, NatsSubscription

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.object_store import ObjectStore

    from blackboard.log.ports import (
        Consumer,
        LeaderLock,
        SharedState,
        SnapshotStore,
        Subscription,
        WorkQueue,
    )

__all__ = [
    "MAX_BATCH",
    "EventStore",
    "JetStreamEventStore",
    "Last",
    "StoreSettings",
    "connect",
    "stream_names",
]


class JetStreamEventStore(JetStreamReads):
    """EventStore on JetStream, with the work stream and the blob bucket."""

    def __init__(self, nc: NatsClient, settings: StoreSettings | None = None) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.settings = settings or StoreSettings()
        self.subjects = Subjects(self.settings.prefix)
        self.events_stream, self.work_stream, self.blob_bucket = stream_names(
            self.settings.prefix
        )
        self._blobs: ObjectStore | None = None
        self._queue: JetStreamWorkQueue | None = None
        self._shared: JetStreamSharedState | None = None
        self._snapshots: JetStreamSnapshots | None = None

    # --- setup ------------------------------------------------------------

    @translated
    async def ensure(self) -> None:
        """Create the streams and the blob bucket if missing; report drift.

        Safe to call from every process at start: whoever comes first creates,
        the others find what they need. A stream that exists with a different
        configuration raises StreamConfigDrift instead of being silently used.
        """
        # On a fresh cluster the first creations may meet an election (a
        # timeout, a 503): retried like any transient trouble; a retried
        # create of a stream that had landed finds it in place.
        s, subjects = self.settings, self.subjects
        try:
            for cfg, events in (
                (streams.events_config(self.events_stream, s, subjects), True),
                (streams.work_config(self.work_stream, s, subjects), False),
            ):
                await self._retry(
                    f"creating {cfg.name}",
                    functools.partial(streams.ensure_stream, self.js, cfg, events),
                )
            await self._retry("creating the blob bucket", self._ensure_blobs)
        except PermissionDenied as e:
            # A reader may only look: it cannot create what is missing, nor
            # move a stream of the older layout (only the scheduler may).
            raise PermissionDenied(
                f"{e}; the scheduler creates the streams and moves them to the "
                "current layout: start it first"
            ) from e

    async def _ensure_blobs(self) -> None:
        self._blobs = await streams.ensure_blobs(
            self.js, self.blob_bucket, self.settings
        )

    async def _blob_store(self) -> ObjectStore:
        if self._blobs is None:
            await self._ensure_blobs()
        assert self._blobs is not None
        return self._blobs

    def work_queue(self) -> WorkQueue:
        """The work stream, as the lanes' queue (one per store)."""
        if self._queue is None:
            self._queue = JetStreamWorkQueue(self.nc, self.work_stream, self.subjects)
        return self._queue

    def leader_lock(self, key: str, holder: str, ttl_s: float) -> LeaderLock:
        """A lease in the prefix's key-value bucket (``bb_locks``)."""
        return JetStreamLeaderLock(
            self.js,
            lock_bucket(self.settings.prefix),
            key,
            holder,
            ttl_s,
            replicas=self.settings.replicas,
        )

    def shared_state(self) -> SharedState:
        """The fleet's shared state: the prefix's bucket ``bb_limits``."""
        if self._shared is None:
            self._shared = JetStreamSharedState(
                self.nc,
                limits_bucket(self.settings.prefix),
                replicas=self.settings.replicas,
                patience_s=min(5.0, self.settings.transient_s),
            )
        return self._shared

    def snapshots(self) -> SnapshotStore:
        """Snapshots of derived state: the prefix's object store ``bb_snapshots``."""
        if self._snapshots is None:
            self._snapshots = JetStreamSnapshots(
                self.nc,
                snapshot_bucket(self.settings.prefix),
                replicas=self.settings.replicas,
                patience_s=self.settings.transient_s,
            )
        return self._snapshots

    # --- writing ----------------------------------------------------------

    async def _prepare(
        self, event: Event, traceparent: str | None = None
    ) -> tuple[str, bytes, dict[str, str]]:
        """Subject, body and headers of one event; large bodies go to blobs."""
        subject, body, headers = wire.prepared(event, self.subjects, traceparent)
        if len(body) > self.settings.blob_threshold:
            digest = codec.sha256(body)
            blobs = await self._blob_store()
            # The digest is the key: a blob already there holds these bytes.
            # Putting it again would make nats-py purge the old copy's chunks,
            # and no role may purge: a purge names its subjects in the body,
            # so the permission cannot be narrowed to one object.
            await self._retry(
                f"storing blob {digest[:12]}", lambda: _put_once(blobs, digest, body)
            )
            headers[H_BLOB] = digest
            body = wire.stub_body(event, body, digest)
        return subject, body, headers

    @translated
    async def append(
        self,
        event: Event,
        *,
        expect: int | None = None,
        traceparent: str | None = None,
        _skips: int = 0,
    ) -> int:
        """Append one event and return its stream sequence.

        With ``expect``, the write lands only if the last event on the task's
        subjects has that sequence (0: the task has none). A lost race raises
        ConcurrencyConflict. Because the server checks the guard before dedupe,
        a retry of a write that had in fact landed also fails the guard; we
        recognise it by the last message's Nats-Msg-Id and return success.
        """
        subject, body, headers = await self._prepare(event, traceparent)
        scope = (
            wire.guard(self.subjects, headers, event, expect)
            if expect is not None
            else None
        )
        try:
            # A retry after a timeout is safe: unguarded, the message id
            # deduplicates it; guarded, the guard refuses it and the check
            # below finds our own event.
            ack = await self._retry(
                f"append to {subject}",
                lambda: self.js.publish(subject, body, headers=headers),
            )
        except nats.errors.MaxPayloadError as e:
            raise InvalidEvent(f"append to {subject}: {e}") from e
        except nats.js.errors.BadRequestError as e:
            if scope is None or e.err_code != wire.ERR_WRONG_LAST_SEQUENCE:
                raise StoreError(f"append to {subject} failed: {e}") from e
            landed = await self._landed(scope, event.event_id)
            if landed is not None:
                return landed
            m = wire.WRONG_LAST.search(e.description or "")
            found = int(m.group(1)) if m else None
            if await self._garbage_since(scope, expect or 0, found, _skips):
                return await self.append(
                    event, expect=found, traceparent=traceparent, _skips=_skips + 1
                )
            raise ConcurrencyConflict(scope, expect or 0, found) from e
        except nats.errors.NoRespondersError as e:
            raise StoreError(f"no stream takes {subject}: run `bb up` first") from e
        return ack.seq

    async def _garbage_since(
        self, scope: str, expect: int, found: int | None, skips: int
    ) -> bool:
        """Whether only undecodable messages landed on ``scope`` after ``expect``.

        Readers skip garbage (it never enters a fold), so a guard taken from a
        fold would conflict with it forever: a stray client could block a task
        by writing junk on its subject. Garbage is not a competing writer, so
        the write is retried past it (a bounded number of times).
        """
        if found is None or found <= expect or skips >= wire.MAX_GARBAGE_SKIPS:
            return False
        async for env in self.read(scope, from_seq=expect + 1, on_bad=ignore_bad):
            return env.seq > found
        return True

    async def _landed(self, scope: str, event_id: str) -> int | None:
        """Sequence of the last event on ``scope`` if its id is ``event_id``."""
        last = await self.last_on(scope)
        if last is not None and last.event_id == event_id:
            return last.seq
        return None

    async def append_many(self, events: Sequence[Event]) -> list[int]:
        """Append independent events with many publishes in flight at once.

        Each publish is still awaited for its ack (nats.py's publish_async never
        resolves a rejected message), but they overlap, so the cost is close to
        one round trip per window rather than per event.
        """
        seqs: list[int] = []
        window = 512
        for start in range(0, len(events), window):
            chunk = events[start : start + window]
            seqs.extend(await asyncio.gather(*(self.append(e) for e in chunk)))
        return seqs

    @translated
    async def append_batch(
        self,
        items: Sequence[tuple[Event, int | None]],
        traceparent: str | None = None,
        _skips: int = 0,
    ) -> list[int]:
        """Append events as one atomic batch; return their sequences.

        Each item may carry a guard (expected last sequence of its task). The
        server checks every guard at commit: all events land, contiguous and in
        order, or none does. A re-sent batch that had landed is recognised by
        the message ids and reported as success.
        """
        if not items:
            return []
        if len(items) > MAX_BATCH:
            raise ValueError(f"an atomic batch holds at most {MAX_BATCH} events")
        batch_id = wire.batch_id(items)
        prepared = []
        for i, (event, expect) in enumerate(items, 1):
            subject, body, headers = await self._prepare(event, traceparent)
            if expect is not None:
                wire.guard(self.subjects, headers, event, expect)
            headers[H_BATCH_ID] = batch_id
            headers[H_BATCH_SEQ] = str(i)
            prepared.append((subject, body, headers))
        prepared[-1][2][H_BATCH_COMMIT] = "1"
        tries = 0

        async def send() -> bytes:
            # Each try is a batch of its own (a half-sent one is abandoned by
            # the server); one that had landed is found by its message ids.
            nonlocal tries
            tries += 1
            if tries > 1:
                landed = await self._batch_landed(items)
                if landed is not None:
                    return json.dumps({"seq": landed}).encode()
            bid = f"{batch_id}{tries:02d}" if tries > 1 else batch_id
            for subject, body, headers in prepared[:-1]:
                await self.nc.publish(
                    subject, body, headers={**headers, H_BATCH_ID: bid}
                )
            subject, body, headers = prepared[-1]
            reply = await self.nc.request(
                subject, body, headers={**headers, H_BATCH_ID: bid}, timeout=10
            )
            return reply.data

        try:
            data = await self._retry(f"atomic batch of {len(items)}", send)
        except nats.errors.MaxPayloadError as e:
            raise InvalidEvent(f"atomic batch of {len(items)}: {e}") from e
        resp = json.loads(data)
        err = resp.get("error")
        if err is None:
            last = int(resp["seq"])
            return list(range(last - len(items) + 1, last + 1))
        code = int(err.get("err_code", 0))
        if code in (wire.ERR_WRONG_LAST_SEQUENCE, wire.ERR_BATCH_DUPLICATE_MSG_ID):
            # Did an earlier send of this same batch land? Batches are atomic
            # and contiguous, so one event found means all of them are there.
            landed = await self._batch_landed(items)
            if landed is not None:
                return list(range(landed - len(items) + 1, landed + 1))
        if code == wire.ERR_WRONG_LAST_SEQUENCE and _skips < wire.MAX_GARBAGE_SKIPS:
            moved = await self._guards_past_garbage(items)
            if moved is not None:
                return await self.append_batch(moved, traceparent, _skips=_skips + 1)
        if code == wire.ERR_WRONG_LAST_SEQUENCE:
            guarded = [(e, x) for e, x in items if x is not None]
            e0, x0 = guarded[0] if guarded else items[0]
            scope = self.subjects.task_events(e0.goal_id, e0.task_id)
            m = wire.WRONG_LAST.search(err.get("description", ""))
            raise ConcurrencyConflict(scope, x0 or 0, int(m.group(1)) if m else None)
        raise BatchRejected(code, str(err.get("description", "")))

    async def _batch_landed(
        self, items: Sequence[tuple[Event, int | None]]
    ) -> int | None:
        """The sequence of a batch's last event if the batch is in the log."""
        event, _ = items[-1]
        exact = self.subjects.event(event.goal_id, event.task_id, kind(event))
        return await self._landed(exact, event.event_id)

    async def _guards_past_garbage(
        self, items: Sequence[tuple[Event, int | None]]
    ) -> list[tuple[Event, int | None]] | None:
        """The batch with guards moved past garbage, or None if that is not it."""
        out: list[tuple[Event, int | None]] = []
        moved = False
        for event, expect in items:
            if expect is not None:
                scope = self.subjects.task_events(event.goal_id, event.task_id)
                last = await self.last_on(scope)
                if last is not None and last.seq > expect:
                    if not await self._garbage_since(scope, expect, last.seq, 0):
                        return None
                    expect, moved = last.seq, True
            out.append((event, expect))
        return out if moved else None

    # --- live subscriptions and durable readers -----------------------------

    @translated
    async def watch(
        self, filter_subject: str, cb: Callable[[str], Awaitable[None]]
    ) -> Subscription:
        """Core NATS on the re-published subjects: only stored events arrive."""

        async def on_msg(msg: Msg) -> None:
            await cb(msg.subject)

        return NatsSubscription(await self.nc.subscribe(filter_subject, cb=on_msg))

    @translated
    async def durable(self, name: str, from_seq: int) -> Consumer:
        """(Re)create an ack-all durable consumer of the events from ``from_seq``.

        Dropping, creating and binding are retried together on transient
        trouble (a slow or restarting server): the projector starts through
        here, and a JetStream API timeout must not end it.
        """
        cfg = ConsumerConfig(
            durable_name=name,
            ack_policy=AckPolicy.ALL,
            ack_wait=60,
            max_ack_pending=-1,
            max_deliver=-1,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE
            if from_seq > 1
            else DeliverPolicy.ALL,
            opt_start_seq=from_seq if from_seq > 1 else None,
        )

        async def make() -> Consumer:
            await self._drop(name)
            await self.js.add_consumer(self.events_stream, cfg)
            # Read raw: nats-py's fetch would cost the projector more per
            # event than folding it does (see pull.py).
            return await RawConsumer(self.nc, self.events_stream, name).start()

        return await self._retry(f"creating the durable consumer {name}", make)

    @translated
    async def drop_durable(self, name: str) -> None:
        """Delete a durable consumer of the events stream if it exists."""
        await self._retry(
            f"deleting the durable consumer {name}", lambda: self._drop(name)
        )

    async def _drop(self, name: str) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.js.delete_consumer(self.events_stream, name)

    @translated
    async def serve(
        self, subject: str, handler: Callable[[bytes], Awaitable[bytes]]
    ) -> Subscription:
        """Answer core NATS requests on ``subject`` with ``handler``."""

        async def on_msg(msg: Msg) -> None:
            await msg.respond(await handler(msg.data or b""))

        return NatsSubscription(await self.nc.subscribe(subject, cb=on_msg))


async def _put_once(blobs: ObjectStore, name: str, data: bytes) -> None:
    """Put a content-addressed object unless it is already there."""
    try:
        info = await blobs.get_info(name)
    except nats.js.errors.ObjectNotFoundError:
        info = None
    if info is None or info.deleted:
        await blobs.put(name, data)
