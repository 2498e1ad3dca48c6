"""Snapshots in a JetStream object store: the ``SnapshotStore`` adapter.

One bucket per prefix (``bb_snapshots``), with the streams' replicas, created
by the first process that saves; a process that only loads (a standby taking
the lead before any snapshot was saved) finds no bucket and gets None,
without needing the right to create one. An object store rather than a
key-value entry: a 100,000-task fold is tens of megabytes, far over a
message, and the object store chunks it (and, on replacing it, purges the old
chunks, which is why the bucket is apart from the blobs: the scheduler may
purge this one and no other).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    ObjectStoreConfig,
    StorageType,
)

from blackboard.log.pull import Puller
from blackboard.log.retry import retry_on

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import TypeVar

    from nats.aio.client import Client as NatsClient
    from nats.js.object_store import ObjectStore

    T = TypeVar("T")

__all__ = ["JetStreamSnapshots"]

_READER_IDLE_S = 10.0
"""The server removes a chunk reader idle this long (readers never delete)."""


class JetStreamSnapshots:
    """``SnapshotStore`` on the object-store bucket ``bucket``.

    Args:
        nc: The process's connection.
        bucket: The bucket's name (``ports.snapshot_bucket``).
        replicas: Replicas of the bucket's stream when it is created.
        patience_s: How long transient trouble is retried before StoreError.
    """

    def __init__(
        self,
        nc: NatsClient,
        bucket: str,
        *,
        replicas: int = 1,
        patience_s: float = 30.0,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.bucket = bucket
        self.replicas = replicas
        self.patience_s = patience_s
        self._obs: ObjectStore | None = None
        self._opening = asyncio.Lock()

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        return await retry_on(self.nc, what, op, self.patience_s)

    async def _bucket(self, create: bool) -> ObjectStore | None:
        """The bucket; created if missing and ``create``, else None if missing."""
        if self._obs is not None:
            return self._obs
        async with self._opening:
            if self._obs is None:
                try:
                    self._obs = await self.js.object_store(self.bucket)
                except nats.js.errors.BucketNotFoundError:
                    if not create:
                        return None
                    self._obs = await self.js.create_object_store(
                        self.bucket,
                        config=ObjectStoreConfig(
                            bucket=self.bucket,
                            replicas=self.replicas,
                            storage=StorageType.FILE,
                        ),
                    )
        return self._obs

    async def load(self, name: str) -> bytes | None:
        """The latest bytes saved under ``name``, or None."""

        async def op() -> bytes | None:
            obs = await self._bucket(create=False)
            if obs is None:
                return None
            try:
                info = await obs.get_info(name)
            except nats.js.errors.NotFoundError:  # none, or deleted
                return None
            if not info.nuid or not info.size:
                return None
            return await self._chunks(info.nuid, info.size, info.digest or "")

        return await self._retry(f"loading {self.bucket}/{name}", op)

    async def _chunks(self, nuid: str, size: int, digest: str) -> bytes:
        """An object's chunks, read raw, checked against its digest.

        nats-py's ``get`` reads them through an ordered push consumer whose
        flow control waits on the client, and appends each to a bytes object,
        copying all before it: 10.7 s for 70 MB. A pull reader (pull.py)
        asks for up to 32 MB at a time.
        """
        stream = f"OBJ_{self.bucket}"
        cfg = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            inactive_threshold=_READER_IDLE_S,
            mem_storage=True,
            num_replicas=1,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=f"$O.{self.bucket}.C.{nuid}",
            name=self.nc._nuid.next().decode(),
        )
        consumer = await self.js.add_consumer(stream, cfg)
        assert consumer.name is not None
        puller = await Puller(self.nc, stream, consumer.name).start()
        parts: list[bytes] = []
        got = 0
        try:
            while got < size:
                for msg in await puller.fetch(1000, timeout=5.0):
                    parts.append(msg.data)
                    got += len(msg.data)
        finally:
            await puller.close()
        data = b"".join(parts)
        want = digest.split("=", 1)[-1]
        have = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        if got != size or have.rstrip("=") != want.rstrip("="):
            raise nats.js.errors.DigestMismatchError
        return data

    async def save(self, name: str, data: bytes) -> None:
        """Replace what ``name`` holds (the old chunks are purged)."""

        async def op() -> None:
            obs = await self._bucket(create=True)
            assert obs is not None
            await obs.put(name, data)

        await self._retry(f"saving {self.bucket}/{name}", op)
