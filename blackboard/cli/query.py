"""Asking the projection: `bb sql`, `bb cost`, `bb export-parquet`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from blackboard.cli.common import (
    INSPECT,
    ConfigOpt,
    DbOpt,
    JsonOpt,
    app,
    db_path,
    emit_json,
    fail,
    run,
    settings,
)
from blackboard.runtime import config as config_mod


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


@app.command(rich_help_panel=INSPECT)
def sql(
    query_text: Annotated[str, typer.Argument(metavar="QUERY", help="One SQL query.")],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="table, json (objects) or csv.")
    ] = "table",
    db: DbOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Query the projection (tables and views: see README, "Projections")."""
    if fmt not in ("table", "json", "csv"):
        fail(f"--format is table, json or csv, not {fmt!r}", 2)
    if as_json:
        if fmt not in ("table", "json"):
            fail(f"--json and --format {fmt} contradict each other: choose one", 2)
        fmt = "json"
    s = settings(config)
    answer = run(_ask_or_file(s, db_path(s, db), {"sql": query_text}))
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


@app.command(rich_help_panel=INSPECT)
def cost(
    goal: Annotated[str | None, typer.Argument(help="A goal; none: all goals.")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Cost by lane and model (of one goal, or of all)."""
    s = settings(config)
    where = ""
    if goal:
        from blackboard.log.subjects import check_token

        try:
            check_token(goal, "goal id")
        except ValueError as e:
            fail(str(e), 2)
        # A legal id is letters, digits, '-' and '_': safe inside quotes.
        where = f"WHERE goal_id = '{goal}'"
        known = run(
            _ask_or_file(
                s, db_path(s, db), {"sql": f"SELECT count(*) FROM goals {where}"}
            )
        )
        if not known["rows"] or not known["rows"][0][0]:
            fail(f"no goal {goal!r} in the projection")
    q = (
        "SELECT lane, model, sum(calls) AS calls, sum(tokens_in) AS tokens_in, "
        "sum(tokens_out) AS tokens_out, sum(tokens_cached) AS tokens_cached, "
        "round(sum(cost_usd), 6) AS cost_usd "
        f"FROM cost_by_goal_lane_model {where} "
        "GROUP BY lane, model ORDER BY lane, model"
    )
    answer = run(_ask_or_file(s, db_path(s, db), {"sql": q}))
    if as_json:
        _print_rows(answer["columns"], answer["rows"], "json")
        return
    if not answer["rows"]:
        typer.echo("no model calls" + (f" in goal {goal}" if goal else ""))
        return
    _print_rows(answer["columns"], answer["rows"], "table")
    total = sum(float(r[-1] or 0) for r in answer["rows"])
    typer.echo(f"total ${total:.6f}")


@app.command("export-parquet", rich_help_panel=INSPECT)
def export_parquet(
    directory: Annotated[Path, typer.Argument(help="Where the .parquet files go.")],
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write every projection table as Parquet (one file per table)."""
    from blackboard.errors import ConfigError

    s = settings(config)
    out = directory.resolve()
    path = db_path(s, db)

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
