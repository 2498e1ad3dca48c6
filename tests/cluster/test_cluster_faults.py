"""Faults of a 3-node JetStream cluster under a deployment of `bb` processes.

R3 streams and buckets; a scheduler and its standby, three workers and a
projector, each given the three URLs. A node is killed (the one leading the
events stream, or the one leading a lane's work consumer), paused past its
election timeout, or every node is restarted in turn, mid-goal. After each:
every goal done, no task completed twice, no effect performed twice, and the
live projection equal to a rebuild from the log. The work lease is 120 s
(tests/cluster/harness.py), longer than the waits here: the goals end in the
seconds the cluster takes to elect new leaders, not when a lease runs out.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from tests.cluster.harness import LEASE_S
from tests.faults.harness import audit, ledger_lines, wait_all
from tests.faults.test_faults import check, start_goals, until_ledger
from tests.waiting import until_async

if TYPE_CHECKING:
    from blackboard.log.store import JetStreamEventStore
    from tests.cluster.harness import ClusterDeployment

pytestmark = pytest.mark.integration

WAIT_S = 90
"""Each test's wait for its goals: under the lease (120 s)."""
PAUSE_S = 15
"""A paused node's time frozen: past its election timeout (2-4 s, and the
clients' request timeouts), under the lease."""


async def kill_leader_mid_goal(
    d: ClusterDeployment, store: JetStreamEventStore, what: str, fault: str
) -> None:
    goals = await start_goals(d, store)
    await until_ledger(d, 2)
    node = await d.leader_of(store, what)
    killed = time.monotonic()
    d.cluster.kill(node)
    await wait_all(store, goals, timeout=WAIT_S)
    took = time.monotonic() - killed
    # Back, and caught up, before the projection is compared with a rebuild.
    await asyncio.to_thread(d.cluster.restart, node)
    row = await audit(fault, store, goals, d.ledger, deployment=d)
    check(row)
    row.checked = f"goals ended {took:.0f} s after the kill (lease {LEASE_S} s)"


@pytest.mark.timeout(300)
async def test_events_stream_leader_sigkilled_mid_goal(cdeployment, cstore):
    await kill_leader_mid_goal(
        cdeployment, cstore, "events", "cluster: events stream leader SIGKILL"
    )


@pytest.mark.timeout(300)
async def test_lane_consumer_leader_sigkilled_mid_goal(cdeployment, cstore):
    await kill_leader_mid_goal(
        cdeployment, cstore, "local", "cluster: lane consumer leader SIGKILL"
    )


@pytest.mark.timeout(300)
async def test_node_paused_past_its_election_timeout(cdeployment, cstore):
    """SIGSTOP on the node leading the lane's consumer, for PAUSE_S: it keeps its
    sockets and answers nothing, so clients see timeouts, not a closed
    connection, while the others elect new leaders."""
    d = cdeployment
    goals = await start_goals(d, cstore)
    await until_ledger(d, 2)
    node = await d.leader_of(cstore, "local")
    loop = asyncio.get_running_loop()
    resume_at = loop.time() + PAUSE_S
    d.cluster.pause(node)
    try:
        seen = len(ledger_lines(d.ledger))
        # The fleet goes on without it: effects are performed meanwhile.
        await until_async(
            lambda: len(ledger_lines(d.ledger)) > seen,
            timeout_s=45,
            what="an effect performed while a node is paused",
        )
        await asyncio.sleep(max(0.0, resume_at - loop.time()))
    finally:
        d.cluster.resume(node)
    await wait_all(cstore, goals, timeout=WAIT_S)
    row = await audit(
        f"cluster: node SIGSTOP {PAUSE_S} s", cstore, goals, d.ledger, deployment=d
    )
    check(row)
    row.checked = f"{len(goals)} goals ended within the lease ({LEASE_S} s)"


@pytest.mark.timeout(420)
async def test_rolling_restart_of_every_node(cdeployment, cstore):
    """Each node stopped and started again in turn (as a rolling upgrade
    does), a goal submitted before each: the goals span the whole restart."""
    d = cdeployment
    goals = []
    for node in range(3):
        goals += await start_goals(d, cstore)
        await until_ledger(d, len(ledger_lines(d.ledger)) + 2)
        await asyncio.to_thread(d.cluster.restart, node)
    await wait_all(cstore, goals, timeout=WAIT_S)
    row = await audit(
        "cluster: rolling restart of 3 nodes", cstore, goals, d.ledger, deployment=d
    )
    check(row)
    row.checked = f"{len(goals)} goals over 3 restarts, within the lease ({LEASE_S} s)"
