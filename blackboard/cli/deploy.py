"""Running a deployment: `bb up`, `bb scheduler`, `bb worker`, `bb projector`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from blackboard.cli.common import (
    DEPLOY,
    GETTING_STARTED,
    ConfigOpt,
    DbOpt,
    HandlersOpt,
    app,
    db_path,
    fail,
    load_handlers,
    serve,
    settings,
)
from blackboard.errors import BlackboardError
from blackboard.runtime import config as config_mod

if TYPE_CHECKING:
    from blackboard.log.ports import Share

# --- running a deployment ---------------------------------------------------


@app.command(rich_help_panel=GETTING_STARTED)
def up(
    port: Annotated[
        int, typer.Option(help="Port of the embedded server (0: 4222 if free).")
    ] = 0,
    lanes: Annotated[
        str | None, typer.Option(help="Comma-separated lanes to run workers for.")
    ] = None,
    handlers: HandlersOpt = None,
    no_scheduler: Annotated[
        bool, typer.Option("--no-scheduler", help="Run workers only.")
    ] = False,
    join: Annotated[
        bool,
        typer.Option(
            "--join",
            help="If a bb up already serves this data dir, add workers to it.",
        ),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Run a deployment: server (embedded unless BB_NATS_URL), scheduler, workers.

    Ctrl-C stops it cleanly; the data stays under BB_DATA_DIR (./.bb).
    """
    from blackboard.runtime import connection as runtime

    s = settings(config)
    lane_list = _lanes(s, lanes)
    registry, agent = load_handlers(s, handlers)
    _say_missing_models(s, lane_list)
    here = runtime.running_here(s) if join and not s.nats.url else None
    if here is not None:
        typer.echo(
            f"joining the bb up of {s.data_dir} (pid {here.pid}, {here.url}): workers"
        )
        serve(lambda stop: _up(s, here.url, lane_list, (registry, agent), False, stop))
        return
    try:
        with runtime.server_for(s, port=port or _default_port()) as url:
            typer.echo(f"NATS at {url}  (export BB_NATS_URL={url})")
            serve(
                lambda stop: _up(
                    s, url, lane_list, (registry, agent), not no_scheduler, stop
                )
            )
    except BlackboardError as e:
        fail(str(e))
    except KeyboardInterrupt:
        pass  # a second Ctrl-C during shutdown
    typer.echo("stopped; data kept in " + str(Path(s.data_dir).resolve()))


def _say_missing_models(s: config_mod.Settings, lanes: list[str]) -> None:
    """Say at start what the lanes' built-in agents lack, not at the first goal."""
    if s.scripted:
        return
    from agents import lanes as lanes_mod

    problems = lanes_mod.missing_setup(s, lanes)
    for problem in problems:
        typer.echo(f"warning: {problem}", err=True)
    if problems:
        typer.echo(
            "warning: goals on those lanes will fail until it is set; "
            "BB_SCRIPTED=1 runs every lane on scripted models, nothing to set",
            err=True,
        )


def _default_port() -> int:
    from blackboard.log.server import _port_in_use

    return 0 if _port_in_use("127.0.0.1", 4222) else 4222


def _lanes(s: config_mod.Settings, lanes: str | None) -> list[str]:
    chosen = (
        [x.strip() for x in lanes.split(",") if x.strip()] if lanes else list(s.lanes)
    )
    unknown = [x for x in chosen if x not in s.lanes]
    if unknown:
        known = ", ".join(s.lanes)
        fail(f"unknown lane(s) {', '.join(unknown)}; configured: {known}", 2)
    return chosen


async def _up(
    s: config_mod.Settings,
    url: str,
    lanes: list[str],
    handlers: tuple[dict[str, Any], Any],
    scheduler: bool,
    stop: asyncio.Event,
) -> None:
    from agents.compensate import OnFailure
    from blackboard.runtime import connection as runtime
    from blackboard.runtime import inprocess as stack
    from projections.runner import Projector

    async with runtime.open_store(s, url, name="bb-up") as store:
        # Only the bb up that runs the scheduler compensates: one a deployment.
        compensate = scheduler and s.policy.compensates_failures
        async with stack.running(
            store,
            s,
            handlers[0],
            lanes=lanes,
            scheduler=scheduler,
            projector=Projector(store, db_path(s, None)) if scheduler else None,
            agent=handlers[1],
            compensator=OnFailure(store, s) if compensate else None,
        ):
            typer.echo(
                f"streams {store.events_stream}, {store.work_stream} ready; "
                f"scheduler {'on' if scheduler else 'off'}; "
                f"workers: {', '.join(lanes) or 'none'}; "
                + ("failed goals are compensated; " if compensate else "")
                + "Ctrl-C to stop"
            )
            try:
                await stop.wait()
            finally:
                await handlers[1].aclose()  # the MCP servers it started


@app.command(rich_help_panel=DEPLOY)
def scheduler(
    partition: Annotated[
        int | None,
        typer.Option(
            min=0,
            envvar="BB_PARTITION",
            help=(
                "Schedule only this partition of [engine] partitions"
                " (default: every one)."
            ),
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Run a scheduler (a standby while another is active) until stopped.

    With ``[engine] partitions`` above 1, it leads each partition it is
    given whose lock is free, and stands by for the others.
    """
    s = settings(config)
    from blackboard.runtime import inprocess as stack

    try:
        shares = stack.shares(s, partition)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--partition") from None
    serve(lambda stop: _scheduler(s, shares, stop))


async def _scheduler(
    s: config_mod.Settings, shares: list[Share], stop: asyncio.Event
) -> None:
    from blackboard.engine.scheduler import stop_on
    from blackboard.runtime import connection as runtime
    from blackboard.runtime import inprocess as stack

    async with runtime.open_store(s, name="bb-scheduler") as store:
        scheds = [stack.scheduler_for(store, s, share) for share in shares]
        for sched in scheds:
            typer.echo(f"{sched.decider.actor}: started{sched.of_share()}", err=True)
        runs = [asyncio.create_task(sched.run(stop)) for sched in scheds]
        # One that dies stops the others: the process exits, and its
        # supervisor restarts it whole, as with one scheduler.
        watcher = asyncio.create_task(stop_on(stop, *runs))
        try:
            await asyncio.gather(*runs)
        finally:
            stop.set()
            await asyncio.gather(*runs, return_exceptions=True)
            watcher.cancel()


@app.command(rich_help_panel=DEPLOY)
def worker(
    lane: Annotated[str, typer.Option(help="The lane to take work from.")],
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Tasks run at once (default: lane's).")
    ] = None,
    handlers: HandlersOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run a lane worker until stopped."""
    s = settings(config)
    _lanes(s, lane)
    registry, agent = load_handlers(s, handlers)
    serve(lambda stop: _worker(s, lane, concurrency, (registry, agent), stop))


async def _worker(
    s: config_mod.Settings,
    lane: str,
    concurrency: int | None,
    handlers: tuple[dict[str, Any], Any],
    stop: asyncio.Event,
) -> None:
    from blackboard.engine.worker import Worker
    from blackboard.runtime import connection as runtime
    from blackboard.runtime import inprocess as stack

    async with runtime.open_store(s, name=f"bb-worker-{lane}") as store:
        w = Worker(
            store,
            stack.worker_settings(s, lane, concurrency),
            handlers[0],
            agent=handlers[1],
        )
        typer.echo(f"{w.worker_id}: handling {', '.join(sorted(w.handlers))}", err=True)
        try:
            await w.run(stop)
        finally:
            await handlers[1].aclose()  # the MCP servers it started


# --- projections ------------------------------------------------------------


@app.command(rich_help_panel=DEPLOY)
def projector(
    db: DbOpt = None,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Start over from sequence 1, fresh file.")
    ] = False,
    batch: Annotated[
        int, typer.Option(min=1, help="Events applied per transaction, at most.")
    ] = 2000,
    config: ConfigOpt = None,
) -> None:
    """Project the log into DuckDB (exactly once) and answer SQL for `bb sql`."""
    s = settings(config)
    path = db_path(s, db)
    path.parent.mkdir(parents=True, exist_ok=True)
    serve(lambda stop: _projector(s, path, rebuild, batch, stop))


async def _projector(
    s: config_mod.Settings, path: Path, rebuild: bool, batch: int, stop: asyncio.Event
) -> None:
    from blackboard.runtime import connection as runtime
    from projections.runner import Projector

    async with runtime.open_store(s, name="bb-projector") as store:
        p = Projector(store, path, rebuild=rebuild, batch=batch)
        typer.echo(f"projector: {path}{' (rebuilding)' if rebuild else ''}", err=True)
        await p.run(stop)
