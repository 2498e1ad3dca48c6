"""The work queue on JetStream: ``BB_WORK`` and one durable consumer per lane.

Workers of a lane compete on the pull consumer ``bb-<lane>`` (explicit ack,
``ack_wait`` = the lease, ``max_ack_pending`` as backpressure, unlimited
deliveries: attempts are counted in the log instead). nats-py's errors are
raised as StoreError, so the worker needs to know nothing of NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig

from blackboard.errors import StoreError
from blackboard.log.ports import consumer_name
from blackboard.log.retry import NATS_ERRORS
from blackboard.log.subjects import H_MSG_ID, H_TRACEPARENT

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from datetime import datetime

    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NatsSub
    from nats.js import JetStreamContext

    from blackboard.log.ports import Delivery
    from blackboard.log.subjects import Subjects

log = logging.getLogger("blackboard.worker")

SETTLE_PATIENCE_S = 15.0
"""How long a nak or term is retried until the consumer's leader confirms it:
an R3 consumer elects a new leader in 2-5 s (a split vote costs another
election timeout), and an unconfirmed nak would leave the message to wait out
its whole lease."""
_SETTLE_TIMEOUT_S = 1.0


class JetStreamDelivery:
    """A delivered JetStream message (see ``ports.Delivery``)."""

    def __init__(self, msg: Msg) -> None:
        self.msg = msg

    @property
    def subject(self) -> str:
        """The subject it is stored under."""
        return self.msg.subject

    @property
    def data(self) -> bytes:
        """Its body."""
        return self.msg.data

    @property
    def headers(self) -> dict[str, str] | None:
        """Its headers."""
        return self.msg.headers

    @property
    def seq(self) -> int:
        """Its stream sequence."""
        return self.msg.metadata.sequence.stream

    @property
    def num_delivered(self) -> int:
        """How many times it was delivered, this one included."""
        return self.msg.metadata.num_delivered

    @property
    def timestamp(self) -> datetime | None:
        """When it was stored."""
        return self.msg.metadata.timestamp

    async def ack(self) -> None:
        """Done: the message is removed."""
        await _settle("ack", self.msg.ack())

    async def nak(self, delay: float | None = None) -> None:
        """Deliver it again, after ``delay`` seconds if given (confirmed)."""
        await self._confirmed("nak", nak_payload(delay))

    async def term(self) -> None:
        """Never deliver it again (confirmed)."""
        await self._confirmed("term", b"+TERM")

    async def _confirmed(self, what: str, payload: bytes) -> None:
        await settle_confirmed(self.msg._client, self.msg.reply, what, payload)
        self.msg._ackd = True

    async def in_progress(self) -> None:
        """Still working on it: the ack wait starts again."""
        await _settle("in_progress", self.msg.in_progress())


async def _settle(what: str, op: Awaitable[None]) -> None:
    try:
        await op
    except NATS_ERRORS as e:
        raise StoreError(f"{what}: {type(e).__name__}: {e}") from e


def nak_payload(delay: float | None) -> bytes:
    """JetStream's nak, with its redelivery delay (nanoseconds) if any."""
    payload = b"-NAK"
    if delay:
        payload += b' {"delay": %d}' % int(delay * 1e9)
    return payload


async def settle_confirmed(
    nc: NatsClient, reply: str, what: str, payload: bytes
) -> None:
    """Send a nak or term as a request, retried until the server answers.

    JetStream answers an ack sent with a reply subject once the consumer's
    leader has applied it (a "double ack"), to a stale delivery too. A
    plain publish sent while the consumer's leader is dead, or while a new
    one is elected, is lost without a word: the message would then wait
    out its lease (30 s) instead of the seconds the cluster takes. An ack
    stays a plain publish: if lost, the outcome is in the log already, and
    the redelivery a lease later is found done and acked (see runs.py).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_PATIENCE_S
    pause = 0.1
    while True:
        error: Exception
        if nc.is_connected:
            try:
                await nc.request(reply, payload, timeout=_SETTLE_TIMEOUT_S)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
                error = e  # no leader to take it now: once elected, it will
            except NATS_ERRORS as e:
                raise StoreError(f"{what}: {type(e).__name__}: {e}") from e
            else:
                return
        else:
            # Not queued while reconnecting: a request buffered then is
            # answered to nobody, and nats-py's close fails on it.
            error = nats.errors.ConnectionReconnectingError()
        if loop.time() >= deadline:
            raise StoreError(
                f"{what}: not confirmed within {SETTLE_PATIENCE_S:g}s "
                f"({type(error).__name__}: {error})"
            ) from error
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)


class JetStreamConsumer:
    """A bound pull consumer (see ``ports.Consumer``)."""

    def __init__(self, sub: JetStreamContext.PullSubscription) -> None:
        self.sub = sub

    async def fetch(self, n: int, timeout: float) -> list[Delivery]:
        """Up to ``n`` deliveries; ``[]`` if none came within ``timeout``."""
        try:
            msgs = await self.sub.fetch(n, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except (nats.errors.Error, nats.js.errors.Error) as e:
            raise StoreError(f"fetch: {type(e).__name__}: {e}") from e
        return [JetStreamDelivery(m) for m in msgs]

    async def close(self) -> None:
        """Unsubscribe; the durable consumer stays."""
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()


class NatsSubscription:
    """A core NATS subscription (see ``ports.Subscription``)."""

    def __init__(self, sub: NatsSub) -> None:
        self.sub = sub

    async def close(self) -> None:
        """Unsubscribe."""
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()


class JetStreamWorkQueue:
    """The lanes' work on the work stream (see ``ports.WorkQueue``)."""

    def __init__(self, nc: NatsClient, stream: str, subjects: Subjects) -> None:
        self.js = nc.jetstream()
        self.stream = stream
        self.subjects = subjects

    async def publish(
        self, lane: str, body: bytes, *, msg_id: str, traceparent: str | None = None
    ) -> int:
        """Publish on ``<prefix>.work.<lane>``; the stream deduplicates by id."""
        headers = {H_MSG_ID: msg_id}
        if traceparent is not None:
            headers[H_TRACEPARENT] = traceparent
        try:
            ack = await self.js.publish(self.subjects.work(lane), body, headers=headers)
        except NATS_ERRORS as e:
            raise StoreError(f"work for {lane}: {type(e).__name__}: {e}") from e
        return ack.seq

    async def ensure_lane(
        self, lane: str, *, lease_s: float, max_ack_pending: int
    ) -> None:
        """Create the lane's durable consumer if it does not exist."""
        name = consumer_name(lane)
        try:
            try:
                info = await self.js.consumer_info(self.stream, name)
            except nats.js.errors.NotFoundError:
                info = None
            if info is None:
                cfg = ConsumerConfig(
                    durable_name=name,
                    filter_subject=self.subjects.work(lane),
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=lease_s,
                    max_ack_pending=max_ack_pending,
                    max_deliver=-1,
                )
                with contextlib.suppress(nats.js.errors.BadRequestError):
                    await self.js.add_consumer(self.stream, cfg)
            elif info.config.ack_wait != lease_s:
                log.warning(
                    "consumer %s has ack_wait %ss, not the configured lease %ss; "
                    "using it as it is",
                    name,
                    info.config.ack_wait,
                    lease_s,
                )
        except NATS_ERRORS as e:
            raise StoreError(f"consumer {name}: {type(e).__name__}: {e}") from e

    async def consumer(self, lane: str) -> JetStreamConsumer:
        """Bind to the lane's durable consumer."""
        try:
            sub = await self.js.pull_subscribe_bind(
                durable=consumer_name(lane), stream=self.stream
            )
        except NATS_ERRORS as e:
            raise StoreError(f"binding {lane}: {type(e).__name__}: {e}") from e
        return JetStreamConsumer(sub)

    async def lag(self, lane: str) -> int:
        """The lane consumer's ``num_pending``."""
        name = consumer_name(lane)
        try:
            # Not retried: a gauge can wait for the next measurement.
            info = await self.js.consumer_info(self.stream, name)
        except NATS_ERRORS as e:
            raise StoreError(f"consumer {name}: {type(e).__name__}: {e}") from e
        return info.num_pending or 0
