"""Two scheduler partitions as separate processes; one partition's leader dies.

``BB_PARTITIONS=2``: partition 0 has a leader and a standby (``bb scheduler
--partition 0``, twice), partition 1 a leader. Partition 0's leader is
SIGKILLed mid-goal with its standby paused, so partition 0 has no scheduler
at all: partition 1's goal still runs to done meanwhile, while partition 0's
waits. The standby then resumes, takes the lead from partition 0's snapshot,
and every goal ends done, nothing lost or doubled, the projection equal to a
rebuild.
"""

from __future__ import annotations

import itertools
import re
import signal
from typing import TYPE_CHECKING

import msgspec
import pytest

from blackboard.engine import control as client
from blackboard.engine import submission as service
from tests.faults.harness import (
    Deployment,
    audit,
    effect_goal,
    ledger_lines,
    running,
)
from tests.waiting import until_async

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from blackboard.log.events import TaskSpec
    from blackboard.log.store import JetStreamEventStore

pytestmark = pytest.mark.integration


class Partitioned(Deployment):
    """The fault deployment with two scheduler partitions."""

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "BB_PARTITIONS": "2"}

    def start_processes(self) -> None:
        self.start("p0-leader", "scheduler", "--partition", "0")
        self.wait(lambda: "leading" in self.log("p0-leader"))
        self.start("p0-standby", "scheduler", "--partition", "0")
        self.start("p1-leader", "scheduler", "--partition", "1")
        self.wait(lambda: "leading" in self.log("p1-leader"))
        self.start_local_workers()
        self.start("projector", "projector", "--db", str(self.db))


def _chain(specs: list[TaskSpec]) -> list[TaskSpec]:
    """The tasks one after the other: each needs the scheduler to go out."""
    return [specs[0]] + [
        msgspec.structs.replace(s, depends_on=(prev.task_id,))
        for prev, s in itertools.pairwise(specs)
    ]


@pytest.fixture
def partitioned(tmp_path: Path) -> Iterator[Partitioned]:
    with running(Partitioned(tmp_path)) as d:
        yield d


@pytest.fixture
async def pstore(partitioned: Partitioned) -> AsyncIterator[JetStreamEventStore]:
    async for s in partitioned.store():
        yield s


async def test_one_partition_leader_sigkilled_the_other_goes_on(
    partitioned: Partitioned, pstore: JetStreamEventStore
):
    d, store = partitioned, pstore
    s = d.settings()
    goals = []
    for p in (0, 1):
        event = service.goal_submitted(
            s,
            f"effects of partition {p}",
            specs=_chain(effect_goal(d.ledger.with_name(f"ledger-{p}"), 10, 0.3))
            if p == 0
            else effect_goal(d.ledger.with_name(f"ledger-{p}"), n=10, seconds=0.3),
            submitted_by="faults",
            goal_id=service.goal_id_in(p, 2),
        )
        (d.ledger.with_name(f"ledger-{p}")).touch()
        await store.append(event)
        goals.append(event.goal_id)
    ledger0 = d.ledger.with_name("ledger-0")
    await until_async(
        lambda: len(ledger_lines(ledger0)) >= 2, what="partition 0 under way"
    )
    d.signal("p0-standby", signal.SIGSTOP)
    d.signal("p0-leader", signal.SIGKILL)
    # Partition 0 has no scheduler now; partition 1 is not held up by it.
    other = await client.wait_goal(store, goals[1], timeout_s=60)
    assert other.status == "done", other.reason
    stalled = await client.goal_state(store, goals[0])
    assert stalled.status == "running"
    left = sum(t.status != "done" for t in stalled.tasks.values())
    d.signal("p0-standby", signal.SIGCONT)
    first = await client.wait_goal(store, goals[0], timeout_s=60)
    assert first.status == "done", first.reason
    standby = d.log("p0-standby")
    assert "leading (partition 0 of 2)" in standby
    restored = re.search(r"fold restored at sequence (\d+)", standby)
    assert d.log("p1-leader").count(": leading") == 1  # never interrupted
    rows = []
    for p, ledger in ((0, ledger0), (1, d.ledger.with_name("ledger-1"))):
        rows.append(
            await audit(
                f"partition {p} of 2{' (its leader SIGKILLed)' if p == 0 else ''}",
                store,
                [goals[p]],
                ledger,
                deployment=d if p == 1 else None,
            )
        )
    rows[0].checked = (
        "partition 1's goal finished while partition 0 had no scheduler"
        f" (its chain of 10 waited with {left} tasks not done); the standby took over"
        + (f" from a snapshot at seq {restored[1]}" if restored else "")
    )
    for row in rows:
        assert row.problems == []
        assert (row.lost, row.doubled) == (0, 0)
