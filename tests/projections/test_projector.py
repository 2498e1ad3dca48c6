"""The projection: exact totals, exactly once across a kill, dead letters,
`bb sql` while it runs, and `--rebuild` equal to the incremental run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pytest

from agents.handlers import Agents
from agents.session import DEMO_GOAL
from blackboard.engine import control as client
from blackboard.engine.handlers import BUILTIN
from blackboard.log.events import ModelCalled, TaskSpec
from blackboard.runtime import config
from blackboard.runtime.inprocess import running
from projections import schema
from projections.runner import Projector
from tests import waiting
from tests.e2e.test_cli_basics import bb
from tests.engine.conftest import submit

if TYPE_CHECKING:
    from blackboard.log.store import JetStreamEventStore

ROOT = Path(__file__).resolve().parents[2]


def scripted() -> config.Settings:
    return config.load(env={"BB_SCRIPTED": "1", "BB_LEASE_SECONDS": "5"}, path=None)


async def fill(
    store: JetStreamEventStore, goals: int = 3, noop_tasks: int = 400
) -> int:
    """Demo goals (model calls, effects, NEED...) and a goal of no-op tasks."""
    s = scripted()
    agents = Agents(s)
    async with running(store, s, {**BUILTIN, **agents.handlers()}):
        ids = [await submit(store, s, [], DEMO_GOAL) for _ in range(goals)]
        ids.append(
            await submit(
                store,
                s,
                [
                    TaskSpec(task_id=f"n{i}", type="noop", lane="local")
                    for i in range(noop_tasks)
                ],
            )
        )
        for g in ids:
            assert (await client.wait_goal(store, g, timeout_s=120)).status == "done"
    await agents.aclose()
    info = await store.js.stream_info(store.events_stream)
    return int(info.state.last_seq)


def tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    # Read a copy: this process must not hold a lock on the projector's file.
    import shutil
    import tempfile

    copy = Path(tempfile.mkdtemp()) / db.name
    shutil.copy(db, copy)
    if Path(f"{db}.wal").exists():
        shutil.copy(f"{db}.wal", f"{copy}.wal")
    con = duckdb.connect(str(copy), read_only=True)
    try:
        out = {}
        for t in schema.TABLES:
            keys = ", ".join(f'"{k}"' for k in schema.KEYS[t])
            out[t] = con.execute(f"SELECT * FROM {t} ORDER BY {keys}").fetchall()
        out["state"] = con.execute("SELECT last_seq FROM projector_state").fetchall()
        return out
    finally:
        con.close()


def projector(
    env: dict[str, str], db: Path, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "blackboard.cli",
                "projector",
                "--db",
                str(db),
                *extra,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def until(predicate: Any, timeout: float = 60) -> None:
    waiting.until(predicate, timeout_s=timeout)


def sql(env: dict[str, str], db: Path, q: str) -> list[dict[str, Any]]:
    r = bb(["sql", q, "--db", str(db), "--format", "json"], env, timeout=30)
    assert r.returncode == 0, r.stderr
    rows: list[dict[str, Any]] = json.loads(r.stdout)
    return rows


def _pause(seconds: float) -> None:
    time.sleep(seconds)  # let the projector get going before the kill


def caught_up(env: dict[str, str], db: Path, last: int) -> bool:
    q = "SELECT last_seq FROM projector_state"
    r = bb(["sql", q, "--db", str(db), "--format", "json"], env, timeout=30)
    if r.returncode != 0:  # still starting: no file yet, or no answer yet
        return False
    rows: list[dict[str, Any]] = json.loads(r.stdout)
    return bool(rows) and rows[0]["last_seq"] >= last


@pytest.mark.integration
async def test_killed_mid_batch_then_restarted_equals_a_rebuild(
    store, cli_env, tmp_path
):
    last = await fill(store)
    garbage_at = last + 1
    await store.js.publish(
        "bb.in.evt.01GARBAGE0000000000000000.t.task_completed", b"{oops"
    )
    last = await fill(store, goals=1, noop_tasks=50)  # events after the garbage
    db, log = tmp_path / "inc.duckdb", tmp_path / "projector.log"

    p = projector(cli_env, db, log, "--batch", "50")
    until(lambda: "at sequence" in log.read_text())
    _pause(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    partial = tables(db)["state"][0][0]
    assert 0 < partial < last, "the kill did not land mid-way"

    p = projector(cli_env, db, log, "--batch", "50")
    try:
        until(lambda: caught_up(cli_env, db, last))
        # `bb sql` answers while it runs (over NATS: the file is locked).
        rows = sql(cli_env, db, "SELECT count(*) AS n FROM events")
        assert rows[0]["n"] == last - 1  # every event but the garbage
    finally:
        p.terminate()
        p.wait(timeout=30)
    incremental = tables(db)

    rebuilt_db = tmp_path / "rebuilt.duckdb"
    p = projector(cli_env, rebuilt_db, tmp_path / "rebuild.log", "--rebuild")
    try:
        until(lambda: caught_up(cli_env, rebuilt_db, last))
    finally:
        p.terminate()
        p.wait(timeout=30)
    rebuilt = tables(rebuilt_db)
    for t in (*schema.TABLES, "state"):
        assert incremental[t] == rebuilt[t], t
    (dead,) = incremental["dead_letters"]
    assert dead[0] == garbage_at and "task_completed" in dead[1]
    assert "Traceback" not in log.read_text()


@pytest.mark.integration
async def test_model_call_totals_equal_sums_from_the_raw_events(store, tmp_path):
    s = scripted()
    db = tmp_path / "p.duckdb"
    agents = Agents(s)
    async with running(
        store, s, {**BUILTIN, **agents.handlers()}, projector=Projector(store, db)
    ) as st:
        goals = [await submit(store, s, [], DEMO_GOAL) for _ in range(2)]
        for g in goals:
            assert (await client.wait_goal(store, g, timeout_s=60)).status == "done"
        info = await store.js.stream_info(store.events_stream)
        assert st.projector is not None
        await st.projector.caught_up(int(info.state.last_seq))
    await agents.aclose()
    calls = [e.event async for e in store.read() if isinstance(e.event, ModelCalled)]
    con = duckdb.connect(str(db), read_only=True)
    try:
        for g in goals:
            mine = [c for c in calls if c.goal_id == g]
            row = con.execute(
                "SELECT count(*), sum(tokens_in), sum(tokens_out), sum(cost_usd) "
                "FROM model_calls WHERE goal_id = ?",
                [g],
            ).fetchone()
            assert row is not None
            assert row[:3] == (
                len(mine),
                sum(c.tokens_in for c in mine),
                sum(c.tokens_out for c in mine),
            )
            assert row[3] == pytest.approx(sum(c.cost_usd for c in mine))
            by_lane = dict(
                con.execute(
                    "SELECT lane, sum(cost_usd) FROM cost_by_goal_lane_model "
                    "WHERE goal_id = ? GROUP BY lane",
                    [g],
                ).fetchall()
            )
            for lane in ("frontier", "local"):
                assert by_lane[lane] == pytest.approx(
                    sum(c.cost_usd for c in mine if c.lane == lane)
                )
            status = con.execute(
                "SELECT status, tasks FROM goals WHERE goal_id = ?", [g]
            ).fetchone()
            assert status == ("done", 30)
        # The demo's scripted 429s are recorded, and as scripted like the rest.
        failed, unscripted = con.execute(
            "SELECT count(error), count(*) FILTER (WHERE NOT scripted) "
            "FROM model_calls"
        ).fetchone() or (0, 0)
        assert failed > 0 and unscripted == 0
    finally:
        con.close()


@pytest.mark.integration
def test_sql_errors_and_formats(cli_env, tmp_path):
    db = tmp_path / "none.duckdb"
    r = bb(["sql", "select 1", "--db", str(db)], cli_env)
    assert r.returncode == 1 and "no projection at" in r.stderr
    r = bb(["sql", "select 1", "--format", "xml"], cli_env)
    assert r.returncode == 2 and "--format" in r.stderr


def test_a_file_of_schema_1_gains_model_calls_dispatch(tmp_path):
    import msgspec

    from blackboard.engine.state import BoardState, evolve
    from blackboard.log import events as ev
    from blackboard.log.codec import Envelope
    from projections.duckdb_view import DuckDBView
    from projections.rows import Rows, add_event
    from tests.samples import sample

    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    old = {c: t for c, t in schema.COLUMNS["model_calls"].items() if c != "dispatch"}
    con.execute(
        "CREATE TABLE model_calls ("
        + ", ".join(f'"{c}" {t}' for c, t in old.items())
        + ', PRIMARY KEY ("seq"))'
    )
    con.execute(
        "CREATE TABLE projector_state "
        "(id INTEGER PRIMARY KEY, last_seq BIGINT, schema_version INTEGER)"
    )
    con.execute("INSERT INTO projector_state VALUES (1, 0, 1)")
    con.close()

    view = DuckDBView(db)
    try:
        state, rows = BoardState(), Rows()
        call = msgspec.structs.replace(sample(ev.ModelCalled, "G1"), dispatch=2)
        for i, e in enumerate(
            (sample(ev.GoalSubmitted), sample(ev.TaskCreated), call)
        ):
            env = Envelope(i + 1, "s", e)
            evolve(state, env)
            add_event(rows, env)
        view.apply(rows, state, 3)
        _, got = view.query("SELECT dispatch FROM model_calls")
        _, version = view.query("SELECT schema_version FROM projector_state")
    finally:
        view.close()
    assert got == [(2,)]
    assert version == [(schema.SCHEMA_VERSION,)]


def test_a_file_of_schema_2_moves_cached_tokens_out_of_tasks_tokens_in(tmp_path):
    import msgspec

    from blackboard.engine.state import BoardState, evolve
    from blackboard.log import events as ev
    from blackboard.log.codec import Envelope
    from projections.duckdb_view import DuckDBView
    from projections.rows import Rows, add_event
    from tests.samples import sample

    db = tmp_path / "v2.duckdb"
    view = DuckDBView(db)
    try:
        state, rows = BoardState(), Rows()
        call = msgspec.structs.replace(
            sample(ev.ModelCalled, "G1"), tokens_in=10, tokens_cached=3
        )
        for i, e in enumerate((sample(ev.GoalSubmitted), sample(ev.TaskCreated), call)):
            env = Envelope(i + 1, "s", e)
            evolve(state, env)
            add_event(rows, env)
        view.apply(rows, state, 3)
        # As version 2 wrote it: no tokens_cached, the cached tokens in tokens_in.
        view.con.execute("ALTER TABLE tasks DROP COLUMN tokens_cached")
        view.con.execute("UPDATE tasks SET tokens_in = 13")
        view.con.execute("UPDATE projector_state SET schema_version = 2")
    finally:
        view.close()

    for _ in range(2):  # upgraded once; opening it again changes nothing
        view = DuckDBView(db)
        try:
            _, got = view.query("SELECT tokens_in, tokens_cached FROM tasks")
            _, version = view.query("SELECT schema_version FROM projector_state")
        finally:
            view.close()
        assert got == [(10, 3)]
        assert version == [(schema.SCHEMA_VERSION,)]
