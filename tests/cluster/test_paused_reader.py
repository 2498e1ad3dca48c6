"""A node of a 3-node cluster paused mid-goal, past every timeout.

The node paused is the one that hosts the readers: the events stream's leader,
where the engine's ephemeral R1 consumers live. Before reads knew where the
log ends, a fetch timeout there handed the scheduler and the workers a partial
history (a task failed for good on it), and a follower on the hung node stalled
without a word.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from blackboard.log.events import SideEffectCompleted, TaskCompleted
from blackboard.log.store import JetStreamEventStore, StoreSettings, connect
from blackboard.runtime.inprocess import running
from tests.engine.conftest import engine_settings, events_of, spec, submit
from tests.engine_handlers import HANDLERS
from tests.faults.harness import wait_all
from tests.waiting import until_async

if TYPE_CHECKING:
    from pathlib import Path

    from blackboard.log.server import EmbeddedCluster

pytestmark = pytest.mark.integration

PAUSE_S = 20.0
"""Longer than the lease (2 s), the store's patience (8 s here), the stall
check (2 s) and the clients' ping timeout (~15 s)."""


@pytest.mark.timeout(240)
async def test_goals_end_right_when_the_readers_node_is_paused(
    nats_cluster: EmbeddedCluster, tmp_path: Path
):
    nc = await connect(nats_cluster.url, name="test")
    store = JetStreamEventStore(
        nc, StoreSettings(replicas=3, transient_s=8.0, stall_check_s=2.0)
    )
    await store.ensure()
    settings = engine_settings(backoff_base_s=0.2)
    ledger = tmp_path / "ledger"
    ledger.touch()
    specs = [
        spec(f"t{i}", "slow_effect", seconds=0.4, ledger=str(ledger)) for i in range(8)
    ]
    async with running(store, settings, HANDLERS, concurrency=4):
        goals = [await submit(store, settings, specs) for _ in range(3)]
        # Mid-goal: some effects performed, most still to come. Not while an
        # effect is between its start and its recorded end: paused past the
        # lease there, it may have been performed, and rightly waits for a
        # human (tests/faults/test_tool_faults.py and the approval tests).
        await until_async(lambda: len(ledger.read_text().splitlines()) >= 3)
        inflight = ledger.with_name(ledger.name + ".inflight")
        await until_async(lambda: not any(inflight.iterdir()), what="no effect in flight")
        info = await store.js.stream_info(store.events_stream)
        assert info.cluster is not None and info.cluster.leader
        node = nats_cluster.server_names.index(info.cluster.leader)
        nats_cluster.pause(node)
        await asyncio.sleep(PAUSE_S)
        nats_cluster.resume(node)
        # A goal that does not end fails with its tasks' states.
        ends = await wait_all(store, goals, timeout=150)
    assert [g.status for g in ends] == ["done"] * 3, [g.reason for g in ends]
    for goal_id in goals:
        events = await events_of(store, goal_id)
        done = Counter(e.task_id or "" for e in events if isinstance(e, TaskCompleted))
        assert sorted(done) == sorted(s.task_id for s in specs)
        assert set(done.values()) == {1}  # nothing completed twice
        effects = [e for e in events if isinstance(e, SideEffectCompleted)]
        assert len(effects) == len(specs)
    lines = ledger.read_text().splitlines()
    assert len(lines) == len(set(lines)) == 3 * len(specs)  # performed once each
    await nc.drain()
