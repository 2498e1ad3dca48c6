"""The projection as analysts' tools see it: types, rates, and reading it live.

pandas and polars map DuckDB's HUGEINT to float64 / Decimal(38,0), and a
Parquet column of DuckDB's JSON type to Binary: sums are BIGINT and bodies
VARCHAR. DuckDB lets no other process open a file while one writes it, so a
live projection is read through the projector (`bb sql`, `bb export-parquet`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import duckdb
import pytest

from blackboard.engine import control as client
from blackboard.log.events import TaskSpec
from blackboard.runtime.inprocess import running
from projections import schema
from projections.duckdb_view import DuckDBView
from projections.runner import Projector
from tests.e2e.test_cli_basics import bb
from tests.engine.conftest import engine_settings, submit
from tests.engine_handlers import HANDLERS
from tests.projections.test_projector import caught_up, fill, projector, until

if TYPE_CHECKING:
    from pathlib import Path

    from blackboard.log.store import JetStreamEventStore

SUMS = {
    "cost_by_goal_lane_model": ("tokens_in", "tokens_out", "tokens_cached"),
    "frontier_share": ("frontier_tokens", "total_tokens"),
    "task_type_rates": ("retries",),
}
"""View columns that add integers up: BIGINT, never HUGEINT."""


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list[str] | None = None):
    row = con.execute(sql, params or []).fetchone()
    assert row is not None, sql
    return row[0]


def _types(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    rows = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    return {r[0]: r[1] for r in rows}


def test_sums_in_the_views_are_bigint(tmp_path: Path):
    view = DuckDBView(tmp_path / "p.duckdb")
    try:
        con = view.con
        con.execute(
            "INSERT INTO model_calls (seq, goal_id, lane, model, tokens_in,"
            " tokens_out, tokens_cached, cost_usd, scripted)"
            " VALUES (1, 'G', 'frontier', 'm', 10, 5, 2, 0.1, true)"
        )
        con.execute(
            "INSERT INTO tasks (goal_id, task_id, type, status, depth, failures)"
            " VALUES ('G', 'T', 'plan', 'done', 0, 1)"
        )
        for name in schema.VIEWS:
            types = _types(con, name)
            assert not {t for t in types.values() if "INT128" in t or "HUGEINT" in t}
            assert not {t for t in types.values() if t.startswith("DECIMAL")}, name
            for col in SUMS.get(name, ()):
                assert types[col] == "BIGINT", (name, col)
                typ = _one(con, f"SELECT typeof({col}) FROM {name}")
                assert typ == "BIGINT", (name, col)
        assert con.execute(
            "SELECT tokens_in, total_tokens FROM cost_by_goal_lane_model"
            " JOIN frontier_share USING (goal_id)"
        ).fetchall() == [(10, 17)]
    finally:
        view.close()


@pytest.mark.integration
async def test_task_type_rates_counts_only_failures_that_were_retried(
    store: JetStreamEventStore, tmp_path: Path
):
    s = engine_settings(backoff_base_s=0.1)
    db = tmp_path / "p.duckdb"
    async with running(store, s, HANDLERS, projector=Projector(store, db)) as st:
        # One goal each: a failure for good fails its goal and cancels the rest.
        goals = {
            t: await submit(store, s, [TaskSpec(task_id="t", type=t, lane="local")])
            for t in ("echo", "flaky", "broken", "busy")
        }
        for t, g in goals.items():
            want = "failed" if t in ("broken", "busy") else "done"
            assert (await client.wait_goal(store, g, timeout_s=60)).status == want
        info = await store.js.stream_info(store.events_stream)
        assert st.projector is not None
        await st.projector.caught_up(int(info.state.last_seq))
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT type, tasks, retries, retry_rate, failed, failure_rate"
            " FROM task_type_rates ORDER BY type"
        ).fetchall()
    finally:
        con.close()
    assert rows == [
        # A failure that was never retried (not retryable) is no retry.
        ("broken", 1, 0, 0.0, 1, 1.0),
        # Retried twice, then failed for good on its third and last attempt.
        ("busy", 1, 2, 1.0, 1, 1.0),
        ("echo", 1, 0, 0.0, 0, 0.0),
        ("flaky", 1, 1, 1.0, 0, 0.0),
    ]


def _check_parquet(out: Path) -> None:
    con = duckdb.connect()
    try:
        events = str(out / "events.parquet")
        assert _types(con, f"read_parquet('{events}')")["body"] == "VARCHAR"
        # Parquet's own annotation is what polars and pandas go by: a string.
        annotation = _one(
            con,
            "SELECT converted_type FROM parquet_schema(?) WHERE name = 'body'",
            [events],
        )
        assert annotation == "UTF8"
        bodies = con.execute(f"SELECT kind, body FROM '{events}'").fetchall()
        assert bodies and all(json.loads(b)["type"] == k for k, b in bodies)
        for name, cols in SUMS.items():
            types = _types(con, f"read_parquet('{out / name}.parquet')")
            assert all(types[c] == "BIGINT" for c in cols), (name, types)
        calls = _one(
            con, f"SELECT sum(calls) FROM '{out}/cost_by_goal_lane_model.parquet'"
        )
        assert calls > 0
    finally:
        con.close()


@pytest.mark.integration
async def test_read_while_the_projector_runs_through_sql_and_parquet(
    store: JetStreamEventStore, cli_env: dict[str, str], tmp_path: Path
):
    last = await fill(store, goals=1, noop_tasks=5)
    db, log = tmp_path / "live.duckdb", tmp_path / "projector.log"
    p = projector(cli_env, db, log)
    try:
        until(lambda: caught_up(cli_env, db, last))
        # The projector holds the file: opening it, even read-only, fails.
        # This is DuckDB's one-writer-process rule, and why the supported way
        # to read a live projection is to ask the projector.
        with pytest.raises(duckdb.IOException, match="lock"):
            duckdb.connect(str(db), read_only=True)
        r = bb(
            ["sql", "SELECT sum(tokens_in) AS t FROM cost_by_goal_lane_model",
             "--db", str(db), "--format", "json"],
            cli_env,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)[0]["t"] > 0
        r = bb(["export-parquet", str(tmp_path / "live"), "--db", str(db)], cli_env)
        assert r.returncode == 0, r.stderr
        _check_parquet(tmp_path / "live")
    finally:
        p.terminate()
        p.wait(timeout=30)
    # With no projector running, the file is read directly: the same result.
    r = bb(["export-parquet", str(tmp_path / "idle"), "--db", str(db)], cli_env)
    assert r.returncode == 0, r.stderr
    _check_parquet(tmp_path / "idle")


def test_the_size_cap_is_the_same_reading_the_file(tmp_path):
    """Offline (the file read directly) a query over the cap fails as online."""
    import pytest

    from blackboard.errors import ConfigError
    from projections import query
    from projections.duckdb_view import MAX_REPLY, DuckDBView

    db = tmp_path / "p.duckdb"
    DuckDBView(db).close()
    big = f"SELECT repeat('x', 1000) AS x FROM range({MAX_REPLY // 900})"
    with pytest.raises(ConfigError, match="over what one answer holds"):
        query.query_file(db, big)
    assert query.query_file(db, "SELECT 1 AS one")["rows"] == [[1]]
