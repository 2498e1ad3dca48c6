"""The DuckDB schema of the projection: tables, their columns, and the views.

Column lists are data, so the loader (projections/duckdb_view.py) reads the
batch files with exactly these columns and types, and the README documents
the same names.
"""

from __future__ import annotations

__all__ = [
    "COLUMNS",
    "DDL",
    "KEYS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TABLES",
    "UPGRADES",
    "UPSERTS",
    "VIEWS",
]

SCHEMA_VERSION = 5
"""2: ``model_calls.dispatch``. 3: ``tasks.tokens_cached``, and ``tasks.tokens_in``
without the cached tokens (see :mod:`blackboard.engine.usage`). 4: ``tool_calls``
(created on open; no log had tool events before it). 5: ``compensations``
(likewise: no log had compensation events before it)."""

COLUMNS: dict[str, dict[str, str]] = {
    "events": {
        "seq": "BIGINT", "at": "TIMESTAMPTZ", "goal_id": "VARCHAR",
        "task_id": "VARCHAR", "kind": "VARCHAR", "actor": "VARCHAR", "body": "JSON",
    },
    "goals": {
        "goal_id": "VARCHAR", "text": "VARCHAR", "status": "VARCHAR",
        "tenant": "VARCHAR", "submitted_by": "VARCHAR",
        "submitted_at": "TIMESTAMPTZ", "finished_at": "TIMESTAMPTZ",
        "summary": "VARCHAR", "reason": "VARCHAR", "halted_by": "VARCHAR",
        "tasks": "INTEGER", "tokens": "BIGINT", "cost_usd": "DOUBLE",
        "max_depth": "INTEGER", "max_tasks": "INTEGER", "max_tokens": "BIGINT",
        "max_cost_usd": "DOUBLE", "last_seq": "BIGINT",
    },
    "tasks": {
        "goal_id": "VARCHAR", "task_id": "VARCHAR", "type": "VARCHAR",
        "lane": "VARCHAR", "status": "VARCHAR", "parent_id": "VARCHAR",
        "depth": "INTEGER", "attempts": "INTEGER", "failures": "INTEGER",
        "worker": "VARCHAR", "created_at": "TIMESTAMPTZ",
        "ready_at": "TIMESTAMPTZ", "claimed_at": "TIMESTAMPTZ",
        "finished_at": "TIMESTAMPTZ", "tokens_in": "BIGINT", "tokens_out": "BIGINT",
        "cost_usd": "DOUBLE", "model_calls": "INTEGER", "error": "VARCHAR",
        "last_seq": "BIGINT",
        # Last, for the same reason as model_calls.dispatch.
        "tokens_cached": "BIGINT",
    },
    "task_deps": {"goal_id": "VARCHAR", "task_id": "VARCHAR", "depends_on": "VARCHAR"},
    "model_calls": {
        "seq": "BIGINT", "at": "TIMESTAMPTZ", "goal_id": "VARCHAR",
        "task_id": "VARCHAR", "attempt": "INTEGER", "call_index": "INTEGER",
        "provider": "VARCHAR", "model": "VARCHAR", "lane": "VARCHAR",
        "tokens_in": "BIGINT", "tokens_out": "BIGINT", "tokens_cached": "BIGINT",
        "cost_usd": "DOUBLE", "latency_ms": "DOUBLE", "prompt_version": "VARCHAR",
        "request_hash": "VARCHAR", "error": "VARCHAR", "scripted": "BOOLEAN",
        # Last, so a file made before it existed gains it by ALTER TABLE (see
        # MIGRATIONS) and rows still load by position.
        "dispatch": "INTEGER",
    },
    "side_effects": {
        "seq": "BIGINT", "at": "TIMESTAMPTZ", "goal_id": "VARCHAR",
        "task_id": "VARCHAR", "name": "VARCHAR", "idempotency_key": "VARCHAR",
        "status": "VARCHAR", "error": "VARCHAR",
    },
    "approvals": {
        "seq": "BIGINT", "at": "TIMESTAMPTZ", "goal_id": "VARCHAR",
        "task_id": "VARCHAR", "kind": "VARCHAR", "by": "VARCHAR", "note": "VARCHAR",
        "reason": "VARCHAR", "policy": "VARCHAR",
    },
    "dead_letters": {
        "seq": "BIGINT", "subject": "VARCHAR", "reason": "VARCHAR", "raw": "VARCHAR",
    },
    "tool_calls": {
        "goal_id": "VARCHAR", "task_id": "VARCHAR", "tool": "VARCHAR",
        "source": "VARCHAR", "effect": "VARCHAR", "call_id": "VARCHAR",
        "idempotency_key": "VARCHAR", "model_call": "VARCHAR",
        "dispatch": "INTEGER", "attempt": "INTEGER", "started_at": "TIMESTAMPTZ",
        "finished_at": "TIMESTAMPTZ", "duration_ms": "DOUBLE", "status": "VARCHAR",
        "error": "VARCHAR", "arguments": "JSON", "result": "JSON",
    },
    "compensations": {
        "seq": "BIGINT", "at": "TIMESTAMPTZ", "goal_id": "VARCHAR",
        "task_id": "VARCHAR", "outcome": "VARCHAR", "name": "VARCHAR",
        "origin": "VARCHAR", "idempotency_key": "VARCHAR", "effect": "VARCHAR",
        "detail": "VARCHAR", "result": "JSON", "by": "VARCHAR",
    },
}  # fmt: skip

KEYS: dict[str, tuple[str, ...]] = {
    "events": ("seq",),
    "goals": ("goal_id",),
    "tasks": ("goal_id", "task_id"),
    "task_deps": ("goal_id", "task_id", "depends_on"),
    "model_calls": ("seq",),
    "side_effects": ("seq",),
    "approvals": ("seq",),
    "dead_letters": ("seq",),
    "tool_calls": ("goal_id", "task_id", "idempotency_key", "dispatch", "attempt"),
    "compensations": ("seq",),
}
"""Primary keys: a row applied twice would be refused, never doubled."""


def _merge(column: str) -> str:
    # As projections.rows.merge_tool_row: what the later event knows wins, and
    # 'running' (a start) never replaces an end already recorded.
    if column == "status":
        return (
            "status = CASE WHEN excluded.status = 'running' AND"
            " tool_calls.status IS NOT NULL THEN tool_calls.status"
            " ELSE excluded.status END"
        )
    return f'"{column}" = coalesce(excluded."{column}", tool_calls."{column}")'


UPSERTS: dict[str, str] = {
    "tool_calls": " ON CONFLICT ("
    + ", ".join(f'"{k}"' for k in KEYS["tool_calls"])
    + ") DO UPDATE SET "
    + ", ".join(_merge(c) for c in COLUMNS["tool_calls"] if c not in KEYS["tool_calls"])
}
"""Tables whose row is made by more than one event: how a batch's row merges
into the one in the file (the other tables only ever insert)."""

TABLES = tuple(COLUMNS)


def _tool_stats(c: str) -> str:
    """Calls, their outcomes and latency: the columns of both tool views.

    ``c`` qualifies the columns of ``tool_calls`` (``tasks`` has a status too).
    """
    ran = f"FILTER (WHERE {c}status IN ('ok', 'error'))"
    return f"""count(*) AS calls,
               count(*) FILTER (WHERE {c}status = 'ok') AS ok,
               count(*) FILTER (WHERE {c}status = 'error') AS errors,
               count(*) FILTER (WHERE {c}status = 'refused') AS refused,
               count(*) FILTER (WHERE {c}status = 'running') AS running,
               coalesce(count(*) FILTER (WHERE {c}status IN ('error', 'refused'))
                 / nullif(count(*) FILTER (WHERE {c}status <> 'running'), 0), 0)
                 AS error_rate,
               avg({c}duration_ms) {ran} AS duration_ms_avg,
               quantile_cont({c}duration_ms, 0.5) {ran} AS duration_ms_p50,
               quantile_cont({c}duration_ms, 0.95) {ran} AS duration_ms_p95,
               max({c}duration_ms) {ran} AS duration_ms_max"""


# Sums of integers are cast to BIGINT: DuckDB's sum is a HUGEINT, which pandas
# reads as float64 and polars as Decimal(38, 0).
VIEWS: dict[str, str] = {
    "cost_by_goal_lane_model": """
        SELECT goal_id, lane, model, count(*) AS calls,
               count(error) AS failed_calls,
               sum(tokens_in)::BIGINT AS tokens_in,
               sum(tokens_out)::BIGINT AS tokens_out,
               sum(tokens_cached)::BIGINT AS tokens_cached,
               sum(cost_usd) AS cost_usd,
               bool_or(scripted) AS scripted
        FROM model_calls GROUP BY goal_id, lane, model""",
    "frontier_share": """
        SELECT goal_id, frontier_tokens, total_tokens,
               coalesce(frontier_tokens / nullif(total_tokens, 0), 0) AS token_share,
               frontier_cost_usd, total_cost_usd,
               coalesce(frontier_cost_usd / nullif(total_cost_usd, 0), 0) AS cost_share
        FROM (
          SELECT goal_id,
                 coalesce(sum(tokens_in + tokens_out + tokens_cached)
                   FILTER (WHERE lane = 'frontier'), 0)::BIGINT AS frontier_tokens,
                 sum(tokens_in + tokens_out + tokens_cached)::BIGINT AS total_tokens,
                 coalesce(sum(cost_usd) FILTER (WHERE lane = 'frontier'), 0)
                   AS frontier_cost_usd,
                 sum(cost_usd) AS total_cost_usd
          FROM model_calls GROUP BY goal_id
        )""",
    "spawn_depth": """
        SELECT depth, count(*) AS tasks, count(*) FILTER (WHERE parent_id IS NOT NULL)
               AS spawned
        FROM tasks GROUP BY depth""",
    # Every failure is retried but a task's last one when it ended failed: only
    # a non-retryable TaskFailed, which counts in `failures`, makes it failed.
    "task_type_rates": """
        SELECT type, count(*) AS tasks,
               sum(greatest(failures - (status = 'failed')::INTEGER, 0))::BIGINT
                 AS retries,
               count(*) FILTER (WHERE failures > (status = 'failed')::INTEGER)
                 / count(*) AS retry_rate,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               count(*) FILTER (WHERE status = 'failed') / count(*) AS failure_rate
        FROM tasks GROUP BY type""",
    "lane_timings": """
        SELECT lane, count(*) AS tasks,
               avg(epoch(claimed_at) - epoch(ready_at)) AS queue_wait_s_avg,
               quantile_cont(epoch(claimed_at) - epoch(ready_at), 0.95)
                 AS queue_wait_s_p95,
               avg(epoch(finished_at) - epoch(claimed_at)) AS run_s_avg,
               quantile_cont(epoch(finished_at) - epoch(claimed_at), 0.95) AS run_s_p95
        FROM tasks WHERE claimed_at IS NOT NULL GROUP BY lane""",
    # Latency is that of the calls that ran: a refused call took no time, and
    # a running one has none yet.
    "tool_calls_by_tool": f"""
        SELECT tool, {_tool_stats("")}
        FROM tool_calls GROUP BY tool""",
    "tool_calls_by_lane": f"""
        SELECT t.lane, count(DISTINCT c.tool) AS tools, {_tool_stats("c.")}
        FROM tool_calls c LEFT JOIN tasks t USING (goal_id, task_id)
        GROUP BY t.lane""",
    # Per tenant: what [tenants.<name>] shares and quotas are checked against.
    "tenant_usage": """
        SELECT tenant, count(*) AS goals,
               count(*) FILTER (WHERE status = 'running') AS running_goals,
               sum(tasks)::BIGINT AS tasks, sum(tokens)::BIGINT AS tokens,
               sum(cost_usd) AS cost_usd
        FROM goals GROUP BY tenant""",
    # Days are UTC days, as the scheduler's usd_per_day quota counts them.
    "tenant_daily_cost": """
        SELECT g.tenant, strftime(c.at AT TIME ZONE 'UTC', '%Y-%m-%d') AS day,
               count(*) AS calls,
               sum(c.tokens_in + c.tokens_out + c.tokens_cached)::BIGINT AS tokens,
               sum(c.cost_usd) AS cost_usd
        FROM model_calls c JOIN goals g USING (goal_id)
        GROUP BY g.tenant, day""",
    "tenant_lane_timings": """
        SELECT g.tenant, t.lane, count(*) AS tasks,
               avg(epoch(t.claimed_at) - epoch(t.ready_at)) AS queue_wait_s_avg,
               quantile_cont(epoch(t.claimed_at) - epoch(t.ready_at), 0.95)
                 AS queue_wait_s_p95,
               avg(epoch(t.finished_at) - epoch(t.claimed_at)) AS run_s_avg
        FROM tasks t JOIN goals g USING (goal_id)
        WHERE t.claimed_at IS NOT NULL GROUP BY g.tenant, t.lane""",
}


def _table(name: str) -> str:
    cols = ", ".join(f'"{c}" {t}' for c, t in COLUMNS[name].items())
    key = ", ".join(f'"{k}"' for k in KEYS[name])
    return f"CREATE TABLE IF NOT EXISTS {name} ({cols}, PRIMARY KEY ({key}))"


MIGRATIONS: list[str] = [
    # 1 -> 2: calls of a task's later dispatches were told apart by nothing;
    # rows projected before (from events that did not carry it) read as 1.
    "ALTER TABLE model_calls ADD COLUMN IF NOT EXISTS dispatch INTEGER DEFAULT 1",
    # 2 -> 3: a task's cached input tokens, apart (UPGRADES fixes older rows).
    "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS tokens_cached BIGINT DEFAULT 0",
]
"""Run on every open: each brings a file of an older schema up to date, and is
a no-op on a current one."""

UPGRADES: dict[int, list[str]] = {
    # Rows written before 3 counted cached tokens inside tasks.tokens_in; the
    # calls of each task, in model_calls, say how many to move out.
    3: [
        "UPDATE tasks SET tokens_cached = c.cached,"
        " tokens_in = tasks.tokens_in - c.cached"
        " FROM (SELECT goal_id, task_id, sum(tokens_cached)::BIGINT AS cached"
        " FROM model_calls GROUP BY goal_id, task_id) AS c"
        " WHERE tasks.goal_id = c.goal_id AND tasks.task_id = c.task_id"
        " AND c.cached > 0",
    ],
}
"""Run once, when a file of an older version is opened: for each version above
the file's, in order, in the transaction that records the new version."""

DDL: list[str] = [
    "CREATE TABLE IF NOT EXISTS projector_state "
    "(id INTEGER PRIMARY KEY, last_seq BIGINT, schema_version INTEGER)",
    *(_table(t) for t in TABLES),
    *MIGRATIONS,
    *(f"CREATE OR REPLACE VIEW {n} AS {q}" for n, q in VIEWS.items()),
]
