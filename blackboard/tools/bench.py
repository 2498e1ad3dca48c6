"""Benchmarks behind ``bb bench``: our cost beside JetStream's own, same run.

Each benchmark starts its own embedded server in a temporary directory (unless
BB_NATS_URL is set, in which case it uses fresh streams under a private prefix
and deletes them after), so figures are never polluted by other data. Those
that need no server (replay, the projector's apply path) are in
bench_offline.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from typing import TYPE_CHECKING, Any

import typer
from nats.js import api as nats_api

from blackboard import ids
from blackboard.log.events import TaskClaimed, TaskCreated, TaskSpec
from blackboard.log.server import EmbeddedServer
from blackboard.log.store import JetStreamEventStore, StoreSettings
from blackboard.runtime import config
from blackboard.runtime import connection as runtime
from blackboard.tools.bench_offline import projector, replay

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from nats.aio.client import Client as NatsClient
    from opentelemetry.sdk.trace import ReadableSpan

    from blackboard.engine.context import TaskContext
    from blackboard.engine.state import GoalState

WINDOW = 512

__all__ = ["append", "bench_store", "engine", "print_table", "projector", "replay"]


@contextlib.asynccontextmanager
async def bench_store(
    tag: str, sync_interval: str | None = None
) -> AsyncIterator[tuple[JetStreamEventStore, NatsClient]]:
    """A store on a private server (or private streams on BB_NATS_URL).

    The connection comes with it: the raw JetStream figures use it directly.
    ``sync_interval`` is the private server's (see EmbeddedServer).
    """
    settings = config.load()
    with contextlib.ExitStack() as stack:
        url = settings.nats.url
        prefix = "bb"
        if url is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bb-bench-"))
            server = EmbeddedServer(tmp, sync_interval=sync_interval)
            url = stack.enter_context(server).url
        else:
            prefix = f"bench{tag}{ids.new_id()[-6:].lower()}"
        nc = await runtime.open_client(settings, url, name=f"bb-bench-{tag}")
        store = JetStreamEventStore(nc, StoreSettings(prefix=prefix))
        await store.ensure()
        js = nc.jetstream()
        try:
            yield store, nc
        finally:
            if prefix != "bb":
                for name in (store.events_stream, store.work_stream):
                    with contextlib.suppress(Exception):
                        await js.delete_stream(name)
                with contextlib.suppress(Exception):
                    await js.delete_object_store(store.blob_bucket)
            await nc.drain()


async def _timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


def _created(goal: str, task: str) -> TaskCreated:
    return TaskCreated(
        event_id=ids.new_id(),
        goal_id=goal,
        task_id=task,
        at=ids.utcnow(),
        actor="bench",
        task_type="noop",
        lane="local",
        payload={"n": task},
    )


async def append(n: int = 5000, sync_interval: str | None = None) -> dict[str, Any]:
    """Events/s for each way of appending, beside raw JetStream publish.

    ``sync_interval``: the private server's JetStream sync (``always``: an
    fsync per write), to measure what durability costs.
    """
    progress = typer.echo
    async with bench_store("append", sync_interval) as (store, nc):
        js = nc.jetstream()
        await js.add_stream(name="BENCH_RAW", subjects=["benchraw.>"])
        goal = ids.new_id()
        sample = _created(goal, "T0")
        from blackboard.log import codec

        body = codec.encode(sample)

        async def raw_pipelined() -> None:
            for start in range(0, n, WINDOW):
                await asyncio.gather(
                    *(
                        js.publish(
                            f"benchraw.{i}", body, headers={"Nats-Msg-Id": f"r{i}"}
                        )
                        for i in range(start, min(n, start + WINDOW))
                    )
                )

        async def raw_sequential() -> None:
            for i in range(n // 5):
                await js.publish(
                    f"benchraw.s{i}", body, headers={"Nats-Msg-Id": f"s{i}"}
                )

        unguarded = [_created(goal, f"U{i}") for i in range(n)]
        guarded = [_created(goal, f"G{i}") for i in range(n)]

        async def ours_unguarded() -> None:
            await store.append_many(unguarded)

        async def ours_guarded() -> None:
            for start in range(0, n, WINDOW):
                await asyncio.gather(
                    *(
                        store.append(e, expect=0)
                        for e in guarded[start : start + WINDOW]
                    )
                )

        async def ours_guarded_chain() -> None:
            # One task, each write guarded on the previous: pure round-trip cost.
            seq = await store.append(_created(goal, "CHAIN"), expect=0)
            for i in range(n // 5 - 1):
                claim = TaskClaimed(
                    event_id=ids.new_id(),
                    goal_id=goal,
                    task_id="CHAIN",
                    at=ids.utcnow(),
                    actor="bench",
                    worker="bench",
                    attempt=i + 1,
                )
                seq = await store.append(claim, expect=seq)

        results: dict[str, Any] = {
            "events": n,
            "server": nc.connected_url.netloc if nc.connected_url else "",
            "sync_interval": sync_interval or "default (2m)",
        }
        for name, fn, count in (
            ("jetstream_publish_pipelined", raw_pipelined, n),
            ("unguarded_append_pipelined", ours_unguarded, n),
            ("guarded_append_pipelined", ours_guarded, n),
            ("jetstream_publish_sequential", raw_sequential, n // 5),
            ("guarded_append_sequential", ours_guarded_chain, n // 5),
        ):
            progress(f"  {name} ({count} events)...", err=True)
            secs = await _timed(fn)
            results[f"{name}_per_s"] = round(count / secs, 1)
        results["unguarded_vs_raw"] = round(
            results["jetstream_publish_pipelined_per_s"]
            / results["unguarded_append_pipelined_per_s"],
            2,
        )
        results["guarded_vs_raw"] = round(
            results["jetstream_publish_pipelined_per_s"]
            / results["guarded_append_pipelined_per_s"],
            2,
        )
        return results


def print_table(result: dict[str, Any]) -> None:
    """Print a benchmark result as aligned name/value lines (nested: a.b)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    walk("", result)
    width = max(len(k) for k in flat)
    for key, value in flat.items():
        if isinstance(value, float):
            shown = f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
        else:
            shown = str(value)
        typer.echo(f"{key:<{width}}  {shown}")


async def _fanout(ctx: TaskContext) -> object:
    """Spawn ``n`` no-op children and finish after them (1 -> n -> 1)."""
    n = int((await ctx.payload())["n"])
    if ctx.attempt == 1 and not (await ctx.history()).children:
        return ctx.wait_for(*(ctx.new_task("noop", ctx.lane) for _ in range(n)))
    return {"children": n}


BENCH_HANDLERS = {"bench_fanout": _fanout}


async def _run_goal(
    store: JetStreamEventStore,
    settings: config.Settings,
    specs: list[TaskSpec],
    text: str,
) -> tuple[float, GoalState]:
    from blackboard.engine import control as client
    from blackboard.engine import submission as service

    event = service.goal_submitted(
        settings,
        text,
        specs=specs,
        submitted_by="bench",
        overrides={"max_tasks": len(specs) + 1000},
    )
    t0 = time.perf_counter()
    await store.append(event)
    # Only the goal's own events: a watcher of every task event would compete
    # with the engine for this one process's CPU.
    goal = await client.wait_goal(
        store, event.goal_id, timeout_s=600, goal_level_only=True
    )
    wall = time.perf_counter() - t0
    if goal.status != "done":
        raise RuntimeError(f"bench goal ended {goal.status}: {goal.reason}")
    return wall, goal


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def _raw_jetstream(
    nc: NatsClient, n: int, replicas: int = 1
) -> tuple[float, float]:
    """Raw publish and fetch+ack rates on a work-queue stream, same server.

    ``replicas``: the stream's, as the engine's (R3 on a cluster).
    """
    js = nc.jetstream(timeout=20)  # an R3 stream's creation waits for a leader
    await js.add_stream(
        name="BENCH_WQ",
        subjects=["benchwq.>"],
        retention=nats_api.RetentionPolicy.WORK_QUEUE,
        num_replicas=replicas,
    )
    body = b'{"goal_id":"01HZZZZZZZZZZZZZZZZZZZZZZZ","task_id":"t","lane":"local"}'
    t0 = time.perf_counter()
    for start in range(0, n, WINDOW):
        await asyncio.gather(
            *(
                js.publish("benchwq.x", body, headers={"Nats-Msg-Id": f"w{i}"})
                for i in range(start, min(n, start + WINDOW))
            )
        )
    publish = n / (time.perf_counter() - t0)
    sub = await js.pull_subscribe("benchwq.x", durable="bench", stream="BENCH_WQ")
    got = 0
    t0 = time.perf_counter()
    while got < n:
        msgs = await sub.fetch(min(256, n - got), timeout=5)
        await asyncio.gather(*(m.ack() for m in msgs))
        got += len(msgs)
    fetch_ack = n / (time.perf_counter() - t0)
    await sub.unsubscribe()
    await js.delete_stream("BENCH_WQ")
    return publish, fetch_ack


async def engine(
    tasks: int = 10_000,
    fanout: int = 500,
    chain: int = 200,
    concurrency: int = 128,
    otel: bool = False,
    window: int | None = None,
) -> dict[str, Any]:
    """No-op tasks end to end; fan-out/fan-in; chain hops; raw JetStream rates.

    With ``otel`` the OpenTelemetry SDK records every span and metric (spans
    go through the batch processor to an exporter that drops them), so the
    figures show what telemetry costs beside the default, where it is off.
    """
    from blackboard import telemetry
    from blackboard.log.events import TaskCompleted
    from blackboard.runtime import inprocess as stack

    if otel:
        _install_discarding_telemetry()
    else:
        telemetry.disable()

    progress = typer.echo
    settings = config.load()
    settings.engine.lease_s = 30.0
    # The lane's dispatch window: the worker's concurrency unless told (0: none).
    window = concurrency if window is None else window
    settings.lanes.setdefault("local", config.LaneSettings()).window = window
    async with (
        bench_store("engine") as (store, nc),
        stack.running(
            store, settings, BENCH_HANDLERS, lanes=["local"], concurrency=concurrency
        ),
    ):
        progress(f"  {tasks} independent no-op tasks...", err=True)
        wall, _ = await _run_goal(
            store,
            settings,
            [
                TaskSpec(task_id=f"t{i}", type="noop", lane="local")
                for i in range(tasks)
            ],
            "bench: independent tasks",
        )
        tasks_per_s = tasks / wall
        progress(f"  1 -> {fanout} -> 1 fan-out/fan-in...", err=True)
        fan_wall, _ = await _run_goal(
            store,
            settings,
            [
                TaskSpec(
                    task_id="root",
                    type="bench_fanout",
                    lane="local",
                    payload={"n": fanout},
                ),
                TaskSpec(
                    task_id="last", type="noop", lane="local", depends_on=("root",)
                ),
            ],
            "bench: fan-out",
        )
        progress(f"  chain of {chain}...", err=True)
        specs = [TaskSpec(task_id="c0", type="noop", lane="local")] + [
            TaskSpec(
                task_id=f"c{i}", type="noop", lane="local", depends_on=(f"c{i - 1}",)
            )
            for i in range(1, chain)
        ]
        _, goal = await _run_goal(store, settings, specs, "bench: chain")
        done_at = {}
        async for env in store.read_goal(goal.goal_id):
            if isinstance(env.event, TaskCompleted):
                done_at[env.event.task_id] = env.event.at
        hops = [
            (done_at[f"c{i}"] - done_at[f"c{i - 1}"]).total_seconds() * 1000
            for i in range(1, chain)
        ]
        progress("  raw JetStream publish and fetch+ack...", err=True)
        publish, fetch_ack = await _raw_jetstream(nc, tasks)
    return {
        "tasks": tasks,
        "tasks_per_s": round(tasks_per_s, 1),
        "fanout_wall_s": round(fan_wall, 3),
        "hop_latency_ms_p50": round(_pct(hops, 50), 2),
        "hop_latency_ms_p99": round(_pct(hops, 99), 2),
        "jetstream_publish_per_s": round(publish, 1),
        "jetstream_fetch_ack_per_s": round(fetch_ack, 1),
        "worker_concurrency": concurrency,
        "window": window,
    }


def _install_discarding_telemetry() -> None:
    """The SDK at work, with exporters that drop what they get."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from blackboard import telemetry

    class Discard(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tp = telemetry.tracer_provider("bb-bench")
    tp.add_span_processor(BatchSpanProcessor(Discard()))
    telemetry.install(tp, MeterProvider(metric_readers=[InMemoryMetricReader()]))
