"""The ``bb`` command line: the front door. Thin: parse, call, print.

Each command imports what it needs inside its body, so ``bb tail`` does not pay
for the model SDKs or DuckDB. Errors the user can act on are one line on
stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from blackboard import config as config_mod
from blackboard.errors import BlackboardError

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


def serve(coro: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived command until Ctrl-C, its normal way to stop."""
    try:
        asyncio.run(coro)
    except BlackboardError as e:
        fail(str(e))
    except KeyboardInterrupt:
        return


def settings(path: Path | None = None) -> config_mod.Settings:
    """Load settings or fail with the reason."""
    try:
        return config_mod.load(path)
    except BlackboardError as e:
        fail(str(e), 2)


def emit_json(value: Any) -> None:
    """Print a JSON document on stdout."""
    typer.echo(json.dumps(value, indent=None, sort_keys=False, default=str))


# --- up / submit / tail / schema --------------------------------------------


@app.command()
def up(
    port: Annotated[
        int, typer.Option(help="Port of the embedded server (0: 4222 if free).")
    ] = 0,
    config: ConfigOpt = None,
) -> None:
    """Run a deployment: the embedded server unless BB_NATS_URL is set.

    Ctrl-C stops it cleanly; the data stays under BB_DATA_DIR (./.bb).
    """
    from blackboard import runtime

    s = settings(config)
    try:
        with runtime.server_for(s, port=port or _default_port()) as url:
            typer.echo(f"NATS at {url}  (export BB_NATS_URL={url})")
            serve(_up(s, url))
    except KeyboardInterrupt:
        pass  # a second Ctrl-C during shutdown
    typer.echo("stopped; data kept in " + str(Path(s.data_dir).resolve()))


def _default_port() -> int:
    from blackboard.server import _port_in_use

    return 0 if _port_in_use("127.0.0.1", 4222) else 4222


async def _up(s: config_mod.Settings, url: str) -> None:
    from blackboard import runtime

    async with runtime.open_store(s, url, name="bb-up") as store:
        typer.echo(
            f"streams {store.events_stream}, {store.work_stream} ready; Ctrl-C to stop"
        )
        await asyncio.Event().wait()


@app.command()
def submit(
    text: Annotated[str, typer.Argument(help="The goal, in plain words.")],
    dag: Annotated[
        Path | None,
        typer.Option(help="JSON file with the goal's tasks, instead of a plan."),
    ] = None,
    max_depth: Annotated[int | None, typer.Option(help="Guardrail override.")] = None,
    max_tasks: Annotated[int | None, typer.Option(help="Guardrail override.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Guardrail override.")] = None,
    max_cost: Annotated[
        float | None, typer.Option(help="Guardrail override, in USD.")
    ] = None,
    tenant: Annotated[
        str, typer.Option(help="Tenant the goal belongs to.")
    ] = "default",
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    by: Annotated[str | None, typer.Option(help="Who submits (default $USER).")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Submit a goal; prints its id."""
    from blackboard import service

    s = settings(config)
    try:
        specs = service.load_dag(dag) if dag else ()
        event = service.goal_submitted(
            s,
            text,
            specs=specs,
            overrides={
                "max_depth": max_depth,
                "max_tasks": max_tasks,
                "max_tokens": max_tokens,
                "max_cost_usd": max_cost,
            },
            tenant=tenant,
            priority=priority,
            submitted_by=by,
        )
    except BlackboardError as e:
        fail(str(e), 2)
    run(_submit(s, event))
    if as_json:
        emit_json({"goal_id": event.goal_id, "tasks": len(event.tasks)})
    else:
        typer.echo(event.goal_id)


async def _submit(s: config_mod.Settings, event: Any) -> None:
    from blackboard import runtime

    async with runtime.open_store(s, name="bb-submit") as store:
        await store.append(event)


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
    from blackboard.events import KINDS

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
    from blackboard import codec, display, runtime
    from blackboard.errors import MalformedEvent

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
    """Print the JSON Schema of every event."""
    from blackboard.events import json_schema

    typer.echo(json.dumps(json_schema(), indent=2, sort_keys=True))


# --- benchmarks ---------------------------------------------------------------


@bench_app.command("append")
def bench_append(
    events: Annotated[
        int, typer.Option("-n", "--events", help="Events per mode.")
    ] = 5000,
    as_json: JsonOpt = False,
) -> None:
    """Events/s of guarded and unguarded appends beside raw JetStream publish."""
    from blackboard import bench

    result = run(bench.append(events))
    if as_json:
        emit_json(result)
    else:
        bench.print_table(result)


def main() -> None:
    """Entry point of the ``bb`` console script."""
    app()


if __name__ == "__main__":
    main()
