"""Reading the JetStream log: reads to the end, follows, last messages.

Readers use an ephemeral pull consumer (ack none, in memory) from a start
sequence with a subject filter. They never crash on a message they cannot
decode: they hand a ``MalformedEvent`` to ``on_bad`` (by default a logged
warning) and go on. They never return part of the history silently either: a
read goes on to the end of the log as it was when the read began, or raises
LogUnavailable. A follower whose reader is lost (a server restart) recreates
it from the next sequence, so nothing is skipped or doubled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from blackboard.errors import LogUnavailable, MalformedEvent, StoreError
from blackboard.log import streams, wire
from blackboard.log.ports import (
    DerivedReads,
    Last,
    OnBad,
    Share,
    StoreSettings,
    partitions_stream,
    warn_bad,
)
from blackboard.log.pull import Puller, RawDelivery, RawMsg
from blackboard.log.retry import NATS_ERRORS, retry, transient, violation
from blackboard.log.subjects import H_BLOB, H_MSG_ID, H_STREAM_SOURCE, Subjects

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine

    from nats.aio.client import Client as NatsClient
    from nats.js import JetStreamContext
    from nats.js.object_store import ObjectStore

    from blackboard.log.codec import Envelope
    from blackboard.log.ports import StoredMessage

log = logging.getLogger("blackboard.store")
_READER_IDLE_S = 10.0
_BLOB_HEADER = H_BLOB.encode()
_SOURCE_HEADER = H_STREAM_SOURCE.encode()
_CATCH_UP_POLL_S = 0.1

S = TypeVar("S")
P = ParamSpec("P")
T = TypeVar("T")


def translated(
    fn: Callable[Concatenate[S, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, T]]:
    """Raise nats-py's own errors that escape a store method as StoreError.

    The ports promise StoreError for trouble with the log, so callers (the
    worker, the scheduler) never need to know what NATS raises.
    """

    async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(self, *args, **kwargs)
        except nats.errors.Error as e:
            raise StoreError(f"{fn.__name__}: {type(e).__name__}: {e}") from e

    functools.update_wrapper(wrapper, fn)
    return wrapper


class JetStreamReads(DerivedReads):
    """The reading half of the JetStream event store (see store.py)."""

    nc: NatsClient
    js: JetStreamContext
    settings: StoreSettings
    subjects: Subjects
    events_stream: str

    async def _blob_store(self) -> ObjectStore:
        raise NotImplementedError

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op``, retrying transient server trouble (see retry.py).

        A publish the server refuses for this user's permissions is raised
        as PermissionDenied once the violation is reported, not retried.
        """
        return await retry(
            what, op, self.settings.transient_s, lambda: violation(self.nc.last_error)
        )

    # --- decoding -------------------------------------------------------------

    async def decode(
        self, msg: StoredMessage, on_bad: OnBad = warn_bad
    ) -> Envelope | None:
        """Decode a stored message into an Envelope; None (reported) if bad."""
        if isinstance(msg, RawDelivery) and not msg.has_header(_BLOB_HEADER):
            # The projector's deliveries: decoded in place, headers unparsed.
            return self._decode_inline(msg.subject, msg.data, msg.seq, on_bad)
        return await self.decode_raw(
            msg.subject, msg.data, msg.headers, msg.seq, on_bad
        )

    @translated
    async def decode_raw(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None,
        seq: int | None,
        on_bad: OnBad = warn_bad,
    ) -> Envelope | None:
        """Decode a body with its headers, fetching a blob if the body is a stub."""
        try:
            stub = wire.stub_of(headers, data, subject, seq)
            if stub is not None:
                blobs = await self._blob_store()
                try:
                    obj = await blobs.get(stub.blob_sha256)
                except nats.js.errors.ObjectNotFoundError as e:
                    raise MalformedEvent(subject, seq, "blob is missing") from e
                data = obj.data or b""
                wire.check_blob(data, stub, subject, seq)
            return wire.envelope(self.subjects, subject, data, seq)
        except MalformedEvent as e:
            on_bad(e)
            return None
        except ValueError as e:
            on_bad(MalformedEvent(subject, seq, str(e)))
            return None

    async def _decode_msg(
        self, msg: RawMsg, seq: int, on_bad: OnBad
    ) -> Envelope | None:
        if msg.has_header(_BLOB_HEADER):
            return await self.decode_raw(
                msg.subject, msg.data, msg.headers, seq, on_bad
            )
        # Not a blob stub (nearly every event): decode in place, without the
        # coroutines of decode_raw (a fifth of a read's time at log speed).
        return self._decode_inline(msg.subject, msg.data, seq, on_bad)

    async def _decode_at(
        self, msg: RawMsg, seq: int, share: Share | None, on_bad: OnBad
    ) -> Envelope | None:
        """Decode what a reader got at ``seq`` of its stream; move its share on."""
        if share is None:
            return await self._decode_msg(msg, seq, on_bad)
        share.position = seq
        if share.whole:
            return await self._decode_msg(msg, seq, on_bad)
        return await self._decode_sourced(msg, on_bad)

    async def _decode_sourced(self, msg: RawMsg, on_bad: OnBad) -> Envelope | None:
        """Decode a message of a partitions stream as the event it copies.

        Its ``Nats-Stream-Source`` header names the events-stream sequence and
        subject it was stored at: the event is given back as stored there.
        """
        where = msg.header(_SOURCE_HEADER)
        try:
            seq, subject = wire.sourced(where)
        except ValueError as e:
            on_bad(MalformedEvent(msg.subject, None, str(e)))
            return None
        return await self._decode_msg(msg.copied_as(subject), seq, on_bad)

    def _decode_inline(
        self, subject: str, data: bytes, seq: int, on_bad: OnBad
    ) -> Envelope | None:
        """Decode a body that is not a blob stub."""
        try:
            return wire.envelope(self.subjects, subject, data, seq)
        except MalformedEvent as e:
            on_bad(e)
        except ValueError as e:
            on_bad(MalformedEvent(subject, seq, str(e)))
        return None

    # --- partitions -----------------------------------------------------------

    def _stream_of(self, share: Share | None) -> str:
        """The stream a share is read from."""
        if share is None or share.whole:
            return self.events_stream
        return partitions_stream(self.events_stream, share.count)

    @translated
    async def ensure_share(self, share: Share) -> None:
        """Create the partitions stream of ``share`` if missing; let it catch up.

        The stream copies the events stream (from its first event, when it
        is created on a log that has a history): a partition's scheduler
        waits, up to the store's patience, for the copy to reach the log's
        end as it is now (its last message names the event it copies), so
        that it does not decide on a partial history (which would only cost
        conflicts, never a wrong write: every write is guarded).
        """
        if share.whole:
            return
        name = self._stream_of(share)
        cfg = streams.partitions_config(
            name, self.settings, self.subjects, self.events_stream, share.count
        )
        await self._retry(
            f"creating {name}",
            functools.partial(streams.ensure_stream, self.js, cfg, False),
        )
        # Where the copy must get to: the last message on an event subject
        # (one on another subject of the stream, a stray publish on
        # `<prefix>.in.evt.x`, is never copied, so it is no end to wait for).
        end = await self.last_on(self.subjects.events_each)
        target = end.seq if end is not None else 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.transient_s
        while True:
            info = await self._retry(
                f"stream info {name}", lambda: self.js.stream_info(name)
            )
            last = info.state.last_seq
            copied = await self.share_at(share, last) if last else 0
            if (copied or 0) >= target:
                return
            if loop.time() > deadline:
                log.warning(
                    "%s has copied %s up to %d of %d; reading it as it is",
                    name,
                    self.events_stream,
                    copied or 0,
                    target,
                )
                return
            await asyncio.sleep(_CATCH_UP_POLL_S)

    @translated
    async def share_at(self, share: Share, position: int) -> int | None:
        """The events-stream sequence of what ``share`` read at ``position``."""
        if share.whole:
            return position
        stream = self._stream_of(share)
        try:
            raw = await self._retry(
                f"message {position} of {stream}",
                lambda: self.js.get_msg(stream, position),
            )
        except nats.js.errors.NotFoundError:
            return None
        try:
            seq, _ = wire.sourced((raw.headers or {}).get(H_STREAM_SOURCE, "").encode())
        except ValueError:
            return None
        return seq

    # --- reads ----------------------------------------------------------------

    async def _reader(
        self,
        filter_subject: str | None,
        from_seq: int,
        stream: str | None = None,
    ) -> tuple[Puller, int]:
        """An ephemeral reader from ``from_seq`` and how many it has to read."""
        cfg = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            # The server removes a reader idle this long. Readers do not
            # delete their consumer when done: the chart's roles may create
            # one but not delete (which would let them delete the projector's
            # durable), so a finished reader's consumer goes after this. One
            # whose caller paused longer is recreated where it was.
            inactive_threshold=_READER_IDLE_S,
            mem_storage=True,
            num_replicas=1,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, from_seq),
            filter_subject=filter_subject or self.subjects.events_all,
            # Named, so it is created on CONSUMER.CREATE.<stream>.<name>.<filter>
            # (the subject the roles allow), as nats-py's pull_subscribe does.
            name=self.nc._nuid.next().decode(),
        )
        if not self.nc.is_connected:
            # Retried until connected: a request buffered while reconnecting
            # stays in nats-py's queue and makes its close fail.
            raise nats.errors.ConnectionReconnectingError
        stream = stream or self.events_stream
        info = await self.js.add_consumer(stream, cfg)
        assert info.name is not None
        puller = await Puller(self.nc, stream, info.name).start()
        return puller, info.num_pending or 0

    async def _drop_reader(self, puller: Puller) -> None:
        """Stop reading (the consumer goes by itself once idle)."""
        await puller.close()

    def read(
        self,
        filter_subject: str | None = None,
        from_seq: int = 1,
        on_bad: OnBad = warn_bad,
        batch: int = 10_000,
    ) -> AsyncGenerator[Envelope, None]:
        """Yield every event stored so far on ``filter_subject``, in order.

        See ``_read``.
        """
        return self._read(filter_subject, from_seq, on_bad, batch, None)

    def read_share(
        self, share: Share, on_bad: OnBad = warn_bad
    ) -> AsyncGenerator[Envelope, None]:
        """Yield ``share``'s events after its position, to the end so far."""
        if share.whole:
            return self._read(None, share.position + 1, on_bad, 10_000, share)
        return self._read(
            self.subjects.partition(share.index),
            share.position + 1,
            on_bad,
            10_000,
            share,
        )

    async def _read(
        self,
        filter_subject: str | None,
        from_seq: int,
        on_bad: OnBad,
        batch: int,
        share: Share | None,
    ) -> AsyncGenerator[Envelope, None]:
        """Yield every event stored so far on ``filter_subject``, in order.

        With a ``share`` of a partition the read is of the partitions stream
        (``from_seq`` and the filter are its own), each event given back
        with its events-stream sequence; the share's position follows.

        "So far" is the end of the log when the read began (the reader's
        pending count): the read gets there, or raises LogUnavailable. A
        reader that stops answering (its node paused, its consumer lost) is
        recreated from the next sequence, so nothing is skipped or doubled.

        With replicated streams the end is asked of the stream's leader
        first: a reader's R1 consumer may be placed on any replica, and one
        that is catching up (a node just restarted) counts only what it has,
        so its pending count alone would end the read early with a partial
        history taken for the whole. The read then waits for that replica
        (or a recreated reader) to reach the leader's end.
        """
        scope = filter_subject or self.subjects.events_all
        what = f"reading {scope}"
        next_seq = max(1, from_seq)
        end = 0
        stream = self._stream_of(share)
        try:
            if self.settings.replicas > 1:
                last = await self.last_on(scope, stream)
                end = last.seq if last is not None else 0
            sub, pending = await self._retry(
                what, lambda: self._reader(filter_subject, next_seq, stream)
            )
        except nats.errors.Error as e:
            raise StoreError(f"{what}: {type(e).__name__}: {e}") from e
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.transient_s
        try:
            while pending > 0 or next_seq <= end:
                try:
                    # Behind the leader's end with nothing pending: wait for
                    # the replica to catch up (a timeout recreates the reader).
                    want = min(batch, pending) if pending > 0 else batch
                    msgs = await sub.fetch(want, timeout=5)
                except Exception as e:
                    lost = isinstance(e, nats.js.errors.NotFoundError)
                    if not (lost or transient(e)):
                        if isinstance(e, nats.errors.Error):
                            raise StoreError(f"{what}: {e}") from e
                        raise
                    if loop.time() > deadline:
                        raise LogUnavailable(
                            f"{what}: stopped at seq {next_seq} with {pending} "
                            f"event(s) still to read ({e})"
                        ) from e
                    log.info(
                        "%s: reader lost at %d (%s); recreating", what, next_seq, e
                    )
                    await self._drop_reader(sub)
                    try:
                        sub, pending = await self._retry(
                            what,
                            functools.partial(
                                self._reader, filter_subject, next_seq, stream
                            ),
                        )
                    except (LogUnavailable, *NATS_ERRORS) as again:
                        raise LogUnavailable(
                            f"{what}: stopped at seq {next_seq} with {pending} "
                            f"event(s) still to read ({again})"
                        ) from again
                    continue
                deadline = loop.time() + self.settings.transient_s
                for msg in msgs:
                    seq, pending = msg.position()
                    if seq < next_seq:
                        continue  # a late answer to a reader since replaced
                    next_seq = seq + 1
                    env = await self._decode_at(msg, seq, share, on_bad)
                    if env is not None:
                        yield env
        finally:
            await self._drop_reader(sub)

    def follow_batches(
        self,
        filter_subject: str | None = None,
        from_seq: int | None = None,
        on_bad: OnBad = warn_bad,
        batch: int = 500,
        idle_s: float = 0.25,
    ) -> AsyncGenerator[list[Envelope], None]:
        """Yield batches of events as they arrive, forever (empty when idle).

        See ``_follow``.
        """
        return self._follow(filter_subject, from_seq, on_bad, batch, idle_s, None)

    def follow_share(
        self, share: Share, on_bad: OnBad = warn_bad, batch: int = 500
    ) -> AsyncGenerator[list[Envelope], None]:
        """Follow ``share`` from after its position, moving it on."""
        scope = None if share.whole else self.subjects.partition(share.index)
        return self._follow(scope, share.position + 1, on_bad, batch, 0.25, share)

    async def _follow(
        self,
        filter_subject: str | None,
        from_seq: int | None,
        on_bad: OnBad,
        batch: int,
        idle_s: float,
        share: Share | None,
    ) -> AsyncGenerator[list[Envelope], None]:
        """Yield batches of events as they arrive, forever (empty when idle).

        The reader is an in-memory ephemeral consumer; if it disappears (the
        server restarted) it is recreated from the sequence after the last one
        seen, so nothing is skipped and nothing is yielded twice. Close the
        generator (``contextlib.aclosing``) to release the reader at once.
        With a ``share`` of a partition it reads the partitions stream (as
        ``_read``).
        """
        next_seq = from_seq
        stream = self._stream_of(share)
        sub: Puller | None = None
        scope = filter_subject or self.subjects.events_all
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        try:
            while True:
                if sub is None:
                    try:
                        if next_seq is None:
                            # "From now" as a sequence, so a reader recreated
                            # later (and the stall check) knows where it was.
                            next_seq = await self.events_last_seq() + 1
                        sub, _ = await self._reader(filter_subject, next_seq, stream)
                    except (*NATS_ERRORS, StoreError) as e:
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
                        if await self._stalled(scope, next_seq, stream):
                            await self._drop_reader(sub)
                            sub = None
                    yield []
                    continue
                except NATS_ERRORS as e:
                    log.warning("reader lost (%s); recreating it", e)
                    await self._drop_reader(sub)
                    sub = None
                    await asyncio.sleep(0.25)
                    yield []
                    continue
                idle_since = loop.time()
                envs: list[Envelope] = []
                for msg in msgs:
                    seq, _ = msg.position()
                    if next_seq is not None and seq < next_seq:
                        continue  # a late answer to a reader since replaced
                    next_seq = seq + 1
                    env = await self._decode_at(msg, seq, share, on_bad)
                    if env is not None:
                        envs.append(env)
                yield envs
        finally:
            if sub is not None:
                await self._drop_reader(sub)

    async def _stalled(
        self, scope: str, next_seq: int | None, stream: str | None = None
    ) -> bool:
        """Whether the log holds events on ``scope`` that a follower never got.

        A reader whose node is paused or partitioned gets only timeouts, which
        look like an idle log; the log's own last message tells them apart.
        """
        try:
            last = await self.last_on(scope, stream)
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

    # --- lookups --------------------------------------------------------------

    @translated
    async def last_on(self, scope: str, stream: str | None = None) -> Last | None:
        """Sequence, event id and subject of the last message on a filter.

        Of the events stream, or of ``stream`` (a partitions stream: the
        sequence is then that stream's own).
        """
        try:
            msg = await self._retry(
                f"last message on {scope}",
                lambda: self.js.get_last_msg(stream or self.events_stream, scope),
            )
        except nats.js.errors.NotFoundError:
            return None
        msg_id = (msg.headers or {}).get(H_MSG_ID, "")
        assert msg.seq is not None
        return Last(msg.seq, msg_id, msg.subject or "")

    async def last_seq(self, goal_id: str, task_id: str | None) -> int:
        """The guard value of a task now: its last event's sequence, or 0."""
        last = await self.last_on(self.subjects.task_events(goal_id, task_id))
        return last.seq if last else 0

    @translated
    async def events_last_seq(self) -> int:
        """The last sequence of the events stream."""
        info = await self._retry(
            "stream info", lambda: self.js.stream_info(self.events_stream)
        )
        return info.state.last_seq

    @translated
    @translated
    async def get(self, seq: int, on_bad: OnBad = warn_bad) -> Envelope | None:
        """One event by its stream sequence (StoreError if there is none)."""
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

    @translated
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
