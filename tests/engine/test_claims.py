"""Which delivery of a work message may claim a task (real server, real log)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from blackboard.engine.worker import Worker, WorkerSettings
from blackboard.log import codec
from blackboard.log.events import TaskReady
from tests import factories as f

if TYPE_CHECKING:
    from blackboard.log.store import JetStreamEventStore


async def claimed_task(store: JetStreamEventStore) -> tuple[Worker, codec.WorkItem]:
    """A task claimed by the 2nd delivery of work message 7."""
    await store.append(f.goal("G"))
    seq = await store.append(f.created("G", "T"), expect=0)
    ready = TaskReady(event_id="r1", goal_id="G", task_id="T", at=f.at(), actor="s")
    ready_seq = await store.append(ready, expect=seq)
    claim = msgspec.structs.replace(f.claimed("G", "T"), work_seq=7, delivery=2)
    await store.append(claim, expect=ready_seq)
    item = codec.WorkItem(
        goal_id="G",
        task_id="T",
        lane="local",
        task_type="noop",
        dispatch=1,
        ready_seq=ready_seq,
    )
    return Worker(store, WorkerSettings(lane="local")), item


async def test_older_copy_of_a_held_message_leaves_it_alone(store):
    worker, item = await claimed_task(store)
    # A first delivery that sat in a worker's queue: not ours to ack.
    assert await worker._claim(item, work_seq=7, delivered=1) == "theirs"
    assert await worker._claim(item, work_seq=7, delivered=2) == "theirs"


async def test_later_delivery_takes_over_with_the_next_attempt(store):
    worker, item = await claimed_task(store)
    claim = await worker._claim(item, work_seq=7, delivered=3)
    assert not isinstance(claim, str)
    assert claim.attempt == 2


async def test_copy_of_another_work_message_is_stale(store):
    worker, item = await claimed_task(store)
    assert await worker._claim(item, work_seq=8, delivered=1) == "stale"
