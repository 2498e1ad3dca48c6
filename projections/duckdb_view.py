"""The projection's DuckDB file: bulk-apply a batch and its sequence at once.

A batch's rows are written as one JSON array per table and loaded with
``INSERT ... SELECT * FROM read_json(...)`` (DuckDB's own bulk path: no
row-by-row ``executemany``), inside one transaction that also records the
stream sequence the batch ends at. Either all of a batch is in the file, with
its sequence, or none of it is.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import msgspec

from blackboard.errors import ConfigError
from projections import schema
from projections.rows import Rows, goal_row, task_row

if TYPE_CHECKING:
    from blackboard.engine.state import BoardState

__all__ = ["DuckDBView", "QueryError"]

_ENCODE = msgspec.json.Encoder().encode


class QueryError(ConfigError):
    """A query DuckDB refused (its message says why)."""


CHECKPOINT_THRESHOLD = "256MB"
"""WAL size at which the writer folds it into the file. DuckDB's 16 MB default
checkpoints every few batches while a large log is caught up, and each
checkpoint rewrites the tables' touched row groups: most of a catch-up's time.
A crash replays the WAL on open, so nothing acked is lost either way."""

MAX_REPLY = 900_000
"""Bytes of a query's answer (NATS's default message limit is 1 MiB). The same
cap applies when the file is read directly, so a query that works offline
works online too."""


def answer(columns: list[str], rows: list[Any]) -> str:
    """A query's answer as JSON, or QueryError if it is over ``MAX_REPLY``."""
    body = json.dumps({"columns": columns, "rows": rows}, default=str)
    if len(body) > MAX_REPLY:
        raise QueryError(
            f"the result is {len(body):,} bytes ({len(rows):,} rows), over what "
            "one answer holds: add a LIMIT, or use `bb export-parquet`"
        )
    return body


class DuckDBView:
    """One DuckDB file holding the projection.

    Args:
        path: The file (created with its schema if new).
        read_only: Open for queries only (another process may hold the writer).
    """

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        self.path = Path(path)
        try:
            if not read_only:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as e:
            raise ConfigError(f"cannot open {self.path}: {e}") from e
        except OSError as e:
            raise ConfigError(f"cannot open {self.path}: {e.strerror or e}") from e
        self._tmp = Path(tempfile.mkdtemp(prefix="bb-projector-"))
        if not read_only:
            self.con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
            for stmt in schema.DDL:
                self.con.execute(stmt)
            self.con.execute(
                "INSERT INTO projector_state VALUES (1, 0, ?) ON CONFLICT DO NOTHING",
                [schema.SCHEMA_VERSION],
            )
            self._upgrade()

    def _upgrade(self) -> None:
        """Bring the rows of an older file up to date, once, and say so in it.

        The DDL has already added what is missing (schema.MIGRATIONS).
        """
        row = self.con.execute(
            "SELECT schema_version FROM projector_state WHERE id = 1"
        ).fetchone()
        was = int(row[0]) if row and row[0] is not None else schema.SCHEMA_VERSION
        self.con.execute("BEGIN TRANSACTION")
        try:
            for version in range(was + 1, schema.SCHEMA_VERSION + 1):
                for stmt in schema.UPGRADES.get(version, []):
                    self.con.execute(stmt)
            self.con.execute(
                "UPDATE projector_state SET schema_version = ? WHERE id = 1",
                [schema.SCHEMA_VERSION],
            )
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the file."""
        self.con.close()
        for f in self._tmp.glob("*"):
            f.unlink()
        self._tmp.rmdir()

    @property
    def last_seq(self) -> int:
        """The stream sequence the file is up to date with."""
        row = self.con.execute(
            "SELECT last_seq FROM projector_state WHERE id = 1"
        ).fetchone()
        return int(row[0]) if row else 0

    def apply(self, rows: Rows, state: BoardState, last_seq: int) -> None:
        """Apply a batch's rows, the touched goals and tasks, and ``last_seq``."""
        tables: dict[str, list[dict[str, Any]]] = {
            "events": rows.events,
            "model_calls": rows.model_calls,
            "side_effects": rows.side_effects,
            "approvals": rows.approvals,
            "task_deps": rows.task_deps,
            "dead_letters": rows.dead_letters,
            "tool_calls": list(rows.tool_calls.values()),
            "compensations": rows.compensations,
            "goals": [
                goal_row(state.goals[g]) for g in sorted(rows.goals) if g in state.goals
            ],
            "tasks": [
                task_row(state.goals[g].tasks[t])
                for g, t in sorted(rows.tasks)
                if g in state.goals and t in state.goals[g].tasks
            ],
        }
        files = {name: self._write(name, data) for name, data in tables.items() if data}
        self.con.execute("BEGIN TRANSACTION")
        try:
            for name, file in files.items():
                verb = "INSERT OR REPLACE" if name in ("goals", "tasks") else "INSERT"
                if name == "task_deps":
                    verb = "INSERT OR IGNORE"
                upsert = schema.UPSERTS.get(name, "")
                self.con.execute(f"{verb} INTO {name} {_select(name, file)}{upsert}")
            self.con.execute(
                "UPDATE projector_state SET last_seq = ? WHERE id = 1", [last_seq]
            )
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def _write(self, name: str, data: list[dict[str, Any]]) -> Path:
        file = self._tmp / f"{name}.json"
        # Event bodies are msgspec.Raw: already JSON, embedded as they are.
        file.write_bytes(_ENCODE(data))
        return file

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one query; its column names and rows."""
        try:
            cur = self.con.execute(sql)
            columns = [d[0] for d in cur.description or []]
            return columns, cur.fetchall()
        except duckdb.Error as e:
            raise QueryError(str(e).splitlines()[0]) from e

    def export_parquet(self, out: Path) -> list[Path]:
        """Write every table and view as ``<out>/<name>.parquet``.

        JSON columns (``events.body``) are written as VARCHAR: Parquet's JSON
        annotation is read as binary by polars and pandas, a string by all.
        """
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in (*schema.TABLES, *schema.VIEWS):
            target = out / f"{name}.parquet"
            escaped = str(target).replace("'", "''")
            columns = schema.COLUMNS.get(name, {})
            casts = ", ".join(
                f'"{c}"::VARCHAR AS "{c}"' for c, t in columns.items() if t == "JSON"
            )
            select = f"SELECT * REPLACE ({casts})" if casts else "SELECT *"
            self.con.execute(
                f"COPY ({select} FROM {name}) TO '{escaped}' (FORMAT parquet)"
            )
            written.append(target)
        return written


def _select(name: str, file: Path) -> str:
    cols = ", ".join(f"'{c}': '{t}'" for c, t in schema.COLUMNS[name].items())
    escaped = str(file).replace("'", "''")
    return (
        f"SELECT * FROM read_json('{escaped}', format = 'array', columns = {{{cols}}})"
    )


def bulk_load_rate(rows: list[dict[str, Any]], path: Path) -> float:
    """DuckDB's own bulk load of ``rows`` into a fresh events table: rows/s."""
    import time

    con = duckdb.connect(str(path))
    try:
        con.execute(schema.DDL[1])  # the events table
        tmp = path.with_suffix(".json")
        tmp.write_bytes(_ENCODE(rows))
        t0 = time.perf_counter()
        con.execute(f"INSERT INTO events {_select('events', tmp)}")
        elapsed = time.perf_counter() - t0
        tmp.unlink()
        return len(rows) / elapsed
    finally:
        con.close()
