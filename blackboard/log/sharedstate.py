"""The fleet's shared state in a JetStream key-value bucket.

The JetStream adapter of the ``SharedState`` port (ports.py): one bucket per
prefix (``bb_limits``), history 1 (only the latest value matters), with the
streams' replicas, created by the first process that writes. Reads of a
bucket nobody created yet find nothing, so a reader (``bb status``) never
needs the right to create it. ``create`` and ``update`` are JetStream's
expected-last-subject-sequence on the key's subject, exactly as nats-py's
``KeyValue`` does them; a lost race is StateConflict.

Transient trouble is retried as the store retries it, with a shorter
patience: the callers (a rate limiter, a breaker, in front of every model
call) would rather fall back than wait the log's 30 s.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType

from blackboard.errors import StateConflict
from blackboard.log.ports import Versioned
from blackboard.log.retry import retry_on

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import TypeVar

    from nats.aio.client import Client as NatsClient
    from nats.js.kv import KeyValue

    T = TypeVar("T")

__all__ = ["JetStreamSharedState"]

_WRONG_LAST = frozenset({10071, 10164})
"""JetStream's "wrong last sequence" codes: the compare-and-set lost."""


class JetStreamSharedState:
    """``SharedState`` on the key-value bucket ``bucket``.

    Args:
        nc: The process's connection.
        bucket: The bucket's name (``ports.limits_bucket``).
        replicas: Replicas of the bucket's stream when it is created.
        patience_s: How long transient trouble is retried before
            LogUnavailable.
    """

    def __init__(
        self, nc: NatsClient, bucket: str, *, replicas: int = 1, patience_s: float = 5.0
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.bucket = bucket
        self.replicas = replicas
        self.patience_s = patience_s
        self._kv: KeyValue | None = None
        self._opening = asyncio.Lock()

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        return await retry_on(self.nc, what, op, self.patience_s)

    async def _bucket(self, create: bool) -> KeyValue | None:
        """The bucket; created if missing and ``create``, else None if missing."""
        if self._kv is not None:
            return self._kv
        async with self._opening:
            if self._kv is None:
                try:
                    self._kv = await self.js.key_value(self.bucket)
                except nats.js.errors.BucketNotFoundError:
                    if not create:
                        return None
                    # Created by whoever writes first; a second creation with
                    # the same configuration changes nothing.
                    self._kv = await self.js.create_key_value(
                        KeyValueConfig(
                            bucket=self.bucket,
                            history=1,
                            replicas=self.replicas,
                            # Gets answered by any replica, without the
                            # leader's round trip: one is in front of
                            # every model call.
                            direct=True,
                            storage=StorageType.FILE,
                        )
                    )
        return self._kv

    async def get(self, key: str) -> Versioned | None:
        """The key's value and revision, or None if it was never written."""

        async def op() -> Versioned | None:
            kv = await self._bucket(create=False)
            if kv is None:
                return None
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                return None
            return Versioned(entry.value or b"", int(entry.revision or 0))

        return await self._retry(f"reading {self.bucket}/{key}", op)

    async def create(self, key: str, value: bytes) -> int:
        """Write a new key; StateConflict if it exists."""
        return await self._write(key, value, 0)

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Write the key if it is still at revision ``last``."""
        return await self._write(key, value, last)

    async def _write(self, key: str, value: bytes, last: int) -> int:
        async def op() -> int:
            kv = await self._bucket(create=True)
            assert kv is not None
            # update(last=0) is a create: the key must have no message yet.
            try:
                return int(await kv.update(key, value, last=last))
            except nats.js.errors.APIError as e:
                # nats-py turns 10071 into KeyWrongLastSequenceError (which
                # has no err_code); 10164 is the same refusal.
                if isinstance(e, nats.js.errors.KeyWrongLastSequenceError) or (
                    getattr(e, "err_code", None) in _WRONG_LAST
                ):
                    raise StateConflict(key, last) from e
                raise

        # A write retried after a timeout that had in fact landed loses its
        # own race (the revision moved): the caller reads again and finds it.
        return await self._retry(f"writing {self.bucket}/{key}", op)
