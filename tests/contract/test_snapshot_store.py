"""The SnapshotStore contract, written once and run on both adapters.

The JetStream object store (marked integration, on a real nats-server) and
the in-memory twin: nothing before the first save, and a save replaces what
the name held, large (many chunks) or small.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from blackboard.log.ports import EventStore
    from blackboard.log.store import JetStreamEventStore


async def test_nothing_is_there_before_the_first_save(any_store: EventStore):
    assert await any_store.snapshots().load("scheduler") is None


async def test_a_save_replaces_what_the_name_held(any_store: EventStore):
    snaps = any_store.snapshots()
    big = os.urandom(3 * 1024 * 1024 + 17)  # many chunks of the object store
    await snaps.save("scheduler", big)
    assert await snaps.load("scheduler") == big
    await snaps.save("scheduler", b"smaller now")
    assert await snaps.load("scheduler") == b"smaller now"
    await snaps.save("other", b"apart")
    assert await snaps.load("scheduler") == b"smaller now"
    assert await any_store.snapshots().load("other") == b"apart"


@pytest.mark.integration
async def test_the_bucket_keeps_only_the_latest_and_has_the_streams_replicas(
    jetstream_store: JetStreamEventStore,
):
    snaps = jetstream_store.snapshots()
    for i in range(3):
        await snaps.save("scheduler", bytes([i]) * (300 * 1024))
    info = await jetstream_store.js.stream_info("OBJ_bb_snapshots")
    # Chunks of 128 KiB: the latest object's 3 and its metadata, nothing older.
    assert info.state.messages == 4
    assert info.config.num_replicas == jetstream_store.settings.replicas
