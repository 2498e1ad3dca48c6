"""`bb bench ...`: the benchmarks (they print figures; never part of the tests)."""

from __future__ import annotations

from typing import Annotated

import typer

from blackboard.cli.common import (
    JsonOpt,
    bench_app,
    emit_json,
    fail,
    run,
    settings,
)

# --- benchmarks ---------------------------------------------------------------


@bench_app.command("append")
def bench_append(
    events: Annotated[
        int, typer.Option("-n", "--events", help="Events per mode.")
    ] = 5000,
    sync: Annotated[
        str | None,
        typer.Option(
            help="The private server's JetStream sync_interval: 'always' (an"
            " fsync per write) or a duration; default: the server's (2m)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Events/s of guarded and unguarded appends beside raw JetStream publish."""
    from blackboard.log.server import check_sync_interval
    from blackboard.tools import bench

    try:
        check_sync_interval(sync)
    except ValueError as e:
        fail(f"--sync: {e}")
    if sync is not None and settings().nats.url:
        fail("--sync sets the private server's fsync; unset BB_NATS_URL to use it")
    result = run(bench.append(events, sync))
    if as_json:
        emit_json(result)
    else:
        bench.print_table(result)


@bench_app.command("engine")
def bench_engine(
    tasks: Annotated[int, typer.Option(help="Independent no-op tasks.")] = 10_000,
    fanout: Annotated[int, typer.Option(help="Children of the fan-out.")] = 500,
    chain: Annotated[int, typer.Option(help="Length of the chain.")] = 200,
    concurrency: Annotated[int, typer.Option(help="Worker concurrency.")] = 128,
    otel: Annotated[
        bool, typer.Option("--otel", help="Record spans and metrics (SDK on).")
    ] = False,
    window: Annotated[
        int | None,
        typer.Option(help="Lane dispatch window (default: concurrency; 0: none)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """No-op tasks/s end to end, fan-out wall time, chain hop latency, raw rates."""
    from blackboard.tools import bench

    result = run(bench.engine(tasks, fanout, chain, concurrency, otel, window))
    result["otel"] = otel
    if as_json:
        emit_json(result)
    else:
        bench.print_table(result)


@bench_app.command("scale")
def bench_scale(
    sizes: Annotated[
        str, typer.Option(help="Tasks in the goal, one fleet each (comma-separated).")
    ] = "1000,10000,100000",
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    concurrency: Annotated[int, typer.Option(help="Slots per worker.")] = 64,
    window: Annotated[
        int, typer.Option(help="The lane's dispatch window (0: none).")
    ] = 128,
    raw: Annotated[
        int, typer.Option(help="Messages for JetStream's own rates.")
    ] = 20_000,
    nodes: Annotated[
        int,
        typer.Option(help="1: one nats-server; 3: a loopback cluster, R3 streams."),
    ] = 1,
    partitions: Annotated[
        int,
        typer.Option(
            min=1,
            max=8,
            help="Scheduler partitions: a process and a goal of the tasks each.",
        ),
    ] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Cost per task from 1k to 100k tasks in one goal: separate processes."""
    from blackboard.tools import bench_scale

    try:
        counts = [int(x) for x in sizes.split(",") if x.strip()]
    except ValueError:
        fail(f"--sizes: give task counts separated by commas, not {sizes!r}", 2)
    if not counts or min(counts) < 1:
        fail("--sizes: give at least one task count of 1 or more", 2)
    if nodes not in (1, 3):
        fail(f"--nodes: 1 or 3 (a cluster of 3 on loopback), not {nodes}", 2)
    if min(counts) < partitions:
        fail(f"--sizes: give at least one task per partition ({partitions})", 2)
    result = run(
        bench_scale.scale(counts, workers, concurrency, window, raw, nodes, partitions)
    )
    if as_json:
        emit_json(result)
    else:
        bench_scale.print_table(result)


@bench_app.command("fairness")
def bench_fairness(
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    concurrency: Annotated[int, typer.Option(help="Slots per worker.")] = 8,
    background: Annotated[
        int, typer.Option(help="Tasks of the background goal.")
    ] = 5000,
    task_ms: Annotated[float, typer.Option(help="How long a task works.")] = 200.0,
    aging_s: Annotated[
        float, typer.Option(help="Seconds of waiting worth one priority level.")
    ] = 2.0,
    window: Annotated[
        int | None,
        typer.Option(help="Lane window (default: workers x concurrency; 0: none)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Urgent work into a saturated lane, tenants 2:1, aging: separate processes."""
    from blackboard.tools import bench, bench_fairness

    result = run(
        bench_fairness.fairness(
            workers, concurrency, background, task_ms, aging_s, window
        )
    )
    if as_json:
        emit_json(result)
    else:
        bench.print_table(result)


@bench_app.command("local-model")
def bench_local_model(
    runs: Annotated[
        int, typer.Option(help="Goals to run (one task of each kind).")
    ] = 5,
    local_url: Annotated[
        str | None,
        typer.Option(
            "--local-url",
            help="A server already serving the model (default: start one).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """What the bundled 135M model gets right per task kind, and its tokens/s."""
    from blackboard.tools import bench_local

    if runs < 1:
        fail(f"--runs {runs}: give 1 or more", 2)
    result = run(bench_local.local_model(runs, local_url))
    if as_json:
        emit_json(result)
    else:
        bench_local.print_report(result)


@bench_app.command("projector")
def bench_projector(
    events: Annotated[int, typer.Option(help="Events in the log.")] = 1_000_000,
    batch: Annotated[int, typer.Option(help="Events per transaction.")] = 10_000,
    as_json: JsonOpt = False,
) -> None:
    """Events/s applied to DuckDB beside DuckDB's bulk load; cost view latency."""
    from blackboard.tools import bench_offline

    result = bench_offline.projector(events, batch)
    if as_json:
        emit_json(result)
    else:
        for k, v in result.items():
            typer.echo(f"{k:>26}: {v}")


@bench_app.command("replay")
def bench_replay(
    events: Annotated[int, typer.Option(help="Events in the goal.")] = 100_000,
    as_json: JsonOpt = False,
) -> None:
    """Time to build and render the trace of a goal of N events (aim: < 2 s)."""
    from blackboard.tools import bench_offline

    result = bench_offline.replay(events)
    if as_json:
        emit_json(result)
    else:
        for k, v in result.items():
            typer.echo(f"{k:>16}: {v}")
