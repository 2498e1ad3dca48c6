"""``bb bench fairness``: how the fleet is shared, measured on separate processes.

A nats-server, one scheduler and worker processes (``bb worker --lane local
--handlers blackboard.tools.bench_fairness:HANDLERS``) run on this machine;
tasks sleep a fixed time. Three figures, each read from the log:

- **urgent**: a 20-task high-priority goal, alone and then submitted into a
  lane saturated by a background goal; its wall time loaded over idle.
- **tenants**: two tenants of weights 2 and 1 each submit more than the lane
  can take; their shares of the tasks dispatched while both still had work
  waiting.
- **aging**: a priority-0 task submitted into a lane that priority-1 goals
  keep arriving at faster than it drains. Without aging it would never run.
  With it, only priority-1 work that became ready before ``t + aging_s`` goes
  first (how many that became ready later went first: the rule says none), so
  it waits about ``(backlog at t + arrivals in aging_s) / lane throughput``:
  the bench reports that prediction beside the wait it measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from blackboard.engine import control as client
from blackboard.engine import submission as service
from blackboard.errors import BlackboardError, StoreError
from blackboard.log.events import (
    GoalSubmitted,
    TaskClaimed,
    TaskCreated,
    TaskReady,
    TaskSpec,
)
from blackboard.log.server import EmbeddedCluster, EmbeddedServer
from blackboard.log.store import JetStreamEventStore, StoreSettings, connect
from blackboard.runtime import config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from blackboard.engine.context import TaskContext


async def _sleep(ctx: TaskContext) -> object:
    """Work that takes ``ms`` milliseconds of a worker slot."""
    ms = float((await ctx.payload()).get("ms", 100))
    await asyncio.sleep(ms / 1000)
    return {"ms": ms}


HANDLERS = {"bench_sleep": _sleep}


class Fleet:
    """A scheduler and worker processes on a private nats-server."""

    def __init__(
        self,
        tmp: Path,
        *,
        workers: int,
        concurrency: int,
        window: int,
        aging_s: float,
        weights: dict[str, float],
        nodes: int = 1,
        partitions: int = 1,
    ) -> None:
        self.tmp = tmp
        self.nodes = nodes
        self.partitions = partitions
        # One node, or a cluster on loopback with R3 streams and buckets.
        self.server: EmbeddedServer | EmbeddedCluster = (
            EmbeddedServer(tmp / "nats")
            if nodes == 1
            else EmbeddedCluster(tmp / "nats-cluster", size=nodes)
        )
        self.workers = workers
        self.concurrency = concurrency
        self.procs: list[subprocess.Popen[bytes]] = []
        tenants = "".join(
            f"[tenants.{name}]\nweight = {weight}\n" for name, weight in weights.items()
        )
        self.config = tmp / "bb.toml"
        self.config.write_text(
            f"[lanes.local]\nwindow = {window}\nconcurrency = {concurrency}\n"
            f"[engine]\naging_s = {aging_s}\nlease_s = 60\n"
            f"partitions = {partitions}\n{tenants}"
        )

    @property
    def env(self) -> dict[str, str]:
        """Every process's: the private server, scripted, the bench's config."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BB_")}
        env.update(
            BB_NATS_URL=self.server.url,
            BB_NATS_REPLICAS=str(self.nodes),
            BB_SCRIPTED="1",
            BB_CONFIG=str(self.config),
            BB_DATA_DIR=str(self.tmp / "bb"),
            PYTHONUNBUFFERED="1",
        )
        return env

    def settings(self) -> config.Settings:
        """The fleet's settings, as its processes read them."""
        return config.load(env=self.env, path=None)

    def _start(self, name: str, *args: str) -> None:
        with (self.tmp / f"{name}.log").open("ab") as out:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "blackboard.cli", *args],
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )

    def up(self) -> None:
        """Start the server, the scheduler and the workers."""
        self.server.start()
        if self.partitions == 1:
            self._start("scheduler", "scheduler")
        else:  # one process per partition: the first ``partitions`` of procs
            for i in range(self.partitions):
                self._start(f"scheduler-{i}", "scheduler", "--partition", str(i))
        for n in range(self.workers):
            self._start(
                f"worker-{n}",
                "worker",
                "--lane",
                "local",
                "--concurrency",
                str(self.concurrency),
                "--handlers",
                "blackboard.tools.bench_fairness:HANDLERS",
            )

    def down(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL), then the server."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.server.stop()

    @contextlib.asynccontextmanager
    async def store(self) -> AsyncIterator[JetStreamEventStore]:
        """A connection of the bench's own."""
        nc = await connect(self.server.url, name="bb-bench-fairness")
        try:
            store = JetStreamEventStore(nc, StoreSettings(replicas=self.nodes))
            # A new R3 stream waits for its first leader, a split vote for a
            # second election: past the API's timeout, so try again.
            for attempt in range(6):
                try:
                    await store.ensure()
                    break
                except StoreError:
                    if attempt == 5:
                        raise
                    await asyncio.sleep(1)
            yield store
        finally:
            await nc.drain()


def _tasks(prefix: str, n: int, ms: float) -> list[TaskSpec]:
    return [
        TaskSpec(
            task_id=f"{prefix}{i}", type="bench_sleep", lane="local", payload={"ms": ms}
        )
        for i in range(n)
    ]


async def _submit(
    store: JetStreamEventStore,
    settings: config.Settings,
    specs: list[TaskSpec],
    **kw: Any,
) -> GoalSubmitted:
    event = service.goal_submitted(
        settings,
        "bench: fairness",
        specs=specs,
        submitted_by="bench",
        overrides={"max_tasks": len(specs) + 10},
        **kw,
    )
    await store.append(event)
    return event


async def _timed_goal(
    store: JetStreamEventStore, settings: config.Settings, specs: list[TaskSpec]
) -> float:
    t0 = time.perf_counter()
    event = await _submit(store, settings, specs, priority=10)
    goal = await client.wait_goal(
        store, event.goal_id, timeout_s=600, goal_level_only=True
    )
    if goal.status != "done":
        raise RuntimeError(f"bench goal ended {goal.status}: {goal.reason}")
    return time.perf_counter() - t0


async def _saturated(store: JetStreamEventStore, goal_id: str, window: int) -> None:
    """Until the lane's window is full of the goal's work."""
    for _ in range(600):
        goal = await client.goal_state(store, goal_id)
        if sum(t.status in ("ready", "claimed") for t in goal.tasks.values()) >= window:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the background goal never filled the lane's window")


async def _cancel(store: JetStreamEventStore, goal_id: str) -> None:
    """Stop a goal the bench no longer needs (one already ended is left)."""
    with contextlib.suppress(BlackboardError):
        await client.cancel(store, goal_id, reason="bench done", by="bench")


async def urgent(
    fleet: Fleet, store: JetStreamEventStore, window: int, background: int, ms: float
) -> dict[str, Any]:
    """(a) An urgent 20-task goal, idle and into a saturated lane."""
    s = fleet.settings()
    await _timed_goal(store, s, _tasks("w", 20, ms))  # warm: imports, consumers
    idle = await _timed_goal(store, s, _tasks("u", 20, ms))
    bg = await _submit(store, s, _tasks("b", background, ms))
    await _saturated(store, bg.goal_id, window or fleet.workers * fleet.concurrency)
    loaded = await _timed_goal(store, s, _tasks("u", 20, ms))
    await _cancel(store, bg.goal_id)
    await client.wait_goal(store, bg.goal_id, timeout_s=120, goal_level_only=True)
    return {
        "idle_s": round(idle, 3),
        "loaded_s": round(loaded, 3),
        "ratio": round(loaded / idle, 2),
        "background_tasks": background,
    }


async def tenants(
    fleet: Fleet, store: JetStreamEventStore, per_tenant: int, ms: float
) -> dict[str, Any]:
    """(b) Tenants of weights 2 and 1, both saturating the lane."""
    s = fleet.settings()
    goals = {
        name: await _submit(store, s, _tasks(name, per_tenant, ms), tenant=name)
        for name in ("big", "small")
    }
    for g in goals.values():
        await client.wait_goal(store, g.goal_id, timeout_s=600, goal_level_only=True)
    tenant_of = {g.goal_id: name for name, g in goals.items()}
    ready = [
        tenant_of[env.event.goal_id]
        async for env in store.read()
        if isinstance(env.event, TaskReady) and env.event.goal_id in tenant_of
    ]
    # From the first dispatch of the later tenant (before it, only the other
    # had work), the next per_tenant dispatches: at 2:1 neither runs out of
    # waiting work within them.
    start = max(ready.index(name) for name in ("big", "small"))
    shares = Counter(ready[start : start + per_tenant])
    total = shares["big"] + shares["small"]
    return {
        "weights": {"big": 2, "small": 1},
        "dispatched_while_both_waiting": dict(shares),
        "measured_from_dispatch": start,
        "big_share": round(shares["big"] / total, 3),
        "target_share": round(2 / 3, 3),
    }


async def aging(
    fleet: Fleet,
    store: JetStreamEventStore,
    aging_s: float,
    ms: float,
    seconds: float,
) -> dict[str, Any]:
    """(c) A priority-0 task into a lane that priority-1 work keeps arriving at."""
    s = fleet.settings()
    capacity = fleet.workers * fleet.concurrency / (ms / 1000)  # tasks/s
    per_goal = max(1, round(capacity * 0.25 * 1.3))  # every 0.25 s: 130% of it
    stream: list[str] = []

    async def keep_arriving(stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            g = await _submit(store, s, _tasks(f"h{n}-", per_goal, ms), priority=1)
            stream.append(g.goal_id)
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)

    stop = asyncio.Event()
    feeder = asyncio.create_task(keep_arriving(stop))
    await asyncio.sleep(1.0)  # the lane saturated, a backlog growing
    low = await _submit(store, s, _tasks("low", 1, ms), priority=0)
    started = await client.wait_goal(
        store, low.goal_id, timeout_s=600, goal_level_only=True
    )
    await asyncio.sleep(max(0.0, seconds - 1.0))
    stop.set()
    await feeder
    for g in stream:
        await _cancel(store, g)
    created: dict[tuple[str, str], Any] = {}
    ready_at: dict[tuple[str, str], Any] = {}
    order: list[tuple[str, str]] = []
    low_claimed = None
    async for env in store.read():
        e = env.event
        if e.task_id is None:
            continue
        key = (e.goal_id, e.task_id)
        if isinstance(e, TaskCreated):
            created[key] = e.at
        elif isinstance(e, TaskReady):
            order.append(key)
            ready_at[key] = e.at
        elif isinstance(e, TaskClaimed) and e.goal_id == low.goal_id:
            low_claimed = e.at
    low_key = (low.goal_id, "low0")
    t_low = created[low_key]
    high = [k for k in created if k[0] in stream]
    # Ahead of it by the rule: priority-1 work that became ready before
    # t_low + aging_s. Waiting at its arrival, plus what came in that time.
    backlog = sum(
        1
        for k in high
        if created[k] <= t_low and (k not in ready_at or ready_at[k] > t_low)
    )
    rate = per_goal / 0.25
    predicted = (backlog + rate * aging_s) / capacity
    before = order[: order.index(low_key)]
    late = [
        k
        for k in before
        if k[0] in stream and (created[k] - t_low).total_seconds() > aging_s
    ]
    waited = (low_claimed - t_low).total_seconds() if low_claimed else None
    return {
        "aging_s": aging_s,
        "low_waited_s": None if waited is None else round(waited, 3),
        "predicted_wait_s": round(predicted, 3),
        "backlog_at_arrival": backlog,
        "high_arrival_per_s": round(rate, 1),
        "lane_capacity_per_s": round(capacity, 1),
        "low_status": started.status,
        "later_than_bound_before_it": len(late),
    }


async def fairness(
    workers: int = 2,
    concurrency: int = 8,
    background: int = 5000,
    ms: float = 200.0,
    aging_s: float = 2.0,
    window: int | None = None,
) -> dict[str, Any]:
    """All three scenarios on one fleet.

    The window is workers * concurrency unless told; 0 shows the lane without
    one, a first-in first-out queue.
    """
    slots = workers * concurrency
    window = slots if window is None else window
    with tempfile.TemporaryDirectory(prefix="bb-bench-fair-") as tmp:
        fleet = Fleet(
            Path(tmp),
            workers=workers,
            concurrency=concurrency,
            window=window,
            aging_s=aging_s,
            weights={"big": 2.0},
        )
        fleet.up()
        try:
            async with fleet.store() as store:
                typer.echo("  (a) an urgent goal into a saturated lane...", err=True)
                a = await urgent(fleet, store, window, background, ms)
                typer.echo("  (b) two tenants, weights 2:1...", err=True)
                b = await tenants(fleet, store, 20 * (window or slots), ms / 4)
                typer.echo("  (c) aging under a stream of higher priority...", err=True)
                c = await aging(fleet, store, aging_s, ms / 2, 6.0)
        finally:
            fleet.down()
    return {
        "workers": workers,
        "concurrency": concurrency,
        "window": window,
        "task_ms": ms,
        "urgent": a,
        "tenants": b,
        "aging": c,
    }
