"""The log itself: `bb tail`, `bb schema`."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from blackboard.cli.common import (
    INSPECT,
    ConfigOpt,
    JsonOpt,
    app,
    fail,
    run,
    settings,
)
from blackboard.runtime import config as config_mod

# --- the log ----------------------------------------------------------------


@app.command(rich_help_panel=INSPECT)
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
    from blackboard.errors import BlackboardError
    from blackboard.runtime import connection as runtime

    try:
        # Offline too: the data dir's log is served for the command's length.
        with runtime.log_server(s) as url:
            run(_tail(s, url, goal, kind, start, count, as_json))
    except BlackboardError as e:
        fail(str(e))


async def _tail(
    s: config_mod.Settings,
    url: str,
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

    async with runtime.open_store(s, url, name="bb-tail") as store:
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


@app.command(rich_help_panel=INSPECT)
def schema() -> None:
    """Print the JSON Schema (2020-12) of every event body, blob stubs included."""
    from blackboard.log.codec import wire_schema

    typer.echo(json.dumps(wire_schema(), indent=2, sort_keys=True))
