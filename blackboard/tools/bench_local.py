"""``bb bench local-model``: what the bundled 135M model gets right, and how fast.

Each run is one goal of the task kinds our prompts ask of a local lane (a
patch, a migration, JSON against a schema, plain text, a review verdict),
run by the real engine with the local lane on SmolLM2-135M (llama.cpp) and
the frontier lane scripted, nothing escalated. Every task is classified from
its events: accepted at the first answer, accepted after its repair or redo
turn, answered NEED, or failed (with the reason, which the report groups).
The model's speed comes from the same calls (tokens per second of whole
calls, prompt processing included) and from a bare generation.
"""

from __future__ import annotations

import collections
import json
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import typer

from blackboard.log.events import (
    ModelCalled,
    TaskCompleted,
    TaskFailed,
    TaskNeedsFollowup,
    TaskSpec,
)
from blackboard.runtime import config
from blackboard.tools.bench import bench_store

if TYPE_CHECKING:
    from blackboard.engine.state import GoalState

__all__ = ["KINDS", "local_model"]

GOAL = "Add structured audit logging to every write endpoint of the orders service"
ENDPOINTS = (
    "POST /orders",
    "PUT /orders/{id}",
    "DELETE /customers/{id}",
    "POST /payments",
    "PATCH /shipments/{id}",
)
SCHEMA = {
    "type": "object",
    "required": ["endpoint", "action"],
    "properties": {
        "endpoint": {"type": "string"},
        "action": {"type": "string", "pattern": r"^[a-z_]+\.[a-z_]+$"},
    },
}


def _specs(run: int) -> list[TaskSpec]:
    """One run's tasks, one per kind; the endpoint varies with the run."""
    ep = ENDPOINTS[run % len(ENDPOINTS)]

    def spec(kind: str, task_type: str, **payload: Any) -> TaskSpec:
        return TaskSpec(
            task_id=f"{kind}-{run}", type=task_type, lane="local", payload=payload
        )

    return [
        spec(
            "patch",
            "execute",
            title=f"add audit logging to {ep}",
            instruction=f"In the handler of {ep}, call audit.emit(event) after "
            "the write commits.",
            artifact="patches/change.patch",
        ),
        spec(
            "migration",
            "execute",
            title="write the migration for the audit_log table",
            instruction="Create table audit_log with columns event_id (text, "
            "primary key), occurred_at (timestamptz), action (text).",
            artifact="migrations/0042_audit_log.sql",
        ),
        spec(
            "json",
            "execute",
            title=f"name the audit action of {ep}",
            instruction=f"Give the endpoint '{ep}' and its audit action, a "
            "'<resource>.<verb>' name such as 'order.create'.",
            expects="json",
            schema=SCHEMA,
        ),
        spec(
            "text",
            "execute",
            title="say why audit events are emitted after the commit",
            instruction="In two sentences, say why an audit event is emitted "
            "only after the write commits.",
        ),
        spec(
            "review",
            "review",
            title="review",
            instruction=f"Check that {ep} emits one audit event per committed write.",
        ),
    ]


KINDS = tuple(s.task_id.split("-")[0] for s in _specs(0))


def _classify(goal: GoalState, events: list[Any], task_id: str) -> tuple[str, str]:
    """How a task ended: first, repaired, need or failed; and a failure's why."""
    calls = [
        e
        for e in events
        if isinstance(e, ModelCalled) and e.task_id == task_id and e.error is None
    ]
    if any(
        isinstance(e, TaskNeedsFollowup)
        and e.task_id == task_id
        and e.reason.startswith("NEED")
        for e in events
    ):
        return "need", ""
    for e in events:
        if isinstance(e, TaskFailed) and e.task_id == task_id:
            return "failed", e.error
        if isinstance(e, TaskCompleted) and e.task_id == task_id:
            return ("first" if len(calls) <= 1 else "repaired"), ""
    return "failed", f"not ended: {goal.tasks[task_id].status}"


def _reason(error: str) -> str:
    """A failure's reason without the quoted answer, for grouping."""
    why = error.split(" (answer:", 1)[0]
    for lead in ("after one redo: ", "after one repair: "):
        if lead in why:
            why = why.split(lead, 1)[1]
    return why[:110]


def _generation(url: str, tokens: int = 128) -> float:
    """Output tokens/s of one bare generation (short prompt, ``tokens`` out)."""
    body = json.dumps(
        {
            "model": "x",
            "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": tokens,
        }
    ).encode()
    req = urllib.request.Request(
        url + "/chat/completions",
        data=body,
        headers={"content-type": "application/json"},
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as r:
        out = json.load(r)
    took = time.perf_counter() - t0
    return float(out["usage"]["completion_tokens"]) / took


async def local_model(runs: int, url: str | None = None) -> dict[str, Any]:
    """Run ``runs`` goals on the bundled model; success rates and speed."""
    from agents import local_model as bundled
    from agents.handlers import Agents
    from blackboard.engine import control as client
    from blackboard.engine import submission as service
    from blackboard.engine.handlers import BUILTIN
    from blackboard.runtime import inprocess as stack

    server = None
    if url is None:
        server = bundled.LocalModelServer()
        url = server.start()
    try:
        settings = bundled.real_local_settings(config.load(), url)
        settings.lanes["local"].escalate_to = None
        settings.engine.lease_s = 120.0
        agents = Agents(settings)
        outcomes: dict[str, collections.Counter[str]] = {
            k: collections.Counter() for k in KINDS
        }
        reasons: dict[str, collections.Counter[str]] = {
            k: collections.Counter() for k in KINDS
        }
        calls: list[ModelCalled] = []
        examples: dict[str, list[str]] = {}
        wall = 0.0
        async with (
            bench_store("local") as (store, _),
            stack.running(
                store, settings, {**BUILTIN, **agents.handlers()}, agent=agents
            ),
        ):
            for run in range(runs):
                typer.echo(f"  run {run + 1}/{runs}...", err=True)
                event = service.goal_submitted(
                    settings, GOAL, specs=_specs(run), submitted_by="bench"
                )
                t0 = time.perf_counter()
                await store.append(event)
                goal = await client.wait_goal(store, event.goal_id, timeout_s=1800)
                wall += time.perf_counter() - t0
                events = [e.event async for e in store.read_goal(event.goal_id)]
                calls += [
                    e
                    for e in events
                    if isinstance(e, ModelCalled) and e.lane == "local" and not e.error
                ]
                if run == 0:
                    # What the model said, first answer and repair: for the docs.
                    for e in events:
                        if isinstance(e, ModelCalled) and e.lane == "local":
                            kind = (e.task_id or "").split("-")[0]
                            examples.setdefault(kind, []).append(e.text[:300])
                for kind in KINDS:
                    how, why = _classify(goal, events, f"{kind}-{run}")
                    outcomes[kind][how] += 1
                    if why:
                        reasons[kind][_reason(why)] += 1
        await agents.aclose()
        generation = [_generation(url) for _ in range(3)]
    finally:
        if server is not None:
            server.stop()
    seconds = sum(c.latency_ms for c in calls) / 1000
    by_kind = {
        kind: {
            "runs": runs,
            **{k: outcomes[kind][k] for k in ("first", "repaired", "need", "failed")},
            "accepted_rate": round(
                (outcomes[kind]["first"] + outcomes[kind]["repaired"]) / runs, 3
            ),
            "reasons": dict(reasons[kind].most_common(3)),
        }
        for kind in KINDS
    }
    return {
        "model": bundled.MODEL,
        "runs": runs,
        "kinds": by_kind,
        "calls": len(calls),
        "tokens_in_per_call": round(sum(c.tokens_in for c in calls) / len(calls), 1)
        if calls
        else 0,
        "tokens_out_per_call": round(sum(c.tokens_out for c in calls) / len(calls), 1)
        if calls
        else 0,
        "seconds_per_call": round(seconds / len(calls), 2) if calls else 0,
        "call_tokens_out_per_s": round(sum(c.tokens_out for c in calls) / seconds, 1)
        if seconds
        else 0,
        "call_tokens_in_per_s": round(sum(c.tokens_in for c in calls) / seconds, 1)
        if seconds
        else 0,
        "generation_tokens_per_s": round(sorted(generation)[1], 1),
        "wall_s": round(wall, 1),
        "examples": examples,
    }


def print_report(result: dict[str, Any]) -> None:
    """The report as a table, then the failure reasons."""
    typer.echo(f"{result['model']}, {result['runs']} run(s) of each kind")
    typer.echo(
        f"{'kind':<10} {'first':>6} {'repaired':>9} {'need':>5} {'failed':>7}"
        f" {'accepted':>9}"
    )
    for kind, row in result["kinds"].items():
        typer.echo(
            f"{kind:<10} {row['first']:>6} {row['repaired']:>9} {row['need']:>5}"
            f" {row['failed']:>7} {row['accepted_rate']:>9.0%}"
        )
    typer.echo(
        f"\n{result['calls']} calls: {result['tokens_in_per_call']} tokens in and"
        f" {result['tokens_out_per_call']} out per call,"
        f" {result['seconds_per_call']} s per call"
        f" ({result['call_tokens_in_per_s']} in/s,"
        f" {result['call_tokens_out_per_s']} out/s over whole calls);"
        f" bare generation {result['generation_tokens_per_s']} tokens/s;"
        f" wall {result['wall_s']} s"
    )
    for kind, row in result["kinds"].items():
        for why, n in row["reasons"].items():
            typer.echo(f"  {kind}: {n} x {why}")
