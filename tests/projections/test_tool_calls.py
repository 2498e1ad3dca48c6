"""Tool calls in the projection: one row per call from its start and its end,
whether the two land in one batch or in two, and the views by tool and lane.

The events are appended to the in-memory store and projected by the real
projector (its durable consumer, fold, rows and DuckDB file).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import pytest

from blackboard.log.memory import MemoryEventStore
from projections import schema
from projections.duckdb_view import DuckDBView
from projections.rows import Rows, add_event
from projections.runner import Projector
from tests import tool_history as h
from tests.golden.derive import projected

if TYPE_CHECKING:
    from pathlib import Path


async def project(tmp_path: Path, batch: int) -> Path:
    """The history, appended to a store and projected ``batch`` events at a time."""
    store = MemoryEventStore()
    for e in h.events():
        await store.append(e)
    last = await store.events_last_seq()
    db = tmp_path / f"p{batch}.duckdb"
    projector = Projector(store, db, batch=batch)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        await projector.caught_up(last, timeout_s=20)
        assert projector.last_seq == last
    finally:
        stop.set()
        await task
    return db


def rows(db: Path, sql: str) -> list[dict[str, Any]]:
    view = DuckDBView(db, read_only=True)
    try:
        columns, records = view.query(sql)
    finally:
        view.close()
    return [dict(zip(columns, r, strict=True)) for r in records]


CALLS = (
    "SELECT task_id, call_id, attempt, tool, source, effect, status, duration_ms,"
    " error, arguments, result, model_call, idempotency_key,"
    " started_at IS NOT NULL AS started, finished_at IS NOT NULL AS finished"
    " FROM tool_calls ORDER BY task_id, call_id, attempt"
)


async def test_one_row_per_call_in_one_batch_or_event_by_event(tmp_path: Path):
    whole = rows(await project(tmp_path, 1000), CALLS)
    # Batches of one: every end lands in another transaction than its start.
    one_by_one = rows(await project(tmp_path, 1), CALLS)
    assert whole == one_by_one
    got = {(r["task_id"], r["call_id"], r["attempt"]): r for r in whole}
    assert list(got) == [
        ("T1", "c1", 1),
        ("T1", "c2", 1),
        ("T1", "c3", 1),
        ("T2", "c5", 1),
        # Started by attempt 1, whose worker died; run again by attempt 2.
        ("T2", "c6", 1),
        ("T2", "c6", 2),
        ("T2", "c7", 2),
    ]
    status = {k: (r["status"], r["duration_ms"], r["error"]) for k, r in got.items()}
    assert status == {
        ("T1", "c1", 1): ("ok", 2.0, None),
        ("T1", "c2", 1): ("error", 4.0, "disk full"),
        ("T1", "c3", 1): ("refused", 0.0, "command not allowed: rm"),
        ("T2", "c5", 1): ("ok", 6.0, None),
        ("T2", "c6", 1): ("running", None, None),
        ("T2", "c6", 2): ("ok", 8.0, None),
        ("T2", "c7", 2): ("running", None, None),
    }
    c2 = got[("T1", "c2", 1)]
    assert (c2["tool"], c2["source"], c2["effect"]) == (
        "workspace.write",
        "workspace",
        "reversible",
    )
    assert json.loads(c2["arguments"]) == {"path": "b.py", "content": h.LONG}
    assert c2["result"] is None
    assert json.loads(got[("T2", "c5", 1)]["result"]) == {"lines": 3}
    assert json.loads(got[("T1", "c1", 1)]["result"]) == "x = 1\n"
    assert c2["model_call"] == "mc-T1-10"
    # The re-run keeps the key of the answer that asked for it.
    assert got[("T2", "c6", 2)]["idempotency_key"] == h.key("T2", "c6")
    assert got[("T2", "c6", 2)]["model_call"] == "mc-T2-10"
    assert all(r["started"] for r in whole)
    assert [k for k, r in got.items() if not r["finished"]] == [
        ("T2", "c6", 1),
        ("T2", "c7", 2),
    ]


async def test_views_by_tool_and_by_lane(tmp_path: Path):
    db = await project(tmp_path, 1)
    by_tool = {r.pop("tool"): r for r in rows(db, "SELECT * FROM tool_calls_by_tool")}
    assert set(by_tool) == {"workspace.read", "workspace.write", "shell.run"}
    read = by_tool["workspace.read"]
    assert {k: read[k] for k in ("calls", "ok", "errors", "refused", "running")} == {
        "calls": 5,
        "ok": 3,
        "errors": 0,
        "refused": 0,
        "running": 2,
    }
    assert read["error_rate"] == 0
    # Latency of the calls that ran (2, 6 and 8 ms).
    assert read["duration_ms_avg"] == pytest.approx(16 / 3)
    assert read["duration_ms_p50"] == pytest.approx(6.0)
    assert read["duration_ms_p95"] == pytest.approx(7.8)
    assert read["duration_ms_max"] == pytest.approx(8.0)
    assert by_tool["workspace.write"]["errors"] == 1
    assert by_tool["workspace.write"]["error_rate"] == 1.0
    shell = by_tool["shell.run"]
    assert (shell["refused"], shell["error_rate"]) == (1, 1.0)
    # A refused call never ran: it has no latency.
    assert shell["duration_ms_avg"] is None and shell["duration_ms_max"] is None

    by_lane = {r.pop("lane"): r for r in rows(db, "SELECT * FROM tool_calls_by_lane")}
    assert set(by_lane) == {"local", "frontier"}
    local, frontier = by_lane["local"], by_lane["frontier"]
    assert (local["tools"], local["calls"], local["ok"], local["errors"]) == (
        3,
        3,
        1,
        1,
    )
    assert local["refused"] == 1 and local["running"] == 0
    assert local["error_rate"] == pytest.approx(2 / 3)
    assert local["duration_ms_p50"] == pytest.approx(3.0)
    assert local["duration_ms_max"] == pytest.approx(4.0)
    assert (frontier["tools"], frontier["calls"], frontier["running"]) == (1, 4, 2)
    assert frontier["error_rate"] == 0
    assert frontier["duration_ms_avg"] == pytest.approx(7.0)


def test_the_tool_views_count_no_hugeint(tmp_path: Path):
    with projected(h.envelopes()) as view:
        for name in ("tool_calls_by_tool", "tool_calls_by_lane"):
            _, described = view.query(f"DESCRIBE SELECT * FROM {name}")
            types = {r[0]: r[1] for r in described}
            counts = ("calls", "ok", "errors", "refused", "running")
            assert all(types[c] == "BIGINT" for c in counts), (name, types)
            assert types["duration_ms_p95"] == "DOUBLE"


def test_an_end_without_its_start_still_makes_a_row(tmp_path: Path):
    """A call whose start came later (or never) keeps its end, in a batch
    and across batches in the file (the same merge, in SQL)."""
    from blackboard.engine.state import fold

    envs = h.envelopes()
    start, end = (
        next(env for env in envs if env.event.event_id == i)
        for i in ("ts1-T1-14", "tf1-T1-18")
    )
    r = Rows()
    add_event(r, end)
    add_event(r, start)  # a start after the end never undoes it
    (row,) = r.tool_calls.values()
    assert (row["status"], row["error"], row["duration_ms"]) == (
        "error",
        "disk full",
        4.0,
    )
    assert row["source"] == "workspace" and row["arguments"]["path"] == "b.py"
    assert set(row) == set(schema.COLUMNS["tool_calls"])

    state = fold(envs)
    view = DuckDBView(tmp_path / "p.duckdb")
    try:
        for i, env in enumerate((end, start)):
            one = Rows()
            add_event(one, env)
            view.apply(one, state, i + 1)
        _, got = view.query(
            "SELECT status, error, duration_ms, source, arguments->>'path'"
            " FROM tool_calls"
        )
    finally:
        view.close()
    assert got == [("error", "disk full", 4.0, "workspace", "b.py")]
