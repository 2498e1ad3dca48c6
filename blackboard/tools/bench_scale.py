"""``bb bench scale``: what a task costs as goals grow, on separate processes.

For each size, a fresh fleet on this machine: a nats-server, ``bb scheduler``
and worker processes (``bb worker --lane local``, no-op tasks). One goal of
that many independent tasks is submitted; from the log, the time from its
``goal_submitted`` to its ``goal_completed`` gives tasks/s. The scheduler's
process gives its CPU time per task (the workers', summed, too;
``/proc/<pid>/stat``, over the goal) and its peak resident memory (``VmHWM``),
its log how many work items it had to send again ("not sent"). The server's
stream state gives JetStream messages per task. With ``partitions``, one
scheduler process per partition and one goal per partition (n/P tasks each,
their ids chosen so), summed. Then ``bb replay`` of the (first) goal through
the server, timed from the command's start; a projector rebuilding a DuckDB
file from the whole log through the server (events/s, from its start to caught
up); and JetStream's own publish and fetch+ack rates on the same server, for
the ratio. Figures, never assertions: nothing here is a test.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from blackboard.engine import control as client
from blackboard.engine import snapshot
from blackboard.engine import submission as service
from blackboard.engine.decide import Decider
from blackboard.engine.scheduler import Scheduler
from blackboard.log.events import TaskSpec
from blackboard.log.ports import Share
from blackboard.runtime.config import EngineSettings
from blackboard.tools.bench import _raw_jetstream
from blackboard.tools.bench_fairness import Fleet
from projections.runner import Projector

if TYPE_CHECKING:
    from blackboard.log.store import JetStreamEventStore

SNAPSHOT_EVERY = EngineSettings().snapshot_every
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _specs(n: int) -> list[TaskSpec]:
    return [
        TaskSpec(task_id=f"t{i}", type="bench_sleep", lane="local", payload={"ms": 0})
        for i in range(n)
    ]


async def _goal(
    fleet: Fleet, store: JetStreamEventStore, n: int, timeout_s: float
) -> dict[str, Any]:
    """``n`` tasks: one goal, or with partitions one goal of n/P per partition.

    The time is from the first submission to the last goal's end; CPU is
    every scheduler's, peak memory the largest scheduler's.
    """
    s = fleet.settings()
    count = fleet.partitions
    events = [
        service.goal_submitted(
            s,
            f"bench: scale {n}" + (f" (partition {p} of {count})" if count > 1 else ""),
            specs=_specs(n // count + (1 if p < n % count else 0)),
            submitted_by="bench",
            goal_id=service.goal_id_in(p, count),
            overrides={"max_tasks": n + 10, "max_tokens": None, "max_cost_usd": None},
        )
        for p in range(count)
    ]
    schedulers = [proc.pid for proc in fleet.procs[:count]]
    workers = [proc.pid for proc in fleet.procs[count:]]
    cpu0 = sum(_cpu_s(pid) for pid in schedulers)
    wcpu0 = sum(_cpu_s(pid) for pid in workers)
    await asyncio.gather(*(store.append(e) for e in events))
    goals = await asyncio.gather(
        *(
            client.wait_goal(
                store, e.goal_id, timeout_s=timeout_s, goal_level_only=True
            )
            for e in events
        )
    )
    cpu = sum(_cpu_s(pid) for pid in schedulers) - cpu0
    wcpu = sum(_cpu_s(pid) for pid in workers) - wcpu0
    for goal in goals:
        if goal.status != "done" or goal.finished_at is None:
            raise RuntimeError(f"bench goal ended {goal.status}: {goal.reason}")
    end = max(g.finished_at for g in goals if g.finished_at is not None)
    wall = (end - min(e.at for e in events)).total_seconds()
    return {
        "goal_id": events[0].goal_id,
        "goals": count,
        "tasks": n,
        "wall_s": round(wall, 3),
        "tasks_per_s": round(n / wall, 1),
        "scheduler_cpu_ms_per_task": round(cpu * 1000 / n, 3),
        "scheduler_peak_rss_mb": round(max(_peak_rss_mb(p) for p in schedulers), 1),
        "workers_cpu_ms_per_task": round(wcpu * 1000 / n, 3),
    }


async def _projector_rate(store: JetStreamEventStore, db: Path, last_seq: int) -> float:
    """Events/s of a projector rebuilding ``db`` from the server's whole log."""
    projector = Projector(store, db, rebuild=True, batch=10_000)
    stop = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(projector.run(stop))
    try:
        await projector.caught_up(last_seq, timeout_s=600.0)
        elapsed = time.perf_counter() - t0
        if projector.last_seq < last_seq:
            raise RuntimeError(
                f"the projector reached {projector.last_seq} of {last_seq} events"
            )
    finally:
        stop.set()
        await task
    return last_seq / elapsed


async def _rebuild_s(
    store: JetStreamEventStore, snapshot_every: int, share: Share
) -> float:
    """Seconds of a new leader's fold of its share of the log, through the server.

    The whole share (``snapshot_every`` 0), or from the snapshot the fleet's
    scheduler of that share saved.
    """
    sched = Scheduler(
        store,
        Decider("bench-rebuild"),
        snapshot_every=snapshot_every,
        share=share,
    )
    t0 = time.perf_counter()
    await sched.rebuild()
    return time.perf_counter() - t0


async def _events_of(store: JetStreamEventStore, goal_id: str) -> int:
    """How many events the goal has (what its replay reads)."""
    n = 0
    async for _ in store.read_goal(goal_id):
        n += 1
    return n


def _scheduler_logs(tmp: Path) -> str:
    """Every scheduler process's log, one after the other."""
    return "".join(
        f.read_text(errors="replace") for f in sorted(tmp.glob("scheduler*.log"))
    )


def _replay_s(fleet: Fleet, goal_id: str) -> float:
    """``bb replay <goal> --json`` through the server, CLI start included."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "blackboard.cli", "replay", goal_id, "--json"],
        env=fleet.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - t0


async def one_size(
    n: int,
    workers: int,
    concurrency: int,
    window: int,
    raw: int,
    nodes: int = 1,
    partitions: int = 1,
) -> dict[str, Any]:
    """One fleet, one goal of ``n`` tasks (or one per partition), and its cost.

    ``nodes``: 1, or a cluster of that many on loopback with R3 streams (the
    nodes share this machine's cores with the fleet). ``partitions``: that
    many scheduler processes, one per partition, each with its goal.
    """
    with tempfile.TemporaryDirectory(prefix="bb-bench-scale-") as tmp:
        fleet = Fleet(
            Path(tmp),
            workers=workers,
            concurrency=concurrency,
            window=window,
            aging_s=60.0,
            weights={},
            nodes=nodes,
            partitions=partitions,
        )
        fleet.up()
        try:
            async with fleet.store() as store:
                await _goal(fleet, store, 20, 120)  # warm: imports, consumers
                row = await _goal(fleet, store, n, max(600.0, n / 20))
                info = await store.js.stream_info(store.events_stream)
                row["events_per_task"] = round(info.state.messages / n, 2)
                row["replay_s"] = round(_replay_s(fleet, row["goal_id"]), 3)
                row["replay_events"] = await _events_of(store, row["goal_id"])
                # What a takeover costs before the new leader decides: the
                # fold of the whole log, and from the latest snapshot.
                # (Of partition 0's scheduler, with partitions.)
                share = Share(0, partitions)
                snap = await store.snapshots().load(share.name)
                row["snapshot_seq"] = (
                    snapshot.decode(snap).last_seq if snap is not None else 0
                )
                row["rebuild_whole_s"] = round(
                    await _rebuild_s(store, 0, Share(0, partitions)), 3
                )
                row["rebuild_snapshot_s"] = round(
                    await _rebuild_s(store, SNAPSHOT_EVERY, Share(0, partitions)), 3
                )
                row["projector_events_per_s"] = round(
                    await _projector_rate(
                        store, Path(tmp) / "bench.duckdb", info.state.last_seq
                    )
                )
                publish, fetch_ack = await _raw_jetstream(
                    store.nc, raw, replicas=min(nodes, 3)
                )
                row["jetstream_publish_per_s"] = round(publish)
                row["jetstream_fetch_ack_per_s"] = round(fetch_ack)
        finally:
            fleet.down()
        log = _scheduler_logs(Path(tmp))
        row["not_sent_retries"] = log.count("not sent")
        row["lease_lost"] = log.count("stepping down")
    return row


async def scale(
    sizes: list[int],
    workers: int,
    concurrency: int,
    window: int,
    raw: int,
    nodes: int = 1,
    partitions: int = 1,
) -> dict[str, Any]:
    """Every size, each on a fresh fleet."""
    rows = []
    for n in sizes:
        typer.echo(f"  {n:,} tasks...", err=True)
        rows.append(
            await one_size(n, workers, concurrency, window, raw, nodes, partitions)
        )
    return {
        "workers": workers,
        "concurrency": concurrency,
        "window": window,
        "nodes": nodes,
        "replicas": nodes,
        "partitions": partitions,
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    """The table of the README."""
    typer.echo(
        f"{result['workers']} workers x {result['concurrency']}, window"
        f" {result['window']}, {result['nodes']} node(s),"
        f" R{result.get('replicas', 1)} streams,"
        f" {result.get('partitions', 1)} scheduler partition(s)"
    )
    typer.echo(
        f"{'tasks':>8} {'tasks/s':>8} {'sched CPU/task':>15} {'peak RSS':>9}"
        f" {'events/task':>12} {'not sent':>9} {'replay':>8} {'projector':>11}"
    )
    for r in result["rows"]:
        typer.echo(
            f"{r['tasks']:>8,} {r['tasks_per_s']:>8.0f}"
            f" {r['scheduler_cpu_ms_per_task']:>12.3f} ms"
            f" {r['scheduler_peak_rss_mb']:>6.0f} MB {r['events_per_task']:>12}"
            f" {r['not_sent_retries']:>9} {r['replay_s']:>6.2f} s"
            f" {r.get('projector_events_per_s', 0):>7,}/s"
        )


if __name__ == "__main__":  # pragma: no cover - a manual entry point
    asyncio.run(scale([1000], 2, 64, 128, 20000))
