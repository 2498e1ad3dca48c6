"""Scheduler partitions: each goal scheduled by the one partition it hashes to.

With ``[engine] partitions = 2`` two schedulers run, each with its own lock
and snapshot, each folding only its goals' events: on JetStream they read a
stream the server fills with the events under their partition (the server,
not the client, leaves the others' events out), on the twins the log itself.
Every goal ends done either way, each in the fold of its own partition only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest

from blackboard import ids
from blackboard.engine import control as client
from blackboard.engine import snapshot
from blackboard.engine import submission as service
from blackboard.engine.decide import Policy
from blackboard.errors import ConfigError
from blackboard.log.memory import MemoryEventStore
from blackboard.log.ports import Share, partitions_stream
from blackboard.log.subjects import partition_of
from blackboard.runtime import config
from blackboard.runtime.inprocess import running, shares
from tests.engine.conftest import spec
from tests.engine_handlers import HANDLERS

if TYPE_CHECKING:
    from blackboard.log.events import TaskSpec
    from blackboard.log.ports import EventStore
    from blackboard.log.store import JetStreamEventStore


def _chain(n: int) -> list[TaskSpec]:
    return [spec("t0")] + [
        spec(f"t{i}", "echo", "local", f"t{i - 1}") for i in range(1, n)
    ]


async def _submit_in(
    store: EventStore, settings: config.Settings, partition: int, n: int = 4
) -> str:
    event = service.goal_submitted(
        settings,
        f"goal of partition {partition}",
        specs=_chain(n),
        submitted_by="test",
        goal_id=service.goal_id_in(partition, settings.engine.partitions),
    )
    await store.append(event)
    return event.goal_id


async def _run_both(
    store: EventStore, settings: config.Settings
) -> dict[int, set[str]]:
    """Run 3 goals per partition of 2 to done; each partition's fold's goals."""
    settings.engine.partitions = 2
    async with running(store, settings, HANDLERS, concurrency=8) as stack:
        assert [s.share.name for s in stack.schedulers] == [
            "scheduler-0-of-2",
            "scheduler-1-of-2",
        ]
        goals = {
            p: {await _submit_in(store, settings, p) for _ in range(3)} for p in (0, 1)
        }
        for goal_id in goals[0] | goals[1]:
            goal = await client.wait_goal(store, goal_id, timeout_s=60)
            assert goal.status == "done", goal.reason
        await asyncio.sleep(0.3)
        for p, sched in enumerate(stack.schedulers):
            assert sched.leading.is_set()
            folded = set(sched.state.goals) | set(sched.state.retired)
            # Its own goals, all of them, and no other partition's.
            assert folded == goals[p], (p, folded, goals)
    return goals


async def test_on_the_twins_each_partition_schedules_its_own_goals(
    settings: config.Settings,
):
    await _run_both(MemoryEventStore(), settings)


@pytest.mark.integration
async def test_on_jetstream_each_partition_reads_only_its_goals(
    jetstream_store: JetStreamEventStore, settings: config.Settings
):
    store = jetstream_store
    goals = await _run_both(store, settings)
    # The partitions stream holds every event, each under its goal's
    # partition, with the events stream's own sequence in its header.
    name = partitions_stream(store.events_stream, 2)
    info = await store.js.stream_info(name)
    assert info.state.messages == await store.events_last_seq()
    read, positions = 0, []
    for p in (0, 1):
        share = Share(p, 2)
        envs = [env async for env in store.read_share(share)]
        assert {env.event.goal_id for env in envs} == goals[p]
        read += len(envs)
        positions.append(share.position)
        # What it read is the log's own events, at the log's own sequences.
        for env in envs[:: max(1, len(envs) // 10)]:
            there = await store.get(env.seq)
            assert there is not None and there.event == env.event
    assert read == info.state.messages  # each event in one partition, once
    assert max(positions) == info.state.last_seq


@pytest.mark.integration
async def test_partition_snapshots_are_saved_and_restored_apart(
    jetstream_store: JetStreamEventStore,
    settings: config.Settings,
    caplog: pytest.LogCaptureFixture,
):
    store = jetstream_store
    settings.engine.snapshot_every = 10
    await _run_both(store, settings)
    saved = {}
    for p in (0, 1):
        data = await store.snapshots().load(f"scheduler-{p}-of-2")
        assert data is not None, p
        saved[p] = snapshot.decode(data)
        # The position is the partitions stream's, behind the log's sequence.
        assert 0 < saved[p].position <= saved[p].last_seq
    caplog.set_level(logging.INFO, logger="blackboard.scheduler")
    async with running(store, settings, HANDLERS, lanes=[]) as stack:
        for sched in stack.schedulers:
            await asyncio.wait_for(sched.leading.wait(), 10)
        await asyncio.sleep(0.3)
        restored = [s.share.position for s in stack.schedulers]
    for p in (0, 1):
        assert f"fold restored at sequence {saved[p].last_seq}" in caplog.text
        assert restored[p] >= saved[p].position


def test_windows_and_quotas_are_shared_out_between_partitions():
    policy = Policy(windows={"local": 10, "frontier": 1, "open": 0}, quotas={"a": 5})
    parts = [policy.split(i, 3) for i in range(3)]
    assert [p.window("local") for p in parts] == [4, 3, 3]  # adds up to 10
    assert [p.window("frontier") for p in parts] == [1, 1, 1]  # never 0
    assert [p.window("open") for p in parts] == [0, 0, 0]  # none stays none
    assert [p.quotas["a"] for p in parts] == [2, 2, 1]
    assert [p.window("other") for p in parts] == [22, 21, 21]  # the default 64
    assert policy.split(0, 1) is policy


def test_a_goal_partition_is_a_stable_function_of_its_id():
    assert partition_of("g1", 2) == partition_of("g1", 2)
    assert {partition_of(ids.new_id(), 4) for _ in range(200)} == {0, 1, 2, 3}
    assert [s.name for s in shares(config.load(env={}, path=None))] == ["scheduler"]


def test_bad_partition_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="partitions = 0"):
        config.load(env={"BB_PARTITIONS": "0"}, path=None)
    with pytest.raises(ConfigError, match="BB_PARTITIONS='two'"):
        config.load(env={"BB_PARTITIONS": "two"}, path=None)
    s = config.load(env={"BB_PARTITIONS": "2"}, path=None)
    with pytest.raises(ValueError, match="give 0 to 1"):
        shares(s, 2)
    assert [x.name for x in shares(s, 1)] == ["scheduler-1-of-2"]
    rated = tmp_path / "bb.toml"
    rated.write_text(
        "[engine]\npartitions = 2\n[tenants.acme]\ntokens_per_minute = 10\n"
    )
    with pytest.raises(ConfigError, match=r"tenants.acme.*cannot be used"):
        config.load(rated, env={})


@pytest.mark.integration
async def test_the_server_puts_each_goal_in_the_partition_we_compute(
    jetstream_store: JetStreamEventStore,
):
    """``partition_of`` is nats-server's ``{{partition(n,1)}}``, id for id."""
    store = jetstream_store
    await store.ensure_share(Share(0, 5))
    goal_ids = [ids.new_id() for _ in range(150)] + ["g", "a-b_c", "Z" * 64]
    for goal_id in goal_ids:
        await store.js.publish(store.subjects.event_in(goal_id, None, "x"), b"{}")
    name = partitions_stream(store.events_stream, 5)
    await store.ensure_share(Share(0, 5))  # waits for the copy to catch up
    for n, goal_id in enumerate(goal_ids, 1):
        msg = await store.js.get_msg(name, n)
        assert msg.subject == f"bb.part.{partition_of(goal_id, 5)}.{goal_id}._.x"


@pytest.mark.integration
def test_the_cli_refuses_a_partition_out_of_range(cli_env):
    from tests.e2e.test_cli_basics import bb

    r = bb(["scheduler", "--partition", "5"], dict(cli_env, BB_PARTITIONS="2"))
    assert r.returncode == 2
    assert "partitions = 2, so give" in r.stderr and "Traceback" not in r.stderr
    r = bb(["scheduler"], dict(cli_env, BB_PARTITIONS="x"))
    assert r.returncode == 2
    assert r.stderr.strip() == "bb: error: BB_PARTITIONS='x': give a whole number"


@pytest.mark.integration
async def test_a_stray_message_last_in_the_log_is_not_waited_for(
    jetstream_store: JetStreamEventStore, caplog: pytest.LogCaptureFixture
):
    """A message on a subject the copy leaves out (a one-token ``bb.in.evt.x``)
    as the log's last is no end for a partition's leader to wait for."""
    store = jetstream_store
    await store.append(
        service.goal_submitted(config.load(env={}, path=None), "g", submitted_by="t")
    )
    await store.js.publish("bb.in.evt.stray", b"not an event")
    caplog.set_level(logging.WARNING, logger="blackboard.store")
    await store.ensure_share(Share(0, 2))
    assert "reading it as it is" not in caplog.text


@pytest.mark.integration
async def test_a_partitions_stream_of_another_shape_stops_the_scheduler(
    jetstream_store: JetStreamEventStore, settings: config.Settings
):
    """Drift is reported once, not retried as if the log were away."""
    from nats.js.api import StreamConfig

    from blackboard.errors import ComponentFailed

    store = jetstream_store
    name = partitions_stream(store.events_stream, 2)
    await store.js.add_stream(StreamConfig(name=name, subjects=["elsewhere.>"]))
    settings.engine.partitions = 2
    with pytest.raises(ComponentFailed, match=f"{name} exists with a different"):
        async with running(store, settings, HANDLERS, lanes=[]) as stack:
            await asyncio.wait_for(stack.stop.wait(), 30)
