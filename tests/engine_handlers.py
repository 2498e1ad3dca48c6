"""Small handlers the engine tests drive tasks with (loadable by `bb worker`)."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Through the public facade, as a user's handler module would.
from blackboard import Handler, RetryableError, TaskSpec
from blackboard.log.events import ModelCalled

if TYPE_CHECKING:
    from blackboard import TaskContext


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


async def echo(ctx: TaskContext) -> Any:
    payload = await ctx.payload()
    deps = await ctx.dependency_results()
    return {"task": ctx.task_id, "value": payload.get("value"), "deps": sorted(deps)}


async def slow(ctx: TaskContext) -> Any:
    """Sleeps; a marker file records each start (to count runs across processes)."""
    payload = await ctx.payload()
    marker = payload.get("marker")
    if marker:
        _append(Path(marker), f"{ctx.task_id} {os.getpid()} {ctx.attempt}\n")
    await asyncio.sleep(float(payload.get("seconds", 1.0)))
    return {"slept": payload.get("seconds"), "pid": os.getpid()}


async def needs(ctx: TaskContext) -> Any:
    """A local task that lacks something: spawns a frontier child, then uses it."""
    children = await ctx.children_results()
    if not children:
        child = ctx.new_task("answer", "frontier", {"question": "schema?"})
        return ctx.wait_for(child, reason="NEED: the schema")
    return {"used": list(children.values())}


async def answer(ctx: TaskContext) -> Any:
    return {"answer": f"for {(await ctx.payload())['question']}"}


async def flaky(ctx: TaskContext) -> Any:
    """Fails retryably on its first attempt."""
    if ctx.attempt == 1:
        raise RetryableError("provider busy", retry_after=0.2)
    return {"attempt": ctx.attempt}


async def busy(ctx: TaskContext) -> Any:
    """Fails retryably on every attempt."""
    raise RetryableError("provider busy", retry_after=0.05)


async def broken(ctx: TaskContext) -> Any:
    raise ValueError("handler bug")


async def gated(ctx: TaskContext) -> Any:
    ctx.request_approval("about to touch production")
    return {"approved": True}


async def fanout(ctx: TaskContext) -> Any:
    """Spawns N noop children and completes after them (1 -> N -> 1)."""
    n = int((await ctx.payload())["n"])
    children = await ctx.children_results()
    if not children:
        return ctx.wait_for(*(ctx.new_task("noop", ctx.lane) for _ in range(n)))
    return {"children": len(children)}


async def effectful(ctx: TaskContext) -> Any:
    marker = Path((await ctx.payload())["marker"])

    async def write() -> str:
        _append(marker, "x")
        return "written"

    first = await ctx.effect("write_marker", write)
    second = await ctx.effect("write_marker", write)  # recorded: not performed again
    return {"first": first, "second": second}


async def slow_effect(ctx: TaskContext) -> Any:
    """Works a while, then performs a side effect that appends to a ledger.

    The ledger counts real performances across processes: a fault test checks
    each task's line appears exactly once.
    """
    payload = await ctx.payload()
    await asyncio.sleep(float(payload.get("seconds", 0.3)))
    ledger = Path(payload["ledger"])

    async def perform() -> str:
        _append(ledger, f"{ctx.goal_id}:{ctx.task_id}\n")
        return "performed"

    # While the effect is between its start and its recorded end, a marker
    # says so: a fault test that kills a worker can pick a moment outside that
    # window (inside it, the effect rightly waits for a human).
    inflight = ledger.with_name(ledger.name + ".inflight") / f"{ctx.task_id}"
    inflight.parent.mkdir(exist_ok=True)
    inflight.touch()
    try:
        effect = await ctx.effect("ledger", perform)
    finally:
        inflight.unlink(missing_ok=True)
    return {"effect": effect, "pid": os.getpid()}


async def churn(ctx: TaskContext) -> Any:
    """Works, performs a side effect (a ledger line), maybe spawns, works again."""
    payload = await ctx.payload()
    seconds = float(payload.get("seconds", 0.2))
    ledger = Path(payload["ledger"])
    await asyncio.sleep(seconds)

    async def perform() -> str:
        _append(ledger, f"{ctx.task_id}\n")
        return "performed"

    await ctx.effect("ledger", perform)
    if payload.get("spawn") and not (await ctx.history()).children:
        child = ctx.new_task("churn", ctx.lane, {"ledger": str(ledger), "seconds": seconds})
        return ctx.wait_for(child, reason="NEED: more")
    await asyncio.sleep(seconds)
    return {"pid": os.getpid()}


async def bad_spawn(ctx: TaskContext) -> Any:
    """Spawns a child whose id is not allowed (from the payload)."""
    bad = (await ctx.payload())["child_id"]
    return ctx.wait_for(TaskSpec(task_id=bad, type="echo", lane=ctx.lane))


async def log_blip(ctx: TaskContext) -> Any:
    """Meets an unavailable log on its first two attempts (a paused node)."""
    from blackboard.errors import LogUnavailable

    if ctx.attempt <= 2:
        raise LogUnavailable("reading the task's history: JetStream did not answer")
    return {"attempt": ctx.attempt}


async def act(ctx: TaskContext) -> Any:
    """Lets the lane's model act through the Python tools, until it answers."""
    payload = await ctx.payload()
    return await ctx.converse(
        str(payload.get("prompt", "Do the steps.")), tools=["python.*"]
    )


async def spend(ctx: TaskContext) -> Any:
    """Records one model call costing ``usd`` (with ``tokens``), made ``at``.

    The time comes from the payload, so a test's injected clock and the
    recorded call agree on the day.
    """
    payload = await ctx.payload()
    made = datetime.fromisoformat(payload["at"])
    await ctx.append(
        lambda event_id: ModelCalled(
            event_id=event_id,
            goal_id=ctx.goal_id,
            task_id=ctx.task_id,
            at=made,
            actor="test",
            provider="fake",
            model="m",
            lane=ctx.lane,
            request={},
            response={},
            tokens_in=int(payload.get("tokens", 0)),
            cost_usd=float(payload.get("usd", 0.0)),
            attempt=ctx.attempt,
        )
    )
    return {"spent": payload.get("usd", 0.0)}


HANDLERS: dict[str, Handler] = {
    "spend": spend,
    "act": act,
    "log_blip": log_blip,
    "bad_spawn": bad_spawn,
    "churn": churn,
    "slow_effect": slow_effect,
    "echo": echo,
    "slow": slow,
    "needs": needs,
    "answer": answer,
    "flaky": flaky,
    "broken": broken,
    "busy": busy,
    "gated": gated,
    "fanout": fanout,
    "effectful": effectful,
}
