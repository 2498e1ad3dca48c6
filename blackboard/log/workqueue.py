"""The work queue on JetStream: ``BB_WORK`` and one durable consumer per lane.

Workers of a lane compete on the pull consumer ``bb-<lane>`` (explicit ack,
``ack_wait`` = the lease, ``max_ack_pending`` as backpressure, unlimited
deliveries: attempts are counted in the log instead). nats-py's errors are
raised as StoreError, so the worker needs to know nothing of NATS.
"""

from __future__ import annotations

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
        """Deliver it again, after ``delay`` seconds if given."""
        await _settle("nak", self.msg.nak(delay=delay))

    async def term(self) -> None:
        """Never deliver it again."""
        await _settle("term", self.msg.term())

    async def in_progress(self) -> None:
        """Still working on it: the ack wait starts again."""
        await _settle("in_progress", self.msg.in_progress())


async def _settle(what: str, op: Awaitable[None]) -> None:
    try:
        await op
    except NATS_ERRORS as e:
        raise StoreError(f"{what}: {type(e).__name__}: {e}") from e


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
