"""The fault suite's deployment of real `bb` processes, on a 3-node cluster.

As tests/faults/harness.py's, with R3 streams and buckets on an embedded
3-node nats-server cluster on loopback, every process given the three URLs.
The work lease is long (120 s) on purpose: a fault whose recovery waited for
a lease to run out (a nak lost with a dead consumer leader, an outcome left
unacked) cannot end its goals within the tests' waits, so the tests show that
a node's loss costs the cluster's seconds, not a lease.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import nats.errors

from blackboard.errors import StoreError
from blackboard.log.server import EmbeddedCluster
from blackboard.log.store import JetStreamEventStore, StoreSettings, connect
from tests.faults.harness import Deployment

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

LEASE_S = 120
"""The work lease: longer than any test's wait for its goals."""


class ClusterDeployment(Deployment):
    """Schedulers, workers and a projector on a 3-node JetStream cluster."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.cluster = EmbeddedCluster(tmp / "nats-cluster")
        # Deployment.down stops it as it would stop one server.
        self.server = self.cluster  # type: ignore[assignment]

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        env.update(
            BB_NATS_URL=self.cluster.url,
            BB_NATS_REPLICAS="3",
            BB_LEASE_SECONDS=str(LEASE_S),
            # The scheduler's lock: a standby takes over in seconds if the
            # leader's renewals fail while the lock bucket elects a leader.
            BB_LOCK_TTL_SECONDS="4",
        )
        return env

    def up(self) -> None:
        """As Deployment.up, once the cluster has its R3 streams.

        Creating an R3 stream waits for its first leader, and a split vote
        costs another election timeout past the JetStream API's 5 s: the
        streams are made here, retried, so no process starts on a half-made
        cluster.
        """
        self.cluster.start()
        asyncio.run(self._ensure())
        self.start_processes()

    async def _ensure(self) -> None:
        nc = await connect(self.cluster.url, name="fault-setup")
        try:
            store = JetStreamEventStore(nc, self._store_settings())
            await eventually(store.ensure, attempt_s=20, timeout_s=60)
        finally:
            await nc.close()

    def _store_settings(self) -> StoreSettings:
        return StoreSettings(replicas=3)

    async def store(self) -> AsyncIterator[JetStreamEventStore]:
        nc = await connect(self.cluster.url, name="fault-test")
        try:
            s = JetStreamEventStore(nc, self._store_settings())
            await eventually(s.ensure, attempt_s=20, timeout_s=60)
            yield s
        finally:
            await nc.drain()

    async def leader_of(self, store: JetStreamEventStore, what: str) -> int:
        """The index of the node leading ``what``: "events", "work" or a lane.

        A lane is its work consumer, ``bb-<lane>`` on the work stream.
        """
        if what in ("events", "work"):
            stream = store.events_stream if what == "events" else store.work_stream
            cluster = (await store.js.stream_info(stream)).cluster
        else:
            info = await store.js.consumer_info(store.work_stream, f"bb-{what}")
            cluster = info.cluster
        assert cluster is not None and cluster.leader, f"{what} has no leader"
        return self.cluster.server_names.index(cluster.leader)


async def eventually(
    attempt: Callable[[], Awaitable[Any]], *, attempt_s: float, timeout_s: float
) -> Any:
    """The result of the first attempt that neither times out nor fails."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await asyncio.wait_for(attempt(), attempt_s)
        except (nats.errors.Error, StoreError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
