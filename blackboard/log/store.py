"""The event store: the ``EventStore`` protocol and its JetStream adapter.

It creates the streams, appends events (deduplicated by ``Nats-Msg-Id``;
optionally guarded by the task-wide expected-sequence header; optionally as one
atomic batch), reads them back in stream order, and moves bodies above a
threshold into the object store.

Writers publish on ``<prefix>.in.evt...``; the stream stores each message under
``<prefix>.evt...`` and re-publishes it there, so core NATS subscribers see only
what was stored (see subjects.py).

Readers never crash on a message they cannot decode: they hand a
``MalformedEvent`` to ``on_bad`` (by default a logged warning) and go on. They
never return part of the history silently either: a read goes on to the end of
the log as it was when the read began, or raises LogUnavailable. Transient
server trouble (a timeout, a 503 during a leader election) is retried with
backoff for ``StoreSettings.transient_s`` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)

from blackboard.errors import (
    BatchRejected,
    ConcurrencyConflict,
    InvalidEvent,
    LogUnavailable,
    MalformedEvent,
    NotConnected,
    StoreError,
    StreamConfigDrift,
)
from blackboard.log import codec, subjects
from blackboard.log.codec import Envelope
from blackboard.log.events import SCHEMA_VERSION, Event, kind
from blackboard.log.subjects import Subjects

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.object_store import ObjectStore

log = logging.getLogger("blackboard.store")

T = TypeVar("T")

ERR_WRONG_LAST_SEQUENCE = 10071
ERR_BATCH_DUPLICATE_MSG_ID = 10201
MAX_BATCH = 1000
"""The server's limit on messages in one atomic batch (ADR-50)."""

_WRONG_LAST = re.compile(r"wrong last sequence: (\d+)")

OnBad = Callable[[MalformedEvent], None]


_MAX_GARBAGE_SKIPS = 5
"""Times one write is retried past garbage before it is a conflict after all."""


def _ignore_bad(err: MalformedEvent) -> None:
    """Drop the report: the caller only looks for valid events."""


def _warn_bad(err: MalformedEvent) -> None:
    log.warning("skipped %s", err)


class Last(NamedTuple):
    """The last message on a subject filter."""

    seq: int
    event_id: str
    subject: str


@dataclass(frozen=True)
class StoreSettings:
    """How the streams are laid out; the defaults suit one server."""

    prefix: str = "bb"
    replicas: int = 1
    blob_threshold: int = 256 * 1024
    duplicate_window_s: float = 120.0
    work_max_age_s: float = 0.0
    transient_s: float = 30.0
    """How long transient server trouble is retried before LogUnavailable."""
    stall_check_s: float = 5.0
    """A follower idle this long checks that the log has not moved past it."""


class EventStore(Protocol):
    """Append and read events; the seam the core and the tests share."""

    async def append(self, event: Event, *, expect: int | None = None) -> int:
        """Append one event; with ``expect``, only if the task is at that seq."""
        ...

    async def append_many(self, events: Sequence[Event]) -> list[int]:
        """Append independent events, pipelined; order is not guaranteed."""
        ...

    async def append_batch(
        self, items: Sequence[tuple[Event, int | None]]
    ) -> list[int]:
        """Append events atomically: all land, in order, or none does."""
        ...

    def read(
        self, filter_subject: str | None = None, from_seq: int = 1
    ) -> AsyncIterator[Envelope]:
        """Yield the events stored so far, in stream order, then stop."""
        ...


def stream_names(prefix: str) -> tuple[str, str, str]:
    """Names of the events stream, the work stream and the blob bucket.

    The default prefix keeps the documented names; another prefix gets its own
    streams so deployments sharing a NATS account never collide.
    """
    if prefix == "bb":
        return subjects.EVENTS_STREAM, subjects.WORK_STREAM, subjects.BLOB_BUCKET
    tag = prefix.upper().replace(".", "_").replace("-", "_")
    return (
        f"{subjects.EVENTS_STREAM}_{tag}",
        f"{subjects.WORK_STREAM}_{tag}",
        f"{subjects.BLOB_BUCKET}_{tag.lower()}",
    )


class JetStreamEventStore:
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

    # --- setup ------------------------------------------------------------

    def events_config(self) -> StreamConfig:
        """The configuration BB_EVENTS must have."""
        return StreamConfig(
            name=self.events_stream,
            subjects=[self.subjects.events_in_all],
            # Stored under the public subjects, and re-published there once
            # stored: core subscribers never see a refused write.
            subject_transform=SubjectTransform(
                src=self.subjects.events_in_all, dest=self.subjects.events_all
            ),
            republish=RePublish(
                src=self.subjects.events_all, dest=self.subjects.events_all
            ),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=self.settings.replicas,
            duplicate_window=self.settings.duplicate_window_s,
            allow_atomic=True,
            allow_direct=True,
            discard=DiscardPolicy.OLD,
        )

    def work_config(self) -> StreamConfig:
        """The configuration BB_WORK must have."""
        return StreamConfig(
            name=self.work_stream,
            subjects=[self.subjects.work_all],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=self.settings.replicas,
            duplicate_window=self.settings.duplicate_window_s,
            max_age=self.settings.work_max_age_s,
        )

    async def ensure(self) -> None:
        """Create the streams and the blob bucket if missing; report drift.

        Safe to call from every process at start: whoever comes first creates,
        the others find what they need. A stream that exists with a different
        configuration raises StreamConfigDrift instead of being silently used.
        """
        # On a fresh cluster the first creations may meet an election (a
        # timeout, a 503): retried like any transient trouble; a retried
        # create of a stream that had landed finds it in place.
        for cfg in (self.events_config(), self.work_config()):
            await self._retry(
                f"creating {cfg.name}", functools.partial(self._ensure_stream, cfg)
            )
        await self._retry("creating the blob bucket", self._ensure_blobs)

    async def _ensure_stream(self, want: StreamConfig) -> None:
        assert want.name is not None
        try:
            info = await self.js.stream_info(want.name)
        except nats.js.errors.NotFoundError:
            try:
                await self.js.add_stream(want)
            except nats.js.errors.BadRequestError as e:
                # Another process created it between our look and our create.
                if e.err_code != 10058:  # stream name already in use
                    raise StoreError(f"cannot create {want.name}: {e}") from e
            else:
                return
            info = await self.js.stream_info(want.name)
        if want.name == self.events_stream and _older_layout(want, info.config):
            # A stream from before writers moved to the internal subjects:
            # subjects, transform and re-publish can be changed in place, and
            # the stored messages keep their (public) subjects.
            info.config.subjects = want.subjects
            info.config.subject_transform = want.subject_transform
            info.config.republish = want.republish
            log.info("moving stream %s to the re-published layout", want.name)
            info = await self.js.update_stream(info.config)
        drift = _drift(want, info.config)
        if drift:
            raise StreamConfigDrift(
                f"stream {want.name} exists with a different configuration "
                f"({'; '.join(drift)}); fix or delete it, or use another BB_PREFIX"
            )

    async def _ensure_blobs(self) -> None:
        try:
            self._blobs = await self.js.object_store(self.blob_bucket)
        except nats.js.errors.BucketNotFoundError:
            self._blobs = await self.js.create_object_store(
                self.blob_bucket,
                config=nats.js.api.ObjectStoreConfig(
                    bucket=self.blob_bucket,
                    replicas=self.settings.replicas,
                    storage=StorageType.FILE,
                ),
            )

    async def _blob_store(self) -> ObjectStore:
        if self._blobs is None:
            await self._ensure_blobs()
        assert self._blobs is not None
        return self._blobs

    # --- writing ----------------------------------------------------------

    async def _prepare(
        self, event: Event, traceparent: str | None = None
    ) -> tuple[str, bytes, dict[str, str]]:
        """Subject, body and headers of one event; large bodies go to blobs."""
        k = kind(event)
        subject = self.subjects.event_in(event.goal_id, event.task_id, k)
        bad = _unwritable(event, subject)
        if bad:
            raise InvalidEvent(f"cannot write {k} {event.event_id[:60]!r}: {bad}")
        body = codec.encode(event)
        headers = {
            subjects.H_MSG_ID: event.event_id,
            subjects.H_SCHEMA: str(SCHEMA_VERSION),
        }
        if traceparent:
            headers[subjects.H_TRACEPARENT] = traceparent
        if len(body) > self.settings.blob_threshold:
            digest = codec.sha256(body)
            blobs = await self._blob_store()
            # The digest is the key, so a retried put of the same body is harmless.
            await self._retry(
                f"storing blob {digest[:12]}", lambda: blobs.put(digest, body)
            )
            headers[subjects.H_BLOB] = digest
            body = codec.encode(
                codec.BlobStub(
                    type=k,
                    event_id=event.event_id,
                    goal_id=event.goal_id,
                    task_id=event.task_id,
                    blob_sha256=digest,
                    blob_size=len(body),
                )
            )
        return subject, body, headers

    def _guard(self, headers: dict[str, str], event: Event, expect: int) -> str:
        scope = self.subjects.task_events(event.goal_id, event.task_id)
        headers[subjects.H_EXPECTED_SUBJECT_SEQ] = str(expect)
        headers[subjects.H_EXPECTED_SUBJECT_SEQ_SUBJECT] = scope
        return scope

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
        scope = self._guard(headers, event, expect) if expect is not None else None
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
            if scope is None or e.err_code != ERR_WRONG_LAST_SEQUENCE:
                raise StoreError(f"append to {subject} failed: {e}") from e
            landed = await self._landed(scope, event.event_id)
            if landed is not None:
                return landed
            m = _WRONG_LAST.search(e.description or "")
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
        if found is None or found <= expect or skips >= _MAX_GARBAGE_SKIPS:
            return False
        async for env in self.read(scope, from_seq=expect + 1, on_bad=_ignore_bad):
            return env.seq > found
        return True

    async def _landed(self, scope: str, event_id: str) -> int | None:
        """Sequence of the last event on ``scope`` if its id is ``event_id``."""
        last = await self.last_on(scope)
        if last is not None and last.event_id == event_id:
            return last.seq
        return None

    async def last_on(self, scope: str) -> Last | None:
        """Sequence, event id and subject of the last message on a filter."""
        try:
            msg = await self._retry(
                f"last message on {scope}",
                lambda: self.js.get_last_msg(self.events_stream, scope),
            )
        except nats.js.errors.NotFoundError:
            return None
        msg_id = (msg.headers or {}).get(subjects.H_MSG_ID, "")
        assert msg.seq is not None
        return Last(msg.seq, msg_id, msg.subject or "")

    async def last_seq(self, goal_id: str, task_id: str | None) -> int:
        """The guard value of a task now: its last event's sequence, or 0."""
        last = await self.last_on(self.subjects.task_events(goal_id, task_id))
        return last.seq if last else 0

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
        # Same events, same batch id: a re-sent batch is recognisable as one.
        batch_id = codec.sha256("\n".join(e.event_id for e, _ in items).encode())[:32]
        prepared = []
        for i, (event, expect) in enumerate(items, 1):
            subject, body, headers = await self._prepare(event, traceparent)
            if expect is not None:
                self._guard(headers, event, expect)
            headers[subjects.H_BATCH_ID] = batch_id
            headers[subjects.H_BATCH_SEQ] = str(i)
            prepared.append((subject, body, headers))
        prepared[-1][2][subjects.H_BATCH_COMMIT] = "1"
        tries = 0

        async def send() -> bytes:
            # Each try is a batch of its own (a half-sent one is abandoned by
            # the server); one that had landed is found by its message ids.
            nonlocal tries
            tries += 1
            if tries > 1:
                event, _ = items[-1]
                exact = self.subjects.event(event.goal_id, event.task_id, kind(event))
                landed = await self._landed(exact, event.event_id)
                if landed is not None:
                    return json.dumps({"seq": landed}).encode()
            bid = f"{batch_id}{tries:02d}" if tries > 1 else batch_id
            for subject, body, headers in prepared[:-1]:
                await self.nc.publish(
                    subject, body, headers={**headers, subjects.H_BATCH_ID: bid}
                )
            subject, body, headers = prepared[-1]
            reply = await self.nc.request(
                subject, body, headers={**headers, subjects.H_BATCH_ID: bid}, timeout=10
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
        if code in (ERR_WRONG_LAST_SEQUENCE, ERR_BATCH_DUPLICATE_MSG_ID):
            # Did an earlier send of this same batch land? Batches are atomic
            # and contiguous, so one event found means all of them are there.
            event, _ = items[-1]
            exact = self.subjects.event(event.goal_id, event.task_id, kind(event))
            landed = await self._landed(exact, event.event_id)
            if landed is not None:
                return list(range(landed - len(items) + 1, landed + 1))
        if code == ERR_WRONG_LAST_SEQUENCE and _skips < _MAX_GARBAGE_SKIPS:
            moved = await self._guards_past_garbage(items)
            if moved is not None:
                return await self.append_batch(moved, traceparent, _skips=_skips + 1)
        if code == ERR_WRONG_LAST_SEQUENCE:
            guarded = [(e, x) for e, x in items if x is not None]
            e0, x0 = guarded[0] if guarded else items[0]
            scope = self.subjects.task_events(e0.goal_id, e0.task_id)
            m = _WRONG_LAST.search(err.get("description", ""))
            raise ConcurrencyConflict(scope, x0 or 0, int(m.group(1)) if m else None)
        raise BatchRejected(code, str(err.get("description", "")))

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

    # --- reading ----------------------------------------------------------

    async def decode(self, msg: Msg, on_bad: OnBad = _warn_bad) -> Envelope | None:
        """Decode a stream message into an Envelope; None (reported) if bad."""
        seq = msg.metadata.sequence.stream
        return await self.decode_raw(msg.subject, msg.data, msg.headers, seq, on_bad)

    async def decode_raw(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None,
        seq: int | None,
        on_bad: OnBad = _warn_bad,
    ) -> Envelope | None:
        """Decode a body with its headers, fetching a blob if the body is a stub."""
        try:
            if headers and subjects.H_BLOB in headers:
                stub = codec.decode_stub(data, subject, seq)
                blobs = await self._blob_store()
                try:
                    obj = await blobs.get(stub.blob_sha256)
                except nats.js.errors.ObjectNotFoundError as e:
                    raise MalformedEvent(subject, seq, "blob is missing") from e
                data = obj.data or b""
                if codec.sha256(data) != stub.blob_sha256:
                    raise MalformedEvent(subject, seq, "blob digest mismatch")
            event = codec.decode_event(data, subject, seq)
            _goal, _task, k = self.subjects.parse_event(subject)
            if k != kind(event):
                raise MalformedEvent(
                    subject, seq, f"body is {kind(event)}, subject {k}"
                )
        except MalformedEvent as e:
            on_bad(e)
            return None
        except ValueError as e:
            on_bad(MalformedEvent(subject, seq, str(e)))
            return None
        return Envelope(seq or 0, subject, event)

    async def _reader(
        self,
        filter_subject: str | None,
        from_seq: int,
        deliver_new: bool = False,
    ) -> tuple[JetStreamContext.PullSubscription, int]:
        cfg = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        if deliver_new:
            cfg.deliver_policy = DeliverPolicy.NEW
        else:
            cfg.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            cfg.opt_start_seq = max(1, from_seq)
        subject = filter_subject or self.subjects.events_all
        sub = await self.js.pull_subscribe(
            subject, stream=self.events_stream, config=cfg
        )
        info = await sub.consumer_info()
        return sub, info.num_pending or 0

    async def read(
        self,
        filter_subject: str | None = None,
        from_seq: int = 1,
        on_bad: OnBad = _warn_bad,
        batch: int = 1000,
    ) -> AsyncGenerator[Envelope, None]:
        """Yield every event stored so far on ``filter_subject``, in order.

        "So far" is the end of the log when the read began (the reader's
        pending count): the read gets there, or raises LogUnavailable. A
        reader that stops answering (its node paused, its consumer lost) is
        recreated from the next sequence, so nothing is skipped or doubled.
        """
        what = f"reading {filter_subject or self.subjects.events_all}"
        next_seq = max(1, from_seq)
        sub, pending = await self._retry(
            what, lambda: self._reader(filter_subject, next_seq)
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.transient_s
        try:
            while pending > 0:
                try:
                    msgs = await sub.fetch(min(batch, pending), timeout=5)
                except Exception as e:
                    lost = isinstance(e, nats.js.errors.NotFoundError)
                    if not (lost or _transient(e)):
                        raise
                    if loop.time() > deadline:
                        raise LogUnavailable(
                            f"{what}: stopped at seq {next_seq} with {pending} "
                            f"event(s) still to read ({e})"
                        ) from e
                    log.info(
                        "%s: reader lost at %d (%s); recreating", what, next_seq, e
                    )
                    await _quietly(sub.unsubscribe())
                    sub, pending = await self._retry(
                        what, functools.partial(self._reader, filter_subject, next_seq)
                    )
                    continue
                deadline = loop.time() + self.settings.transient_s
                for msg in msgs:
                    next_seq = msg.metadata.sequence.stream + 1
                    pending = msg.metadata.num_pending
                    env = await self.decode(msg, on_bad)
                    if env is not None:
                        yield env
        finally:
            await _quietly(sub.unsubscribe())

    def read_goal(
        self, goal_id: str, on_bad: OnBad = _warn_bad
    ) -> AsyncIterator[Envelope]:
        """Yield one goal's events in stream order."""
        return self.read(self.subjects.goal_events(goal_id), on_bad=on_bad)

    async def follow(
        self,
        filter_subject: str | None = None,
        from_seq: int | None = None,
        on_bad: OnBad = _warn_bad,
        batch: int = 500,
    ) -> AsyncGenerator[Envelope, None]:
        """Yield events as they arrive, forever; from ``from_seq`` or from now."""
        async with contextlib.aclosing(
            self.follow_batches(filter_subject, from_seq, on_bad, batch)
        ) as batches:
            async for envs in batches:
                for env in envs:
                    yield env

    async def follow_batches(
        self,
        filter_subject: str | None = None,
        from_seq: int | None = None,
        on_bad: OnBad = _warn_bad,
        batch: int = 500,
        idle_s: float = 0.25,
    ) -> AsyncGenerator[list[Envelope], None]:
        """Yield batches of events as they arrive, forever (empty when idle).

        The reader is an in-memory ephemeral consumer; if it disappears (the
        server restarted) it is recreated from the sequence after the last one
        seen, so nothing is skipped and nothing is yielded twice. Close the
        generator (``contextlib.aclosing``) to release the reader at once.
        """
        next_seq = from_seq
        sub: JetStreamContext.PullSubscription | None = None
        scope = filter_subject or self.subjects.events_all
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        try:
            while True:
                if sub is None:
                    try:
                        sub, _ = await self._reader(
                            filter_subject, next_seq or 1, next_seq is None
                        )
                    except (nats.errors.Error, nats.js.errors.Error, OSError) as e:
                        log.warning("reader could not start (%s); retrying", e)
                        await asyncio.sleep(0.5)
                        yield []
                        continue
                    idle_since = loop.time()
                try:
                    msgs = await sub.fetch(batch, timeout=idle_s)
                except (TimeoutError, nats.errors.TimeoutError):
                    if loop.time() - idle_since >= self.settings.stall_check_s:
                        idle_since = loop.time()
                        if await self._stalled(scope, next_seq):
                            await _quietly(sub.unsubscribe())
                            sub = None
                    yield []
                    continue
                except (nats.errors.Error, nats.js.errors.Error, OSError) as e:
                    log.warning("reader lost (%s); recreating it", e)
                    await _quietly(sub.unsubscribe())
                    sub = None
                    await asyncio.sleep(0.25)
                    yield []
                    continue
                idle_since = loop.time()
                envs: list[Envelope] = []
                for msg in msgs:
                    next_seq = msg.metadata.sequence.stream + 1
                    env = await self.decode(msg, on_bad)
                    if env is not None:
                        envs.append(env)
                yield envs
        finally:
            if sub is not None:
                await _quietly(sub.unsubscribe())

    async def _stalled(self, scope: str, next_seq: int | None) -> bool:
        """Whether the log holds events on ``scope`` that a follower never got.

        A reader whose node is paused or partitioned gets only timeouts, which
        look like an idle log; the log's own last message tells them apart.
        """
        try:
            last = await self.last_on(scope)
        except StoreError as e:
            log.warning("follower on %s: cannot check the log (%s)", scope, e)
            return False
        if last is None or next_seq is None or last.seq < next_seq:
            return False
        log.warning(
            "follower on %s stopped receiving at seq %d while the log is at %d; "
            "recreating its reader",
            scope,
            next_seq,
            last.seq,
        )
        return True

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op``, retrying transient server trouble with backoff.

        Gives up with LogUnavailable after ``transient_s``; any other error
        is raised at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.transient_s
        delay = 0.1
        while True:
            try:
                return await op()
            except Exception as e:
                if not _transient(e):
                    raise
                if loop.time() + delay > deadline:
                    raise LogUnavailable(
                        f"{what}: JetStream did not answer for "
                        f"{self.settings.transient_s:g}s ({type(e).__name__}: {e})"
                    ) from e
                log.info("%s: %s; retrying in %.1fs", what, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def events_last_seq(self) -> int:
        """The last sequence of the events stream."""
        info = await self._retry(
            "stream info", lambda: self.js.stream_info(self.events_stream)
        )
        return info.state.last_seq

    async def get(self, seq: int, on_bad: OnBad = _warn_bad) -> Envelope | None:
        """One event by its stream sequence."""
        raw = await self._retry(
            f"event {seq}", lambda: self.js.get_msg(self.events_stream, seq)
        )
        assert raw.subject is not None
        return await self.decode_raw(
            raw.subject, raw.data or b"", raw.headers, seq, on_bad
        )

    async def goal_of_task(self, task_id: str) -> str | None:
        """The goal a task belongs to, found from its TaskCreated; None if none."""
        last = await self.last_on(self.subjects.task_anywhere(task_id, "task_created"))
        return None if last is None else self.subjects.parse_event(last.subject)[0]

    async def last_event(
        self, goal_id: str, task_id: str | None, kind_: str | None = None
    ) -> Envelope | None:
        """The last event of a task (optionally of one kind), or None."""
        scope = (
            self.subjects.event(goal_id, task_id, kind_)
            if kind_
            else self.subjects.task_events(goal_id, task_id)
        )
        try:
            raw = await self._retry(
                f"last event on {scope}",
                lambda: self.js.get_last_msg(self.events_stream, scope),
            )
        except nats.js.errors.NotFoundError:
            return None
        assert raw.subject is not None
        return await self.decode_raw(raw.subject, raw.data or b"", raw.headers, raw.seq)


async def _quietly(aw: Awaitable[object]) -> None:
    with contextlib.suppress(nats.errors.Error, asyncio.CancelledError, OSError):
        await aw


def _drift(want: StreamConfig, have: StreamConfig) -> list[str]:
    """Differences that matter between the config we need and the one found."""
    out = []
    for name in ("subjects", "retention", "storage", "num_replicas", "allow_atomic"):
        w, h = getattr(want, name), getattr(have, name)
        if name == "allow_atomic":
            w, h = bool(w), bool(h)
        if w != h:
            out.append(f"{name}: want {w!r}, found {h!r}")
    for name in ("subject_transform", "republish"):
        w, h = _mapping(getattr(want, name)), _mapping(getattr(have, name))
        if w != h:
            out.append(f"{name}: want {w!r}, found {h!r}")
    return out


def _mapping(value: SubjectTransform | RePublish | None) -> tuple[str, str] | None:
    if value is None or not value.src:
        return None
    return value.src, value.dest or ""


def _older_layout(want: StreamConfig, have: StreamConfig) -> bool:
    """Whether ``have`` is the events stream as created before re-publishing."""
    assert want.subject_transform is not None
    return (
        have.subjects == [want.subject_transform.dest]
        and _mapping(have.subject_transform) is None
        and _mapping(have.republish) is None
    )


_MAX_EVENT_ID = 300
"""Longest event id (its ``Nats-Msg-Id`` header): ids built from two legal ids
and a few words stay well below it."""

_MAX_SUBJECT = 512
"""Longest subject the store writes. The server closes the connection of a
client whose protocol line passes 4 KiB, which would stall every component
sharing it; ids checked at the door are far shorter (``MAX_ID_LEN``), and this
bound still lets an event of a goal written by another client be recorded."""

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def _unwritable(event: Event, subject: str) -> str:
    """Why an event can never be written ('' when it can)."""
    if not _TOKEN.match(event.goal_id):
        return "the goal id is not a subject token"
    if event.task_id is not None and (
        event.task_id == subjects.GOAL_TOKEN or not _TOKEN.match(event.task_id)
    ):
        return f"the task id {event.task_id[:40]!r} is not a legal subject token"
    if len(subject) > _MAX_SUBJECT:
        return f"its subject has {len(subject)} characters (at most {_MAX_SUBJECT})"
    if len(event.event_id) > _MAX_EVENT_ID:
        return f"its id has {len(event.event_id)} characters (at most {_MAX_EVENT_ID})"
    return ""

_TRANSIENT_API_CODES = frozenset({408, 503})
_TRANSIENT_ERR_CODES = frozenset({10008})  # JetStream temporarily unavailable


def _transient(e: BaseException) -> bool:
    """Whether an error from nats-py may go away if the call is made again."""
    if isinstance(
        e,
        nats.errors.TimeoutError
        | nats.errors.NoRespondersError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.StaleConnectionError
        | nats.js.errors.ServiceUnavailableError
        | nats.js.errors.NoStreamResponseError
        | TimeoutError,
    ):
        return True
    return isinstance(e, nats.js.errors.APIError) and (
        e.code in _TRANSIENT_API_CODES or e.err_code in _TRANSIENT_ERR_CODES
    )


async def connect(
    url: str,
    *,
    name: str = "bb",
    timeout: float = 3.0,
    **options: Any,
) -> NatsClient:
    """Connect to NATS, or raise NotConnected with what to do about it.

    ``url`` may list several servers separated by commas (the nodes of a
    cluster); nats-py takes them as its server pool and fails over between
    them. Once connected, reconnection never gives up (a restarted server is
    picked up again). nats-py would also retry the first connection forever
    with that setting, so the first connection gets a deadline and a CLI can
    fail in one line.
    """
    servers = [u.strip() for u in url.split(",") if u.strip()]
    seen: list[Exception] = []
    given_cb = options.pop("error_cb", None)

    async def remember(e: Exception) -> None:
        # nats-py retries a refused first connection too: keep the reason,
        # so an authorization or TLS refusal is not reported as "unreachable".
        seen.append(e)
        if given_cb is not None:
            await given_cb(e)

    try:
        return await asyncio.wait_for(
            nats.connect(
                servers,
                name=name,
                connect_timeout=min(timeout, 2.0),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                # A server that hangs (a paused node, a frozen VM) keeps its
                # socket open: only missed pings reveal it, and nats-py's default
                # (2 min x 2) would stall every reader that long. ~15 s here.
                ping_interval=5,
                max_outstanding_pings=3,
                error_cb=remember,
                **options,
            ),
            timeout,
        )
    except (nats.errors.Error, OSError, TimeoutError) as e:
        refused = _refusal(e, seen)
        if refused is not None:
            raise NotConnected(
                f"NATS at {url} refused the connection: {refused}"
            ) from e
        raise NotConnected(
            f"cannot reach NATS at {url}: start one with `bb up`, "
            "or set BB_NATS_URL to a running server"
        ) from e


def _refusal(error: Exception, seen: list[Exception]) -> str | None:
    """What to do about a server that answered but refused us, if it did."""
    for e in [error, *reversed(seen)]:
        text = str(e).lower()
        if "authorization" in text or "authentication" in text:
            return (
                f"{e}; set BB_NATS_USER and BB_NATS_PASSWORD (or BB_NATS_TOKEN, "
                "BB_NATS_CREDS, BB_NATS_NKEY_SEED)"
            )
        if isinstance(e, ssl.SSLError) or "certificate" in text or "tls" in text:
            return f"TLS: {e}; set BB_NATS_TLS_CA (and BB_NATS_TLS_CERT/KEY)"
    return None
