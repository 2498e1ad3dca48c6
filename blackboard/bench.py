"""Benchmarks behind ``bb bench``: our cost beside JetStream's own, same run.

Each benchmark starts its own embedded server in a temporary directory (unless
BB_NATS_URL is set, in which case it uses fresh streams under a private prefix
and deletes them after), so figures are never polluted by other data.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from typing import TYPE_CHECKING, Any

import typer

from blackboard import config, ids, runtime
from blackboard.events import TaskClaimed, TaskCreated
from blackboard.server import EmbeddedServer
from blackboard.store import JetStreamEventStore, StoreSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

WINDOW = 512


@contextlib.asynccontextmanager
async def bench_store(tag: str) -> AsyncIterator[JetStreamEventStore]:
    """A store on a private server (or private streams on BB_NATS_URL)."""
    settings = config.load()
    with contextlib.ExitStack() as stack:
        url = settings.nats.url
        prefix = "bb"
        if url is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bb-bench-"))
            url = stack.enter_context(EmbeddedServer(tmp)).url
        else:
            prefix = f"bench{tag}{ids.new_id()[-6:].lower()}"
        nc = await runtime.open_client(settings, url, name=f"bb-bench-{tag}")
        store = JetStreamEventStore(nc, StoreSettings(prefix=prefix))
        await store.ensure()
        try:
            yield store
        finally:
            if prefix != "bb":
                for name in (store.events_stream, store.work_stream):
                    with contextlib.suppress(Exception):
                        await store.js.delete_stream(name)
                with contextlib.suppress(Exception):
                    await store.js.delete_object_store(store.blob_bucket)
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


async def append(n: int = 5000) -> dict[str, Any]:
    """Events/s for each way of appending, beside raw JetStream publish."""
    progress = typer.echo
    async with bench_store("append") as store:
        js = store.js
        await js.add_stream(name="BENCH_RAW", subjects=["benchraw.>"])
        goal = ids.new_id()
        sample = _created(goal, "T0")
        from blackboard import codec

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
            "server": store.nc.connected_url.netloc if store.nc.connected_url else "",
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
    """Print a benchmark result as aligned name/value lines."""
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:,.1f}" if isinstance(value, float) else str(value)
        typer.echo(f"{key:<{width}}  {shown}")
