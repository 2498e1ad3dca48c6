"""``bb tools``: what agents may act through, lane by lane."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

import typer

from blackboard.cli.common import (
    INSPECT,
    ConfigOpt,
    JsonOpt,
    app,
    emit_json,
    fail,
    settings,
)
from blackboard.errors import BlackboardError

if TYPE_CHECKING:
    from blackboard.runtime import config as config_mod


@app.command(rich_help_panel=INSPECT)
def tools(
    lane: Annotated[
        str | None, typer.Option("--lane", help="Only this lane (default: all).")
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """List the tools a lane's workers offer their models: source, effect, schema.

    MCP servers are started to ask for their tools, then stopped; one that
    cannot start is named, and its tools are absent (as for a worker).
    """
    s = settings(config)
    if lane is not None and lane not in s.lanes:
        fail(f"unknown lane {lane!r}; configured: {', '.join(s.lanes)}", 2)
    lanes = [lane] if lane is not None else list(s.lanes)
    try:
        found = asyncio.run(_offered(s, lanes))
    except BlackboardError as e:
        fail(str(e), 2)
    if as_json:
        emit_json(found)
        return
    for name, listed in found["lanes"].items():
        typer.echo(f"lane {name}: {len(listed)} tool(s)")
        for t in listed:
            typer.echo(
                f"  {t['name']:<28} {t['effect']:<12} {t['source']:<14} "
                f"{_first_line(t['description'])}"
            )
    for server, why in found["failures"].items():
        typer.echo(f"not available: {server}: {why}", err=True)


async def _offered(s: config_mod.Settings, lanes: list[str]) -> dict[str, Any]:
    from agents.handlers import for_worker

    agent = for_worker(s)
    try:
        out: dict[str, Any] = {"lanes": {}, "failures": {}}
        for name in lanes:
            listed = await agent.toolbox.offered(agent.lanes.lane(name).tools)
            out["lanes"][name] = [t.describe() for t in listed]
        out["failures"] = dict(agent.toolbox.failures)
        return out
    finally:
        await agent.aclose()


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 60 else line[:59] + "…"
