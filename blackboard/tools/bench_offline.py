"""Benchmarks behind ``bb bench replay`` and ``bb bench projector``: no server.

The log is made in memory, so the figures are replay's and the projection's
own cost, not the network's or the server's.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from blackboard import ids


def replay(events: int = 100_000) -> dict[str, Any]:
    """Build and render the trace of a goal of ``events`` events, in memory.

    The goal is tasks of five events each (created, ready, claimed, a model
    call with a prompt and an answer, completed); the log is made in memory so
    the figure is replay's own cost, not the server's.
    """
    from replay import render, trace

    envs = _synthetic_goal(events)
    t0 = time.perf_counter()
    t = trace.build_trace(envs)
    built = time.perf_counter()
    text = render.render_text(t)
    texted = time.perf_counter()
    doc = render.render_json(t)
    done = time.perf_counter()
    return {
        "events": len(envs),
        "tasks": len(t.tasks),
        "build_s": round(built - t0, 3),
        "render_text_s": round(texted - built, 3),
        "render_json_s": round(done - texted, 3),
        "total_s": round(done - t0, 3),
        "text_bytes": len(text),
        "json_bytes": len(doc),
    }


def _synthetic_goal(events: int, first_seq: int = 1) -> list[Any]:
    from datetime import UTC, datetime, timedelta

    from blackboard.log.codec import Envelope
    from blackboard.log.events import (
        GoalSubmitted,
        ModelCalled,
        TaskClaimed,
        TaskCompleted,
        TaskCreated,
        TaskReady,
    )

    goal = ids.new_id()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    out: list[Any] = []

    def add(event: Any) -> None:
        subject = f"bb.evt.{goal}.{event.task_id or '_'}.x"
        out.append(Envelope(first_seq + len(out), subject, event))

    add(GoalSubmitted(event_id="g", goal_id=goal, at=t0, actor="bench", text="bench"))
    n = 0
    while len(out) + 5 <= events:
        tid = f"t{n:06d}"
        at = t0 + timedelta(milliseconds=n)
        base: dict[str, Any] = {
            "goal_id": goal,
            "task_id": tid,
            "at": at,
            "actor": "bench",
        }
        add(
            TaskCreated(
                event_id=f"c{n}",
                task_type="execute",
                lane="local",
                payload={"title": f"task {n}"},
                **base,
            )
        )
        add(TaskReady(event_id=f"r{n}", **base))
        add(TaskClaimed(event_id=f"k{n}", worker="w", attempt=1, **base))
        add(
            ModelCalled(
                event_id=f"m{n}",
                provider="scripted",
                model="m",
                lane="local",
                request={
                    "messages": [{"role": "user", "content": f"do task {n}\nplease"}]
                },
                response={},
                text=f"done {n}",
                tokens_in=10,
                tokens_out=5,
                **base,
            )
        )
        add(TaskCompleted(event_id=f"d{n}", result={"output": f"done {n}"}, **base))
        n += 1
    return out


def projector(events: int = 1_000_000, batch: int = 10_000) -> dict[str, Any]:
    """Events/s applied to DuckDB, beside DuckDB's own bulk load of them.

    Applied means folded, turned into rows and loaded, one transaction per
    batch. Also the latency of the cost views at that size.

    The log is made in memory (goals of 10,000 events: tasks created, ready,
    claimed, a model call, completed) and fed to the projector's apply path,
    so the figure is the projection's cost without the network.
    """
    import msgspec

    from blackboard.engine.state import BoardState, evolve
    from projections import rows as rowmod
    from projections.duckdb_view import DuckDBView, bulk_load_rate

    envs: list[Any] = []
    while len(envs) < events:
        envs += _synthetic_goal(min(10_000, events - len(envs)), len(envs) + 1)
    # What the projector gets off the stream: each event's JSON body.
    bodies = [msgspec.json.encode(env.event) for env in envs]
    with tempfile.TemporaryDirectory() as tmp:
        view = DuckDBView(Path(tmp) / "bench.duckdb")
        state = BoardState()
        t0 = time.perf_counter()
        for i in range(0, len(envs), batch):
            chunk = envs[i : i + batch]
            r = rowmod.Rows()
            for env, body in zip(chunk, bodies[i : i + batch], strict=True):
                evolve(state, env)
                rowmod.add_event(r, env, body)
            view.apply(r, state, chunk[-1].seq)
        applied_s = time.perf_counter() - t0
        views: dict[str, float] = {}
        for name in ("cost_by_goal_lane_model", "frontier_share", "lane_timings"):
            q0 = time.perf_counter()
            view.query(f"SELECT * FROM {name}")
            views[name] = round((time.perf_counter() - q0) * 1000, 1)
        view.close()
        all_rows = rowmod.Rows()
        for env, body in zip(envs, bodies, strict=True):
            rowmod.add_event(all_rows, env, body)
        bulk = bulk_load_rate(all_rows.events, Path(tmp) / "bulk.duckdb")
    rate = len(envs) / applied_s
    return {
        "events": len(envs),
        "batch": batch,
        "applied_per_s": round(rate),
        "duckdb_bulk_events_per_s": round(bulk),
        "bulk_over_ours": round(bulk / rate, 1),
        "view_latency_ms": views,
    }
