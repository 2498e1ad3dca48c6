"""The projection as analysts' tools see it: types, rates, and reading it live.

pandas and polars map DuckDB's HUGEINT to float64 / Decimal(38,0), and a
Parquet column of DuckDB's JSON type to Binary: sums are BIGINT and bodies
VARCHAR. DuckDB lets no other process open a file while one writes it, so a
live projection is read through the projector (`bb sql`, `bb export-parquet`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb

from blackboard import client
from blackboard.events import TaskSpec
from blackboard.stack import running
from projections import schema
from projections.duckdb_view import DuckDBView
from tests.engine.conftest import engine_settings, submit
from tests.engine_handlers import HANDLERS

if TYPE_CHECKING:
    from pathlib import Path

    from blackboard.store import JetStreamEventStore

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


async def test_task_type_rates_counts_only_failures_that_were_retried(
    store: JetStreamEventStore, tmp_path: Path
):
    s = engine_settings(backoff_base_s=0.1)
    db = tmp_path / "p.duckdb"
    async with running(store, s, HANDLERS, projector_db=db) as st:
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
