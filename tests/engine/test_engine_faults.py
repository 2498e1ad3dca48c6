"""Killed and paused processes: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from blackboard.engine import control as client
from blackboard.log.events import (
    GoalCancelled,
    SideEffectCompleted,
    SideEffectStarted,
    TaskCancelled,
    TaskClaimed,
    TaskCompleted,
    TaskCreated,
    TaskNeedsFollowup,
    TaskReady,
)
from blackboard.runtime.inprocess import running
from tests.engine.conftest import events_of, spec, submit
from tests.engine_handlers import HANDLERS
from tests.waiting import goal_until, until_async

if TYPE_CHECKING:
    from collections.abc import Callable

    from blackboard.log.store import JetStreamEventStore


# Processes and scale need a real server: these run on JetStream only.
pytestmark = pytest.mark.integration


@pytest.fixture
def store(jetstream_store: JetStreamEventStore) -> JetStreamEventStore:
    return jetstream_store


ROOT = Path(__file__).resolve().parents[2]


def bb_process(
    nats_url: str, tmp_path: Path, *args: str, log: str
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BB_")}
    env.update(
        BB_NATS_URL=nats_url,
        BB_LEASE_SECONDS="2",
        BB_LOCK_TTL_SECONDS="2",
        BB_DATA_DIR=str(tmp_path / "bb"),
        PYTHONPATH=str(ROOT),
    )
    with (tmp_path / log).open("wb") as out:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "blackboard.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def worker_process(nats_url: str, tmp_path: Path, log: str) -> subprocess.Popen[bytes]:
    return bb_process(
        nats_url,
        tmp_path,
        "worker",
        "--lane",
        "local",
        "--concurrency",
        "4",
        "--handlers",
        "tests.engine_handlers:HANDLERS",
        log=log,
    )


async def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    await until_async(predicate, timeout_s=timeout)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture
def procs():
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        stop(p)


async def test_sigkilled_worker_task_is_redelivered_and_completes_once(
    store, settings, nats_url, tmp_path, procs
):
    marker = tmp_path / "starts"
    first = worker_process(nats_url, tmp_path, "w1.log")
    procs.append(first)
    async with running(store, settings, HANDLERS, lanes=[]):  # scheduler only
        goal_id = await submit(
            store, settings, [spec("s", "slow", seconds=1.5, marker=str(marker))]
        )
        await wait_for(lambda: marker.exists() and str(first.pid) in marker.read_text())
        first.send_signal(signal.SIGKILL)  # mid-task
        first.wait()
        procs.append(worker_process(nats_url, tmp_path, "w2.log"))
        goal = await client.wait_goal(store, goal_id, timeout_s=60)
    assert goal.status == "done", goal.reason
    events = await events_of(store, goal_id)
    assert sum(isinstance(e, TaskCompleted) for e in events) == 1
    claims = [e for e in events if isinstance(e, TaskClaimed)]
    assert [c.attempt for c in claims] == [1, 2]
    assert claims[0].worker != claims[1].worker
    assert len(marker.read_text().splitlines()) == 2  # started twice, finished once


async def test_paused_worker_wakes_after_lease_and_its_write_is_refused(
    store, settings, nats_url, tmp_path, procs
):
    marker = tmp_path / "starts"
    sleeper = worker_process(nats_url, tmp_path, "paused.log")
    procs.append(sleeper)
    async with running(store, settings, HANDLERS, lanes=[]):
        goal_id = await submit(
            store, settings, [spec("s", "slow", seconds=1.0, marker=str(marker))]
        )
        await wait_for(
            lambda: marker.exists() and str(sleeper.pid) in marker.read_text()
        )
        sleeper.send_signal(signal.SIGSTOP)  # a GC pause, a frozen VM...
        rescuer = worker_process(nats_url, tmp_path, "rescuer.log")
        procs.append(rescuer)
        goal = await client.wait_goal(store, goal_id, timeout_s=60)
        assert goal.status == "done"
        sleeper.send_signal(signal.SIGCONT)  # wakes long after its lease expired
        paused_log = tmp_path / "paused.log"
        await wait_for(
            lambda: "lost the task" in paused_log.read_text()
            or "stopped s" in paused_log.read_text()
        )
    events = await events_of(store, goal_id)
    completions = [e for e in events if isinstance(e, TaskCompleted)]
    assert len(completions) == 1
    assert completions[0].result["pid"] == rescuer.pid
    assert len(events) == len(await events_of(store, goal_id))  # nothing late landed
    text = (tmp_path / "paused.log").read_text()
    assert "lost the task" in text or "stopped s" in text


async def test_scheduler_killed_mid_goal_standby_takes_over_nothing_twice(
    store, settings, nats_url, tmp_path, procs
):
    leader = bb_process(nats_url, tmp_path, "scheduler", log="s1.log")
    procs.append(leader)
    await wait_for(lambda: "leading" in (tmp_path / "s1.log").read_text())
    standby = bb_process(nats_url, tmp_path, "scheduler", log="s2.log")
    procs.append(standby)
    specs = [spec("t0")] + [
        spec(f"t{i}", "echo", "local", f"t{i - 1}") for i in range(1, 60)
    ]
    async with running(store, settings, HANDLERS, lanes=["local"], scheduler=False):
        goal_id = await submit(store, settings, specs)

        await goal_until(
            store,
            goal_id,
            lambda g: sum(t.status == "done" for t in g.tasks.values()) >= 20,
        )
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        goal = await client.wait_goal(store, goal_id, timeout_s=60)
    assert goal.status == "done", goal.reason
    events = await events_of(store, goal_id)
    readies = Counter(
        (e.task_id, e.dispatch) for e in events if isinstance(e, TaskReady)
    )
    assert len(readies) == 60 and max(readies.values()) == 1
    completed = Counter(e.task_id for e in events if isinstance(e, TaskCompleted))
    assert len(completed) == 60 and max(completed.values()) == 1
    assert "leading" in (tmp_path / "s2.log").read_text()


async def test_cancel_mid_flight_across_workers_stops_everything(
    store, settings, nats_url, tmp_path, procs
):
    """After the cancellation is in the log nothing of the goal moves on."""
    ledger = tmp_path / "ledger"
    ledger.touch()
    procs.extend(worker_process(nats_url, tmp_path, f"w{i}.log") for i in range(2))
    specs = [
        spec(f"t{i:02d}", "churn", ledger=str(ledger), seconds=0.3, spawn=i % 3 == 0)
        for i in range(30)
    ]
    async with running(store, settings, HANDLERS, lanes=[]):  # scheduler only
        goal_id = await submit(store, settings, specs)
        # Mid-flight: some effects performed, most tasks still to run.
        await wait_for(lambda: len(ledger.read_text().splitlines()) >= 6)
        before, cancelled_n = await client.cancel(store, goal_id, by="ana")
        goal = await client.wait_goal(store, goal_id, timeout_s=30)
        await asyncio.sleep(2.5)  # let any straggler's late write try to land
    envs = [env async for env in store.read_goal(goal_id)]
    cut = next(e.seq for e in envs if isinstance(e.event, GoalCancelled))
    after = [e.event for e in envs if e.seq > cut]
    moved_on = (TaskReady, TaskClaimed, SideEffectStarted, SideEffectCompleted,
                TaskCreated, TaskCompleted, TaskNeedsFollowup)
    assert [type(e).__name__ for e in after if isinstance(e, moved_on)] == []
    assert goal.status == "cancelled"
    open_before = [t for t in before.tasks.values()
                   if t.status not in ("done", "failed", "cancelled")]
    assert 0 < cancelled_n == len(open_before)
    # Every open task was fenced in the same atomic batch as the goal.
    fenced = [e.event.task_id or "" for e in envs
              if isinstance(e.event, TaskCancelled) and e.seq <= cut + cancelled_n]
    assert sorted(fenced) == sorted(t.task_id for t in open_before)
    assert all(t.status in ("done", "cancelled") for t in goal.tasks.values()), [
        (t.task_id, t.status, t.error) for t in goal.tasks.values()
        if t.status not in ("done", "cancelled")
    ]
    # Effects: every one performed was recorded as started before the cut.
    started = {e.event.task_id for e in envs
               if isinstance(e.event, SideEffectStarted) and e.seq < cut}
    performed = ledger.read_text().split()
    assert set(performed) <= started
    assert len(performed) == len(set(performed))  # none doubled
    logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(2))
    assert "goal_cancelled" in logs or "its task was cancelled" in logs


async def test_core_subscribers_see_exactly_what_the_stream_stored(
    store, settings, nats_url, tmp_path, procs
):
    """A plain NATS subscriber on bb.evt.> and a stream reader agree, message for
    message, through refused writes: a paused worker's late completion and
    guarded writes that lose their race."""
    import nats

    from blackboard import ids
    from blackboard.errors import ConcurrencyConflict

    seen: list[tuple[str, str]] = []

    async def got(msg) -> None:
        seen.append((msg.subject, msg.headers["Nats-Msg-Id"]))

    outsider = await nats.connect(nats_url)  # any service, not our code
    await outsider.subscribe("bb.evt.>", cb=got)
    await outsider.flush()
    first = await store.events_last_seq() + 1
    marker = tmp_path / "starts"
    sleeper = worker_process(nats_url, tmp_path, "paused.log")
    procs.append(sleeper)
    async with running(store, settings, HANDLERS, lanes=[]):
        goal_id = await submit(
            store, settings, [spec("s", "slow", seconds=1.0, marker=str(marker))]
        )
        await wait_for(lambda: marker.exists() and str(sleeper.pid) in marker.read_text())
        sleeper.send_signal(signal.SIGSTOP)
        procs.append(worker_process(nats_url, tmp_path, "rescuer.log"))
        goal = await client.wait_goal(store, goal_id, timeout_s=60)
        sleeper.send_signal(signal.SIGCONT)  # its completion will be refused
        await wait_for(
            lambda: "lost the task" in (tmp_path / "paused.log").read_text()
            or "stopped s" in (tmp_path / "paused.log").read_text()
        )
    assert goal.status == "done"
    # Writers racing on one task: one wins, the others are refused.
    from tests import factories as f

    other = ids.new_id()
    await store.append(f.goal(other))
    created = await store.append(f.created(other, "t"))
    refused = 0
    for i in range(5):
        try:
            await store.append(f.claimed(other, "t", worker=f"w{i}"), expect=created)
        except ConcurrencyConflict:
            refused += 1
    assert refused == 4
    last = await store.events_last_seq()
    stored = [
        (env.subject, env.event.event_id)
        async for env in store.read(from_seq=first)
        if env.seq <= last
    ]
    await wait_for(lambda: len(seen) >= len(stored), timeout=10)
    await asyncio.sleep(0.5)  # anything extra would arrive by now
    await outsider.close()
    assert seen == stored
    completions = [s for s in seen if s[0].endswith(".s.task_completed")]
    assert len(completions) == 1
