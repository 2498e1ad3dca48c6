"""Reading from a JetStream pull consumer at the speed of the connection.

nats-py's ``PullSubscription.fetch`` waits for each message of a batch with
its own ``asyncio.wait_for`` (a task and a timer per message), then builds a
header dict and a ``Msg`` and queues it: reading a goal's log that way tops
out near 20,000 messages a second on one core, well under what the server
sends. A ``Puller`` sends the same pull requests
(``$JS.API.CONSUMER.MSG.NEXT``) from a plain subscription whose messages the
client hands over raw (``connect.Client.sinks``): the parser's bytes are
appended to a list and the fetcher is woken once, when the batch is full or
the server ends the request with a status (no messages, request expired,
the consumer deleted or its leader changed, the batch's byte limit reached).

Readers that do not ack (ack policy none) take ``RawMsg`` objects; a
``RawConsumer`` hands out ``RawDelivery`` objects, which ack (the
projector's durable, ack-all consumer). Messages that arrive after a fetch
gave up (the server answered late) are kept for the next fetch, never
dropped, so a reader misses nothing and sees nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
import nats.errors
import nats.js.errors

from blackboard.errors import StoreError
from blackboard.log.connect import Client
from blackboard.log.workqueue import nak_payload, settle_confirmed

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from blackboard.log.ports import Delivery

# What the server may end a pull request with, and what it means here.
_NONE_LEFT = ("404", "408")  # no messages now / the request expired
_ENDED = "409"  # leadership change, consumer deleted, max bytes, max batch...
_HEARTBEAT = "100"
_NO_RESPONDERS = "503"
# How long to wait for the server's answer past what was asked before taking
# its silence for a timeout (a paused node answers nothing).
_GRACE_S = 1.0
# One batch's bytes at most: a batch of large events stays bounded in memory.
MAX_BYTES = 32 * 1024 * 1024
_HDR_LINE = b"NATS/1.0"


class _Request(msgspec.Struct, omit_defaults=True):
    batch: int
    expires: int = 0  # nanoseconds; 0: none
    max_bytes: int = 0
    no_wait: bool = False


_encode = msgspec.json.Encoder().encode


class RawMsg:
    """A delivered message as bytes; headers parsed only when asked for."""

    __slots__ = ("_headers", "data", "reply", "subject")

    def __init__(
        self, subject: str, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        self.subject = subject
        self.reply = reply  # bytes: only its tokens are ever read
        self.data = data
        self._headers = headers

    def has_header(self, name: bytes) -> bool:
        """Whether a header of that name may be there (cheap, no parse)."""
        return self._headers is not None and name in self._headers

    def header(self, name: bytes) -> bytes | None:
        """One header's value, found in the raw block (None: not there)."""
        raw = self._headers
        if raw is None:
            return None
        at = raw.find(b"\r\n" + name + b":")
        if at < 0:
            return None
        start = at + len(name) + 3
        end = raw.find(b"\r\n", start)
        return raw[start : end if end >= 0 else len(raw)].strip()

    def copied_as(self, subject: str) -> RawMsg:
        """The same message under another subject (a copy's original one)."""
        return RawMsg(subject, self.reply, self.data, self._headers)

    @property
    def headers(self) -> dict[str, str] | None:
        """The headers as nats-py would give them."""
        raw = self._headers
        if raw is None:
            return None
        return Client._parse_header_lines(raw[len(_HDR_LINE) + 2 :]) or None

    def ack_info(self) -> tuple[int, int, int, int]:
        """Deliveries, stream sequence, timestamp (ns) and pending after it.

        Read from the ack subject's tokens:
        ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer
        seq>.<timestamp>.<pending>``, or the newer form with
        ``<domain>.<account>`` after ACK and a trailing token.
        """
        tokens = self.reply.split(b".")
        if len(tokens) == 9:
            at = 4
        elif len(tokens) >= 11 and tokens[0] == b"$JS" and tokens[1] == b"ACK":
            at = 6
        else:
            raise StoreError(
                f"not a JetStream delivery on {self.subject}: {self.reply!r}"
            )
        try:
            return (
                int(tokens[at]),
                int(tokens[at + 1]),
                int(tokens[at + 3]),
                int(tokens[at + 4]),
            )
        except ValueError:
            raise StoreError(
                f"not a JetStream delivery on {self.subject}: {self.reply!r}"
            ) from None

    def position(self) -> tuple[int, int]:
        """Its stream sequence and the consumer's pending count after it."""
        tokens = self.reply.split(b".")
        if len(tokens) == 9:  # the common form: two ints, not ack_info's four
            try:
                return int(tokens[5]), int(tokens[8])
            except ValueError:
                pass
        _, seq, _, pending = self.ack_info()
        return seq, pending


def _status(headers: bytes | None) -> str | None:
    """``"404 No Messages"`` for a status message's header block, else None."""
    if headers is None or headers[len(_HDR_LINE) : len(_HDR_LINE) + 1] != b" ":
        return None
    line = headers[len(_HDR_LINE) + 1 :].split(b"\r\n", 1)[0]
    return line.decode("utf-8", "replace").strip()


class Puller:
    """Fetches batches of raw messages from one consumer (see module doc)."""

    def __init__(self, nc: NatsClient, stream: str, consumer: str) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.stream = stream
        self.consumer = consumer
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._got: list[RawMsg] = []
        self._want = 0
        self._ended: asyncio.Future[str | None] | None = None
        self._status: str | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> Puller:
        """Subscribe to the reply inbox; returns itself."""
        if isinstance(self.nc, Client):
            self._sub = await self.nc.subscribe(self._inbox)
            self.nc.sinks[self._sub._id] = self._on_raw
        else:
            # A plain nats-py client (a caller's own): the same, from Msg.
            # Unbounded pending limits: a batch is bounded by its request,
            # and a slow-consumer drop would lose an ack-none reader's events.
            self._sub = await self.nc.subscribe(
                self._inbox,
                cb=self._on_msg,
                pending_msgs_limit=0,
                pending_bytes_limit=0,
            )
        return self

    async def _on_msg(self, msg: Msg) -> None:
        hdr = msg.headers or {}
        if not msg.data and "Status" in hdr:
            line = f"NATS/1.0 {hdr['Status']} {hdr.get('Description', '')}\r\n"
            self._on_raw(b"", b"", b"", line.encode())
            return
        block = "".join(f"{k}: {v}\r\n" for k, v in hdr.items())
        raw = f"NATS/1.0\r\n{block}\r\n".encode() if hdr else None
        self._got.append(RawMsg(msg.subject, msg.reply.encode(), msg.data, raw))
        self._check_full()

    def _on_raw(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        if not data:
            status = _status(headers)
            if status is not None:
                if not status.startswith(_HEARTBEAT):
                    self._finish(status)
                return
        self._got.append(RawMsg(subject.decode(), reply, data, headers))
        self._check_full()

    def _check_full(self) -> None:
        if self._want and len(self._got) >= self._want:
            self._finish(None)

    def _finish(self, status: str | None) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(status)

    async def fetch(self, batch: int, timeout: float) -> list[RawMsg]:
        """Up to ``batch`` messages, as soon as there are any.

        As nats-py's fetch: first what the consumer has now (a ``no_wait``
        request, answered at once), then, if that was nothing, a request that
        waits up to ``timeout`` for the next message. That one asks for a
        single message, so no request is left open to deliver more than asked
        for; a burst after the wait is the next call's ``no_wait``.

        Raises nats.errors.TimeoutError if nothing came, and
        nats.js.errors.NotFoundError if the consumer is gone, as nats-py's
        fetch does, so callers retry or recreate the same way.
        """
        assert self._sub is not None, "start() first"
        async with self._lock:
            loop = asyncio.get_running_loop()
            start = loop.time()
            if not self._got:
                await self._request(batch, None, _GRACE_S)
            if not self._got:
                left = timeout - (loop.time() - start)
                if left > 0.001:
                    await self._request(1, left, left + _GRACE_S)
            got = self._take(batch)
            if got:
                return got
            status = self._status or ""
            gone = status.startswith(_ENDED) and "deleted" in status.lower()
            if gone or status.startswith(_NO_RESPONDERS):
                # Deleted, or nobody serves it (a lost ephemeral, a consumer
                # whose leader is gone): a reader recreates it.
                raise nats.js.errors.NotFoundError(description=status)
            if status and not status.startswith((*_NONE_LEFT, _ENDED)):
                raise nats.errors.Error(f"pull request ended: {status}")
            raise nats.errors.TimeoutError

    async def _request(self, batch: int, expires: float | None, wait: float) -> None:
        """Ask for ``batch`` messages; return when the server has answered."""
        if not self.nc.is_connected:
            # Not buffered for later: a request queued while reconnecting
            # would be answered to nobody, and nats-py's close fails on it.
            raise nats.errors.ConnectionReconnectingError
        loop = asyncio.get_running_loop()
        self._want = len(self._got) + batch
        self._ended = loop.create_future()
        self._status = None
        if expires is None:
            req = _Request(batch=batch, no_wait=True, max_bytes=MAX_BYTES)
        else:
            ns = max(int(expires * 1e9), 1_000_000)
            req = _Request(batch=batch, expires=ns, max_bytes=MAX_BYTES)
        await self.nc.publish(self.subject, _encode(req), reply=self._inbox)
        try:
            self._status = await asyncio.wait_for(asyncio.shield(self._ended), wait)
        except TimeoutError:
            self._status = "408 no answer"
        finally:
            self._want = 0

    def _take(self, batch: int) -> list[RawMsg]:
        got, self._got = self._got[:batch], self._got[batch:]
        return got

    async def close(self) -> None:
        """Unsubscribe (the consumer itself stays)."""
        if self._sub is not None:
            if isinstance(self.nc, Client):
                self.nc.sinks.pop(self._sub._id, None)
            with contextlib.suppress(nats.errors.Error, OSError):
                await self._sub.unsubscribe()
            self._sub = None


class RawDelivery:
    """A raw message delivered by an acking consumer (see ``ports.Delivery``).

    Its position is read once from the ack subject; acks are plain publishes
    of JetStream's ack payloads on it, as nats-py's ``Msg.ack`` sends them,
    and a nak or term is confirmed by the consumer's leader (see
    ``workqueue.settle_confirmed``).
    """

    __slots__ = ("_headers", "_msg", "_nc", "_parsed", "_ts", "num_delivered", "seq")

    def __init__(self, nc: NatsClient, msg: RawMsg) -> None:
        self._nc = nc
        self._msg = msg
        self.num_delivered, self.seq, self._ts, _ = msg.ack_info()
        self._headers: dict[str, str] | None = None
        self._parsed = False

    @property
    def subject(self) -> str:
        """The subject it is stored under."""
        return self._msg.subject

    @property
    def data(self) -> bytes:
        """Its body."""
        return self._msg.data

    @property
    def headers(self) -> dict[str, str] | None:
        """Its headers (parsed once, when first asked for)."""
        if not self._parsed:
            self._headers, self._parsed = self._msg.headers, True
        return self._headers

    def has_header(self, name: bytes) -> bool:
        """Whether a header of that name may be there (cheap, no parse)."""
        return self._msg.has_header(name)

    @property
    def timestamp(self) -> datetime | None:
        """When it was stored."""
        return datetime.fromtimestamp(self._ts / 1e9, tz=UTC)

    async def _send(self, what: str, payload: bytes) -> None:
        try:
            await self._nc.publish(self._msg.reply.decode(), payload)
        except (nats.errors.Error, OSError) as e:
            raise StoreError(f"{what}: {type(e).__name__}: {e}") from e

    async def ack(self) -> None:
        """Done (on an ack-all consumer: everything up to here)."""
        await self._send("ack", b"+ACK")

    async def nak(self, delay: float | None = None) -> None:
        """Deliver it again, after ``delay`` seconds if given (confirmed)."""
        reply = self._msg.reply.decode()
        await settle_confirmed(self._nc, reply, "nak", nak_payload(delay))

    async def term(self) -> None:
        """Never deliver it again (confirmed)."""
        await settle_confirmed(self._nc, self._msg.reply.decode(), "term", b"+TERM")

    async def in_progress(self) -> None:
        """Still working on it: the ack wait starts again."""
        await self._send("in_progress", b"+WPI")


class RawConsumer:
    """A durable pull consumer read raw (see ``ports.Consumer``).

    The projector's consumer: nats-py's fetch would cost it more per event
    than folding the event does (see the module doc).
    """

    def __init__(self, nc: NatsClient, stream: str, consumer: str) -> None:
        self.nc = nc
        self._puller = Puller(nc, stream, consumer)

    async def start(self) -> RawConsumer:
        """Subscribe; returns itself."""
        await self._puller.start()
        return self

    async def fetch(self, n: int, timeout: float) -> list[Delivery]:
        """Up to ``n`` deliveries; ``[]`` if none came within ``timeout``."""
        try:
            msgs = await self._puller.fetch(n, timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except (nats.errors.Error, nats.js.errors.Error) as e:
            raise StoreError(f"fetch: {type(e).__name__}: {e}") from e
        return [RawDelivery(self.nc, m) for m in msgs]

    async def close(self) -> None:
        """Unsubscribe; the durable consumer stays."""
        await self._puller.close()
