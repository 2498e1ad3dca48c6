"""What each golden history is expected to give, derived from its NDJSON alone.

- ``trace.txt`` and ``trace.json``: ``bb replay --from-file <ndjson>`` and the
  same with ``--json``, run through the CLI (in process, no server).
- ``rows.txt``: the projection. The envelopes go through the projector's own
  steps (the fold, ``projections.rows.add_event``, a dead letter for what the
  fold refuses) into a fresh DuckDB file through ``DuckDBView.apply``; then
  every table and view is dumped, one JSON object per row (keys sorted, JSON
  columns parsed), in the order of the table's primary key (a view's: all its
  columns), under a ``## <name> (<rows>)`` line. Timestamps are written in UTC and floats to 12
  significant digits, so the file depends on the events, not on the machine's
  time zone or on the order DuckDB sums in.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typer.testing import CliRunner

from blackboard.cli import app
from blackboard.engine.state import BoardState, evolve
from projections import schema
from projections.duckdb_view import DuckDBView
from projections.rows import Rows, add_event, dead_letter
from replay import reader

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from blackboard.log.codec import Envelope

__all__ = ["KINDS", "derive", "projected", "projection_rows", "replay_output"]

KINDS = ("trace.txt", "trace.json", "rows.txt")
"""The expected files of one history ``<name>.ndjson``: ``<name>.<kind>``."""


def derive(ndjson: Path, kind: str) -> bytes:
    """The bytes ``<name>.<kind>`` should hold for this history."""
    if kind == "trace.txt":
        return replay_output(ndjson)
    if kind == "trace.json":
        return replay_output(ndjson, "--json")
    if kind == "rows.txt":
        return projection_rows(ndjson)
    raise ValueError(f"no golden kind {kind!r}")


def replay_output(ndjson: Path, *args: str) -> bytes:
    """What ``bb replay --from-file <ndjson> [args]`` writes to stdout."""
    result = CliRunner().invoke(
        app,
        ["replay", "--from-file", str(ndjson), *args],
        env={"BB_DATA_DIR": "/nonexistent", "BB_NATS_URL": "nats://127.0.0.1:9"},
    )
    if result.exit_code != 0:
        raise AssertionError(f"bb replay failed ({result.exit_code}): {result.output}")
    return result.stdout_bytes


def projection_rows(ndjson: Path) -> bytes:
    """The projection of the history's events, every table and view, sorted."""
    with projected(reader.from_file(ndjson)) as view:
        return _dump(view)


@contextlib.contextmanager
def projected(envs: Sequence[Envelope]) -> Iterator[DuckDBView]:
    """A fresh DuckDB file holding the projection of ``envs``, open for queries."""
    state, rows = BoardState(), Rows()
    for env in envs:
        # As projections.runner.Projector.apply does for a decoded message.
        refused = len(state.anomalies)
        evolve(state, env)
        add_event(rows, env)
        if len(state.anomalies) > refused:
            reason = f"refused by the fold: {state.anomalies[-1].reason}"
            dead_letter(rows, env.seq, env.subject, reason)
    with tempfile.TemporaryDirectory(prefix="bb-golden-") as tmp:
        view = DuckDBView(Path(tmp) / "golden.duckdb")
        try:
            view.apply(rows, state, envs[-1].seq)
            yield view
        finally:
            view.close()


def _dump(view: DuckDBView) -> bytes:
    out: list[str] = []
    for name in (*schema.TABLES, *sorted(schema.VIEWS)):
        keys = schema.KEYS.get(name)
        order = ", ".join(f'"{k}"' for k in keys) if keys else "ALL"
        columns, records = view.query(f"SELECT * FROM {name} ORDER BY {order}")
        json_columns = {
            c for c, t in schema.COLUMNS.get(name, {}).items() if t == "JSON"
        }
        out.append(f"## {name} ({len(records)})")
        out.extend(
            json.dumps(
                {
                    c: json.loads(v) if c in json_columns else _plain(v)
                    for c, v in zip(columns, r, strict=True)
                },
                sort_keys=True,
            )
            for r in records
        )
    return ("\n".join(out) + "\n").encode()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, float):
        return float(f"{value:.12g}")
    return value
