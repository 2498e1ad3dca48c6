"""The ``bb`` command line: the front door. Thin: parse, call, print.

Each command imports what it needs inside its body, so ``bb tail`` does not pay
for the model SDKs or DuckDB. Errors the user can act on are one line on
stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from blackboard.errors import BlackboardError
from blackboard.runtime import config as config_mod

app = typer.Typer(
    name="bb",
    help="Blackboard: an event-sourced control plane for fleets of AI agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks (print figures; never part of the tests).")
app.add_typer(bench_app, name="bench")

T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Settings file (default ./bb.toml).")
]
HandlersOpt = Annotated[
    str | None,
    typer.Option("--handlers", help="Extra task handlers, as module:attribute."),
]
ByOpt = Annotated[str | None, typer.Option("--by", help="Who you are (default $USER).")]
MaxDepth = Annotated[int | None, typer.Option(help="Guardrail: deepest spawn level.")]
MaxTasks = Annotated[int | None, typer.Option(help="Guardrail: tasks in the goal.")]
MaxTokens = Annotated[int | None, typer.Option(help="Guardrail: tokens of the goal.")]
MaxCost = Annotated[float | None, typer.Option(help="Guardrail: USD for the goal.")]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line on stderr and exit."""
    typer.echo(f"bb: error: {message}", err=True)
    raise typer.Exit(code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, turning our errors into one-line messages."""
    try:
        return asyncio.run(coro)
    except BlackboardError as e:
        fail(str(e))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def serve(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run a long-lived command until Ctrl-C or SIGTERM, its normal ways to stop.

    Both set the ``stop`` event the command watches, so it finishes what it is
    doing and closes cleanly (Kubernetes stops pods with SIGTERM).
    """
    logging.basicConfig(
        level=os.environ.get("BB_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    from blackboard import telemetry

    telemetry.configure_from_env(_service_name())

    async def wrapper() -> None:
        from blackboard.runtime import health

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with health.serving():
            await main(stop)

    try:
        asyncio.run(wrapper())
    except BlackboardError as e:
        fail(str(e))
    except KeyboardInterrupt:
        return
    finally:
        telemetry.shutdown()


def _service_name() -> str:
    """``bb-<command>``: the OpenTelemetry service name of this process."""
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "cli")
    return f"bb-{command}"


def settings(path: Path | None = None) -> config_mod.Settings:
    """Load settings or fail with the reason."""
    try:
        return config_mod.load(path)
    except BlackboardError as e:
        fail(str(e), 2)


def emit_json(value: Any) -> None:
    """Print a JSON document on stdout."""
    typer.echo(json.dumps(value, default=str))


def whoami(by: str | None) -> str:
    """The name written into events a person causes."""
    from blackboard.engine.submission import _whoami

    return by or _whoami()


def limit_overrides(
    max_depth: int | None,
    max_tasks: int | None,
    max_tokens: int | None,
    max_cost: float | None,
) -> dict[str, Any]:
    """Guardrail options as the overrides the service takes."""
    return {
        "max_depth": max_depth,
        "max_tasks": max_tasks,
        "max_tokens": max_tokens,
        "max_cost_usd": max_cost,
    }


# --- running a deployment ---------------------------------------------------


@app.command()
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
    config: ConfigOpt = None,
) -> None:
    """Run a deployment: server (embedded unless BB_NATS_URL), scheduler, workers.

    Ctrl-C stops it cleanly; the data stays under BB_DATA_DIR (./.bb).
    """
    from blackboard.runtime import connection as runtime

    s = settings(config)
    lane_list = _lanes(s, lanes)
    registry = load_handlers(s, handlers)
    try:
        with runtime.server_for(s, port=port or _default_port()) as url:
            typer.echo(f"NATS at {url}  (export BB_NATS_URL={url})")
            serve(lambda stop: _up(s, url, lane_list, registry, not no_scheduler, stop))
    except BlackboardError as e:
        fail(str(e))
    except KeyboardInterrupt:
        pass  # a second Ctrl-C during shutdown
    typer.echo("stopped; data kept in " + str(Path(s.data_dir).resolve()))


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
    handlers: dict[str, Any],
    scheduler: bool,
    stop: asyncio.Event,
) -> None:
    from blackboard.runtime import connection as runtime
    from blackboard.runtime import inprocess as stack

    async with (
        runtime.open_store(s, url, name="bb-up") as store,
        stack.running(
            store,
            s,
            handlers,
            lanes=lanes,
            scheduler=scheduler,
            projector_db=_db(s, None) if scheduler else None,
        ),
    ):
        typer.echo(
            f"streams {store.events_stream}, {store.work_stream} ready; "
            f"scheduler {'on' if scheduler else 'off'}; "
            f"workers: {', '.join(lanes) or 'none'}; Ctrl-C to stop"
        )
        await stop.wait()


@app.command()
def scheduler(config: ConfigOpt = None) -> None:
    """Run a scheduler (a standby while another is active) until stopped."""
    s = settings(config)
    serve(lambda stop: _scheduler(s, stop))


async def _scheduler(s: config_mod.Settings, stop: asyncio.Event) -> None:
    from blackboard import ids
    from blackboard.engine.decide import Decider
    from blackboard.engine.scheduler import Scheduler
    from blackboard.runtime import connection as runtime
    from blackboard.runtime import inprocess as stack

    async with runtime.open_store(s, name="bb-scheduler") as store:
        decider = Decider(f"scheduler-{ids.new_id()[-8:]}", stack.policy_from(s))
        sched = Scheduler(store, decider, lock_ttl_s=s.engine.lock_ttl_s)
        typer.echo(f"{decider.actor}: started", err=True)
        await sched.run(stop)


@app.command()
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
    registry = load_handlers(s, handlers)
    serve(lambda stop: _worker(s, lane, concurrency, registry, stop))


async def _worker(
    s: config_mod.Settings,
    lane: str,
    concurrency: int | None,
    handlers: dict[str, Any],
    stop: asyncio.Event,
) -> None:
    from blackboard.engine.worker import Worker
    from blackboard.runtime import connection as runtime
    from blackboard.runtime import inprocess as stack

    async with runtime.open_store(s, name=f"bb-worker-{lane}") as store:
        w = Worker(store, stack.worker_settings(s, lane, concurrency), handlers)
        typer.echo(f"{w.worker_id}: handling {', '.join(sorted(w.handlers))}", err=True)
        await w.run(stop)


def load_handlers(s: config_mod.Settings, spec: str | None) -> dict[str, Any]:
    """The task handlers a worker runs: built-ins, agents', and --handlers."""
    from blackboard.engine import handlers as h

    registry: dict[str, Any] = dict(h.BUILTIN)
    registry.update(_agent_handlers(s))
    if spec:
        try:
            registry.update(h.load(spec))
        except BlackboardError as e:
            fail(str(e), 2)
    return registry


def _agent_handlers(s: config_mod.Settings) -> dict[str, Any]:
    """The model-backed handlers: plan, execute, review, aggregate."""
    from agents import handlers as agent_handlers

    return dict(agent_handlers.registry(s))


# --- projections ------------------------------------------------------------

DbOpt = Annotated[
    Path | None,
    typer.Option("--db", help="DuckDB file (default <BB_DATA_DIR>/blackboard.duckdb)."),
]


def _db(s: config_mod.Settings, db: Path | None) -> Path:
    return db or Path(s.data_dir) / "blackboard.duckdb"


@app.command()
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
    path = _db(s, db)
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


async def _ask_or_file(
    s: config_mod.Settings, db: Path, request: dict[str, Any]
) -> dict[str, Any]:
    """The running projector answers; with none, the file is read directly."""
    from blackboard.errors import ConfigError, NotConnected
    from blackboard.runtime import connection as runtime
    from projections import query

    url = runtime.resolve_url(s)
    if url is not None:
        try:
            nc = await runtime.open_client(s, url, "bb-sql")
        except NotConnected:
            nc = None
        if nc is not None:
            try:
                return await query.ask(nc, s.nats.prefix, request)
            except query.NoProjector:
                pass
            finally:
                await nc.drain()
    if "sql" not in request:
        raise ConfigError("no projector is running: start `bb projector`")
    return query.query_file(db, str(request["sql"]))


@app.command()
def sql(
    query_text: Annotated[str, typer.Argument(metavar="QUERY", help="One SQL query.")],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="table, json (objects) or csv.")
    ] = "table",
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Query the projection (tables and views: see README, "Projections")."""
    if fmt not in ("table", "json", "csv"):
        fail(f"--format is table, json or csv, not {fmt!r}", 2)
    s = settings(config)
    answer = run(_ask_or_file(s, _db(s, db), {"sql": query_text}))
    _print_rows(answer["columns"], answer["rows"], fmt)


def _print_rows(columns: list[str], rows: list[list[Any]], fmt: str) -> None:
    if fmt == "json":
        emit_json([dict(zip(columns, r, strict=True)) for r in rows])
    elif fmt == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(columns)
        w.writerows(rows)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns)
        for r in rows:
            table.add_row(*("" if v is None else str(v) for v in r))
        Console(width=200).print(table)


@app.command()
def cost(
    goal: Annotated[str | None, typer.Argument(help="A goal; none: all goals.")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Cost by lane and model (of one goal, or of all)."""
    s = settings(config)
    where = "WHERE goal_id = '" + goal.replace("'", "''") + "'" if goal else ""
    q = (
        "SELECT lane, model, sum(calls) AS calls, sum(tokens_in) AS tokens_in, "
        "sum(tokens_out) AS tokens_out, sum(tokens_cached) AS tokens_cached, "
        "round(sum(cost_usd), 6) AS cost_usd "
        f"FROM cost_by_goal_lane_model {where} "
        "GROUP BY lane, model ORDER BY lane, model"
    )
    answer = run(_ask_or_file(s, _db(s, db), {"sql": q}))
    if as_json:
        _print_rows(answer["columns"], answer["rows"], "json")
        return
    if not answer["rows"]:
        typer.echo("no model calls" + (f" in goal {goal}" if goal else ""))
        return
    _print_rows(answer["columns"], answer["rows"], "table")
    total = sum(float(r[-1] or 0) for r in answer["rows"])
    typer.echo(f"total ${total:.6f}")


@app.command("export-parquet")
def export_parquet(
    directory: Annotated[Path, typer.Argument(help="Where the .parquet files go.")],
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write every projection table as Parquet (one file per table)."""
    from blackboard.errors import ConfigError

    s = settings(config)
    out = directory.resolve()
    path = _db(s, db)

    async def go() -> list[str]:
        try:
            answer = await _ask_or_file(s, path, {"export_parquet": str(out)})
            return list(answer["files"])
        except ConfigError:
            from projections.duckdb_view import DuckDBView

            if not path.exists():
                raise
            view = DuckDBView(path, read_only=True)
            try:
                return [str(f) for f in view.export_parquet(out)]
            finally:
                view.close()

    for f in run(go()):
        typer.echo(f)


# --- replay -----------------------------------------------------------------

FormatOpt = Annotated[str, typer.Option("--format", "-f", help="text, json or html.")]


def _log_server(s: config_mod.Settings) -> Any:
    """The server that holds the log, started just to read if need be.

    The configured or running server; else the embedded server's data left by
    `bb up` or `bb demo`.
    """
    import contextlib

    from blackboard.errors import NotConnected
    from blackboard.runtime import connection as runtime

    url = runtime.resolve_url(s)
    if url is not None:
        return contextlib.nullcontext(url)
    if (Path(s.data_dir) / "nats" / "jetstream").exists():
        return runtime.server_for(s, port=0)
    raise NotConnected(
        "no NATS server and no local data: run `bb up`, set BB_NATS_URL, "
        "or replay an export with --from-file"
    )


async def _goal_envelopes(s: config_mod.Settings, url: str, goal_id: str) -> Any:
    from blackboard.runtime import connection as runtime
    from replay import reader

    async with runtime.open_store(s, url, name="bb-replay") as store:
        return await reader.from_store(store, goal_id)


def _load_envelopes(
    s: config_mod.Settings, goal_id: str | None, from_file: Path | None
) -> Any:
    from replay import reader

    try:
        if from_file is not None:
            return reader.from_file(from_file)
        if goal_id is None:
            fail("give a goal id, or --from-file FILE", 2)
        with _log_server(s) as url:
            return run(_goal_envelopes(s, url, goal_id))
    except BlackboardError as e:
        fail(str(e))


@app.command()
def replay(
    goal: Annotated[
        str | None, typer.Argument(help="The goal (not needed with --from-file).")
    ] = None,
    fmt: FormatOpt = "text",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here, not stdout.")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Show prompts and answers whole.")
    ] = False,
    at: Annotated[
        int | None, typer.Option("--at", min=1, help="The goal as of this sequence.")
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", help="One task, in full.")
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option("--from-file", help="An NDJSON export (`bb export`): no server."),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Re-run each task's handler on the recorded answers; report "
            "where today's code acts differently (exit 1).",
        ),
    ] = False,
    otlp: Annotated[
        bool,
        typer.Option(
            "--otlp", help="Re-emit the goal's trace to OTLP (OTEL_* variables)."
        ),
    ] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Reconstruct a goal's reasoning trace from the log, calling no model.

    The same log always gives the same bytes.
    """
    from replay import render, trace

    s = settings(config)
    if fmt not in ("text", "json", "html"):
        fail(f"--format is text, json or html, not {fmt!r}", 2)
    if as_json:
        fmt = "json"
    envs = _load_envelopes(s, goal, from_file)
    goal_id = goal or envs[0].event.goal_id
    t = trace.build_trace(envs, goal_id, at=at)
    if t.submitted is None:
        fail(f"no goal {goal_id!r} in {'the file' if from_file else 'the log'}")
    if task is not None and task not in t.tasks:
        fail(f"no task {task!r} in goal {goal_id}" + (f" as of seq {at}" if at else ""))
    if verify:
        _verify(s, envs, goal_id, as_json)
        return
    if otlp:
        _otlp(t)
        return
    if fmt == "json":
        text = render.render_json(t)
        if task is not None:
            doc = render.to_json(t)
            task_doc = next(x for x in doc["tasks"] if x["task_id"] == task)
            text = json.dumps(task_doc, sort_keys=True, indent=1) + "\n"
    elif fmt == "html":
        text = render.render_html(t)
    else:
        text = render.render_text(t, full=full, task=task)
    if output is not None:
        output.write_text(text)
        typer.echo(f"wrote {output}", err=True)
    else:
        sys.stdout.write(text)


def _verify(s: config_mod.Settings, envs: Any, goal_id: str, as_json: bool) -> None:
    from replay import verify

    report = run(verify.verify(s, envs, goal_id))
    if as_json:
        emit_json(report.as_json())
    else:
        typer.echo(report.text(), nl=False)
    if report.divergences:
        raise typer.Exit(1)


def _otlp(t: Any) -> None:
    from blackboard import telemetry
    from replay import otlp

    tm = telemetry.configure_from_env("bb-replay")
    if tm.tracer is None:
        fail("set OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_TRACES_EXPORTER) to re-emit", 2)
    n = otlp.emit(t, tm)
    telemetry.shutdown()
    typer.echo(f"re-emitted {n} spans of goal {t.goal_id}", err=True)


@app.command()
def export(
    goal: Annotated[str, typer.Argument(help="The goal to export.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here, not stdout.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Write a goal's events as NDJSON (what `bb replay --from-file` reads)."""
    from replay.export import export_lines

    s = settings(config)
    data = export_lines(_load_envelopes(s, goal, None))
    if output is not None:
        output.write_bytes(data)
        typer.echo(f"wrote {output}", err=True)
    else:
        sys.stdout.buffer.write(data)


# --- goals ------------------------------------------------------------------


@app.command("run")
def run_goal(
    text: Annotated[str, typer.Argument(help="The goal, in plain words.")],
    max_depth: MaxDepth = None,
    max_tasks: MaxTasks = None,
    max_tokens: MaxTokens = None,
    max_cost: MaxCost = None,
    with_workers: Annotated[
        bool,
        typer.Option(
            "--with-workers",
            help="Run a scheduler and workers here even if a deployment is up.",
        ),
    ] = False,
    by: ByOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Run a goal: submit it, show progress, print the result and the totals.

    With no deployment to talk to (no BB_NATS_URL, no `bb up`), it starts an
    embedded server and runs the scheduler and workers in this process.
    """
    from blackboard.runtime import connection as runtime

    s = settings(config)
    url = runtime.resolve_url(s)
    in_process = url is None or with_workers
    if in_process and not s.scripted:
        _check_models(s)
    overrides = limit_overrides(max_depth, max_tasks, max_tokens, max_cost)
    _drive(s, text, url, in_process, overrides, whoami(by), as_json, demo=False)


def _check_models(s: config_mod.Settings) -> None:
    from agents import lanes, session

    problems = lanes.missing_setup(s, s.lanes)
    if not problems:
        problems = session.unreachable(s, s.lanes)
    if problems:
        fail(
            "no model to run the goal with:\n  "
            + "\n  ".join(problems)
            + "\nSet these (or configure lanes in bb.toml), or try `bb demo`"
            " (scripted models, nothing to set) or BB_SCRIPTED=1."
        )


def _drive(
    s: config_mod.Settings,
    text: str,
    url: str | None,
    in_process: bool,
    overrides: dict[str, Any],
    by: str,
    as_json: bool,
    *,
    demo: bool,
) -> None:
    import contextlib
    import time

    from agents import report, session
    from blackboard.runtime import connection as runtime

    out = sys.stderr
    live = out.isatty() and not as_json
    last: list[Any] = [0.0, ""]

    def submitted(goal_id: str) -> None:
        if not as_json:
            typer.echo(f"goal {goal_id}", err=True)

    def progress(goal: Any) -> None:
        line = report.progress_line(goal)
        now = time.monotonic()
        if as_json or line == last[1]:
            return
        if live:
            out.write("\r\x1b[2K" + line)
            out.flush()
        elif now - last[0] >= 1.0 or goal.status != "running":
            out.write(line + "\n")
        last[0], last[1] = now, line

    from blackboard import telemetry

    telemetry.configure_from_env(_service_name())
    server = contextlib.nullcontext(url) if url else runtime.server_for(s, port=0)
    try:
        with server as nats_url:
            outcome = run(
                session.drive(
                    s,
                    nats_url,
                    text,
                    in_process=in_process,
                    overrides=overrides,
                    submitted_by=by,
                    on_submitted=submitted,
                    on_progress=progress,
                    projector_db=str(_db(s, None)) if in_process else None,
                )
            )
    except BlackboardError as e:
        fail(str(e))
    finally:
        telemetry.shutdown()
    if live:
        out.write("\n")
    goal = outcome.goal
    if as_json:
        emit_json(outcome.as_json())
    else:
        _print_outcome(outcome, demo=demo)
    if goal.status != "done":
        raise typer.Exit(1)


def _print_outcome(outcome: Any, *, demo: bool) -> None:
    from agents import report

    goal = outcome.goal
    scripted = any(u.scripted for u in outcome.usage)
    label = " (scripted models)" if scripted else ""
    typer.echo(f"\ngoal {goal.goal_id} {goal.status}{label}")
    if goal.summary:
        typer.echo(f"result: {goal.summary}")
    if goal.reason:
        typer.echo(f"reason: {goal.reason}")
    if goal.status == "halted":
        typer.echo(
            f"halted by the {goal.halted_by} guardrail; its work is kept: "
            f"bb resume {goal.goal_id} --max-tasks N (or --max-cost, ...)"
        )
    typer.echo(
        f"tasks {len(goal.tasks)}  tokens {goal.tokens:,}  cost ${goal.cost_usd:.4f}"
    )
    typer.echo("")
    for line in report.cost_lines(outcome.usage):
        typer.echo(line)
    typer.echo("")
    typer.echo(f"replay it: bb replay {goal.goal_id}")


@app.command()
def demo(
    detach: Annotated[
        bool,
        typer.Option(
            "--detach", help="Only submit the demo goal to a running deployment."
        ),
    ] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Run a realistic goal end to end on scripted models: no keys, no GPU.

    Plans "add structured audit logging to every write endpoint", designs a
    schema on the frontier lane, patches ~20 endpoints on the local lane (a few
    escalate with NEED), writes a migration, reviews with fix-ups, summarises.
    """
    import msgspec

    from agents import session
    from blackboard.runtime import connection as runtime

    s = msgspec.structs.replace(settings(config), scripted=True)
    if detach:
        url = runtime.resolve_url(s)
        if url is None:
            fail(
                "no deployment to submit to: run `BB_SCRIPTED=1 bb up` first, "
                "or plain `bb demo` to run everything here"
            )
        _submit_only(s, session.DEMO_GOAL, as_json)
        return
    _drive(
        s,
        session.DEMO_GOAL,
        runtime.resolve_url(s),
        True,
        {},
        whoami(None),
        as_json,
        demo=True,
    )


def _submit_only(s: config_mod.Settings, text: str, as_json: bool) -> None:
    from blackboard.engine import submission as service

    event = service.goal_submitted(s, text, submitted_by=whoami(None))
    try:
        run(_append(s, event))
    except BlackboardError as e:
        fail(str(e))
    if as_json:
        emit_json({"goal_id": event.goal_id})
    else:
        typer.echo(event.goal_id)


@app.command()
def submit(
    text: Annotated[str, typer.Argument(help="The goal, in plain words.")],
    dag: Annotated[
        Path | None,
        typer.Option(help="JSON file with the goal's tasks, instead of a plan."),
    ] = None,
    max_depth: MaxDepth = None,
    max_tasks: MaxTasks = None,
    max_tokens: MaxTokens = None,
    max_cost: MaxCost = None,
    tenant: Annotated[
        str, typer.Option(help="Tenant the goal belongs to.")
    ] = "default",
    priority: Annotated[
        int,
        typer.Option(
            help="Higher is dispatched first among work made ready at the same "
            "moment; a lane's queue is first-in first-out beyond that."
        ),
    ] = 0,
    by: ByOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Submit a goal; prints its id."""
    from blackboard.engine import submission as service

    s = settings(config)
    try:
        specs = service.load_dag(dag) if dag else ()
        event = service.goal_submitted(
            s,
            text,
            specs=specs,
            overrides=limit_overrides(max_depth, max_tasks, max_tokens, max_cost),
            tenant=tenant,
            priority=priority,
            submitted_by=whoami(by),
        )
    except BlackboardError as e:
        fail(str(e), 2)
    run(_append(s, event))
    if as_json:
        emit_json({"goal_id": event.goal_id, "tasks": len(event.tasks)})
    else:
        typer.echo(event.goal_id)


async def _append(s: config_mod.Settings, event: Any) -> None:
    from blackboard import telemetry
    from blackboard.runtime import connection as runtime

    async with runtime.open_store(s, name="bb-submit") as store:
        # The goal's trace starts here: its context travels with the event.
        await store.append(event, traceparent=telemetry.traceparent(event.goal_id))


@app.command()
def status(
    goal: Annotated[
        str | None, typer.Argument(help="A goal id; none: all goals.")
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Redraw as the goal moves, until it ends.")
    ] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Show a goal's DAG with statuses and counts (or list every goal)."""
    s = settings(config)
    run(_status(s, goal, watch, as_json))


async def _status(
    s: config_mod.Settings, goal_id: str | None, watch: bool, as_json: bool
) -> None:
    from blackboard.cli import display
    from blackboard.engine import commands as client
    from blackboard.runtime import connection as runtime

    async with runtime.open_store(s, name="bb-status") as store:
        if goal_id is None:
            goals = await client.goals(store)
            if as_json:
                emit_json([display.goal_json(g, tasks=False) for g in goals])
            elif not goals:
                typer.echo('no goals yet: bb submit "<goal>"')
            else:
                for g in goals:
                    typer.echo(display.goal_row(g))
            return
        goal = await client.goal_state(store, goal_id)
        if not watch:
            if as_json:
                emit_json(display.goal_json(goal))
            else:
                typer.echo("\n".join(display.goal_tree(goal)))
            return
        await _watch(store, goal_id, as_json)


async def _watch(store: Any, goal_id: str, as_json: bool) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from blackboard.cli import display
    from blackboard.engine import commands as client

    if as_json:

        def emit(g: Any, _: Any) -> None:
            emit_json(display.goal_json(g, tasks=False))

        await client.wait_goal(store, goal_id, until=client.FINAL, on_batch=emit)
        return
    console = Console()
    with Live(Text("…"), console=console, auto_refresh=False) as live:

        def draw(g: Any, _: Any) -> None:
            live.update(Text("\n".join(display.goal_tree(g))), refresh=True)

        await client.wait_goal(store, goal_id, until=client.FINAL, on_batch=draw)


@app.command()
def approve(
    task: Annotated[str, typer.Argument(help="The task awaiting approval.")],
    goal: Annotated[
        str | None, typer.Option(help="Its goal (found from the log if omitted).")
    ] = None,
    deny: Annotated[bool, typer.Option("--deny", help="Refuse instead.")] = False,
    note: Annotated[str, typer.Option(help="Why; recorded with the decision.")] = "",
    by: ByOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Approve (or --deny) a task that waits for a human."""
    from blackboard.engine import commands as client

    s = settings(config)

    async def go() -> Any:
        from blackboard.runtime import connection as runtime

        async with runtime.open_store(s, name="bb-approve") as store:
            return await client.approve(
                store, task, goal_id=goal, deny=deny, note=note, by=whoami(by)
            )

    t = run(go())
    verdict = "denied" if deny else "approved"
    if as_json:
        emit_json({"goal_id": t.goal_id, "task_id": task, "decision": verdict})
    else:
        typer.echo(f"{verdict} {task} ({t.task_type} on {t.lane}) of goal {t.goal_id}")


@app.command()
def resume(
    goal: Annotated[str, typer.Argument(help="The halted goal.")],
    max_depth: MaxDepth = None,
    max_tasks: MaxTasks = None,
    max_tokens: MaxTokens = None,
    max_cost: MaxCost = None,
    by: ByOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Raise a halted goal's limits and release its held tasks."""
    from blackboard.engine import commands as client

    s = settings(config)
    overrides = limit_overrides(max_depth, max_tasks, max_tokens, max_cost)
    if not any(v is not None for v in overrides.values()):
        fail(
            "say which limit to raise: --max-tasks, --max-depth, --max-tokens or "
            "--max-cost",
            2,
        )

    async def go() -> Any:
        from blackboard.runtime import connection as runtime

        async with runtime.open_store(s, name="bb-resume") as store:
            return await client.resume(store, goal, overrides, by=whoami(by))

    g = run(go())
    held = [t.task_id for t in g.tasks.values() if t.status == "held"]
    if as_json:
        emit_json({"goal_id": goal, "released": held})
    else:
        typer.echo(
            f"resumed {goal} (halted by {g.halted_by}); released {len(held)} task(s)"
        )


@app.command()
def cancel(
    goal: Annotated[str, typer.Argument(help="The goal to cancel.")],
    reason: Annotated[str, typer.Option(help="Recorded with the cancellation.")] = "",
    by: ByOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Cancel a goal: its open tasks are cancelled, running ones stopped."""
    from blackboard.engine import commands as client

    s = settings(config)

    async def go() -> Any:
        from blackboard.runtime import connection as runtime

        async with runtime.open_store(s, name="bb-cancel") as store:
            return await client.cancel(store, goal, reason=reason, by=whoami(by))

    _, n = run(go())
    if as_json:
        emit_json({"goal_id": goal, "cancelled_tasks": n})
    else:
        typer.echo(
            f"cancelled {goal} and its {n} open task(s); running handlers stop "
            "at their next step"
        )


# --- the log ----------------------------------------------------------------


@app.command()
def tail(
    goal: Annotated[str | None, typer.Option(help="Only this goal.")] = None,
    kind: Annotated[
        str | None, typer.Option(help="Only this kind, e.g. task_failed.")
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Replay the log from its start.")
    ] = False,
    since: Annotated[
        int | None, typer.Option(help="Start at this stream sequence.")
    ] = None,
    count: Annotated[
        int | None, typer.Option(help="Exit after this many events.")
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Follow events as they are appended (Ctrl-C to stop)."""
    from blackboard.log.events import KINDS

    if kind is not None and kind not in KINDS:
        fail(f"unknown kind {kind!r}; one of: {', '.join(sorted(KINDS))}", 2)
    s = settings(config)
    start = since if since is not None else (1 if from_start else None)
    run(_tail(s, goal, kind, start, count, as_json))


async def _tail(
    s: config_mod.Settings,
    goal: str | None,
    kind: str | None,
    start: int | None,
    count: int | None,
    as_json: bool,
) -> None:
    from blackboard.cli import display
    from blackboard.errors import MalformedEvent
    from blackboard.log import codec
    from blackboard.runtime import connection as runtime

    def bad(err: MalformedEvent) -> None:
        typer.echo(f"bb: skipped malformed message: {err}", err=True)

    async with runtime.open_store(s, name="bb-tail") as store:
        subj = store.subjects
        if kind:
            flt = subj.kind_filter(kind, goal)
        elif goal:
            flt = subj.goal_events(goal)
        else:
            flt = subj.events_all
        seen = 0
        async for env in store.follow(flt, from_seq=start, on_bad=bad):
            if as_json:
                body = codec.to_builtins(env.event)
                typer.echo(
                    json.dumps({"seq": env.seq, "subject": env.subject, "event": body})
                )
            else:
                typer.echo(display.line(env))
            sys.stdout.flush()
            seen += 1
            if count is not None and seen >= count:
                return


@app.command()
def schema() -> None:
    """Print the JSON Schema (2020-12) of every event body, blob stubs included."""
    from blackboard.log.codec import wire_schema

    typer.echo(json.dumps(wire_schema(), indent=2, sort_keys=True))


# --- benchmarks ---------------------------------------------------------------


@bench_app.command("append")
def bench_append(
    events: Annotated[
        int, typer.Option("-n", "--events", help="Events per mode.")
    ] = 5000,
    as_json: JsonOpt = False,
) -> None:
    """Events/s of guarded and unguarded appends beside raw JetStream publish."""
    from blackboard.tools import bench

    result = run(bench.append(events))
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
    as_json: JsonOpt = False,
) -> None:
    """No-op tasks/s end to end, fan-out wall time, chain hop latency, raw rates."""
    from blackboard.tools import bench

    result = run(bench.engine(tasks, fanout, chain, concurrency, otel))
    result["otel"] = otel
    if as_json:
        emit_json(result)
    else:
        bench.print_table(result)


@bench_app.command("projector")
def bench_projector(
    events: Annotated[int, typer.Option(help="Events in the log.")] = 1_000_000,
    batch: Annotated[int, typer.Option(help="Events per transaction.")] = 10_000,
    as_json: JsonOpt = False,
) -> None:
    """Events/s applied to DuckDB beside DuckDB's bulk load; cost view latency."""
    from blackboard.tools import bench

    result = bench.projector(events, batch)
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
    from blackboard.tools import bench

    result = bench.replay(events)
    if as_json:
        emit_json(result)
    else:
        for k, v in result.items():
            typer.echo(f"{k:>16}: {v}")


def main() -> None:
    """Entry point of the ``bb`` console script."""
    app()


if __name__ == "__main__":
    main()
