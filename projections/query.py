"""Asking for SQL: the running projector over NATS, else the file read-only.

DuckDB lets one process write a file; the projector is that process, so a
query goes to it first. With no projector answering, the file is opened
read-only (which works only while no projector holds it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.errors

from blackboard.errors import ConfigError
from projections.duckdb_view import DuckDBView, answer
from projections.runner import api_subject

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = ["NoProjector", "ask", "query_file"]


class NoProjector(ConfigError):
    """No projector answered."""


async def ask(
    nc: NatsClient, prefix: str, request: dict[str, Any], timeout: float = 10.0
) -> dict[str, Any]:
    """Send one request to the projector; its answer, or the error it gave."""
    try:
        reply = await nc.request(
            api_subject(prefix), json.dumps(request).encode(), timeout=timeout
        )
    except nats.errors.NoRespondersError as e:
        raise NoProjector("no projector is running") from e
    except nats.errors.TimeoutError as e:
        raise ConfigError(f"the projector did not answer in {timeout:g} s") from e
    answer: dict[str, Any] = json.loads(reply.data)
    if "error" in answer:
        raise ConfigError(str(answer["error"]))
    return answer


def query_file(db: Path, sql: str) -> dict[str, Any]:
    """Answer from the file itself, read-only."""
    if not Path(db).exists():
        raise ConfigError(
            f"no projection at {db}: run `bb projector` (or `bb up`) first"
        )
    view = DuckDBView(db, read_only=True)
    try:
        columns, rows = view.query(sql)
    finally:
        view.close()
    result: dict[str, Any] = json.loads(answer(columns, rows))
    return result
