"""One active scheduler: a lease in a JetStream key-value bucket.

The JetStream adapter of the ``LeaderLock`` port (ports.py). The holder writes
its id under a key in a bucket whose entries expire after ``ttl_s``, and
rewrites it (compare-and-set on the revision) every third of that. A standby
tries to create the key; it succeeds only once the holder has released it or
stopped renewing and the entry expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

log = logging.getLogger("blackboard.lock")


class JetStreamLeaderLock:
    """A lease named ``key`` held by ``holder``."""

    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        key: str,
        holder: str,
        ttl_s: float,
        replicas: int = 1,
    ) -> None:
        self.js = js
        self.replicas = replicas
        self.bucket = bucket
        self.key = key
        self.holder = holder
        self.ttl_s = ttl_s
        self.revision: int | None = None
        self.lost = asyncio.Event()
        self._kv: KeyValue | None = None
        self._renewer: asyncio.Task[None] | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                # As many replicas as the streams: a lease on one node of a
                # cluster would be lost with it, and leadership with the lease.
                self._kv = await self.js.create_key_value(
                    bucket=self.bucket,
                    ttl=self.ttl_s,
                    history=1,
                    replicas=self.replicas,
                )
        return self._kv

    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it."""
        kv = await self._bucket()
        try:
            self.revision = await kv.create(self.key, self.holder.encode())
        except (
            nats.js.errors.KeyWrongLastSequenceError,
            nats.js.errors.BadRequestError,
        ):
            return False
        self.lost.clear()
        self._renewer = asyncio.create_task(self._renew())
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait as a standby until the lease is ours (or ``stop`` is set)."""
        announced = False
        while not stop.is_set():
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                if await self.try_acquire():
                    return True
            if not announced:
                log.info("%s: standby; another holds %s", self.holder, self.key)
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.ttl_s / 4)
        return False

    async def _renew(self) -> None:
        kv = await self._bucket()
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                self.revision = await kv.update(
                    self.key, self.holder.encode(), last=self.revision
                )
            except (
                nats.js.errors.KeyWrongLastSequenceError,
                nats.js.errors.BadRequestError,
            ) as e:
                # Expected after a pause or an outage longer than the TTL:
                # someone else may lead now, so step down (no traceback).
                log.warning(
                    "%s: lost the lease %s (%s); stepping down",
                    self.holder,
                    self.key,
                    e,
                )
                self.lost.set()
                return
            except (nats.errors.Error, nats.js.errors.Error) as e:
                # Server unreachable: keep trying; if it takes longer than the
                # TTL, the next update fails the revision check and we step down.
                log.warning("%s: could not renew %s (%s)", self.holder, self.key, e)

    async def release(self) -> None:
        """Give the lease up so a standby takes over at once."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self.revision is not None and not self.lost.is_set():
            kv = await self._bucket()
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                await kv.purge(self.key)
        self.revision = None
