"""Reading a goal back: `bb replay`, `bb export`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from blackboard.cli.common import (
    INSPECT,
    ConfigOpt,
    JsonOpt,
    app,
    emit_json,
    fail,
    one_shot,
    run,
    settings,
)
from blackboard.errors import BlackboardError
from blackboard.runtime import config as config_mod

# --- replay -----------------------------------------------------------------

FormatOpt = Annotated[str, typer.Option("--format", "-f", help="text, json or html.")]


def _log_server(s: config_mod.Settings) -> Any:
    from blackboard.runtime import connection as runtime

    return runtime.log_server(s)


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


@app.command(rich_help_panel=INSPECT)
def replay(
    ctx: typer.Context,
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

    one_shot(ctx)
    s = settings(config)
    if fmt not in ("text", "json", "html"):
        fail(f"--format is text, json or html, not {fmt!r}", 2)
    if as_json:
        if fmt not in ("text", "json"):
            fail(f"--json and --format {fmt} contradict each other: choose one", 2)
        fmt = "json"
    envs = _load_envelopes(s, goal, from_file)
    goal_id = goal or envs[0].event.goal_id
    t = trace.build_trace(envs, goal_id, at=at)
    if t.submitted is None:
        first = next((e.seq for e in envs if e.event.goal_id == goal_id), None)
        if at is not None and first is not None:
            fail(f"--at {at} is before goal {goal_id} began (first event: {first})")
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


@app.command(rich_help_panel=INSPECT)
def export(
    ctx: typer.Context,
    goal: Annotated[str, typer.Argument(help="The goal to export.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here, not stdout.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Write a goal's events as NDJSON (what `bb replay --from-file` reads)."""
    from replay.export import export_lines

    one_shot(ctx)
    s = settings(config)
    data = export_lines(_load_envelopes(s, goal, None))
    if output is not None:
        output.write_bytes(data)
        typer.echo(f"wrote {output}", err=True)
    else:
        sys.stdout.buffer.write(data)
