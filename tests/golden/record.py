"""Record the golden histories afresh: real runs, exported as NDJSON.

Run on purpose only (it replaces the recorded goals, so every expected file
must be regenerated and reviewed after it)::

    .venv/bin/python -m tests.golden.record          # all of them
    .venv/bin/python -m tests.golden.record engine   # one of them
    UPDATE_GOLDEN=1 .venv/bin/pytest tests/golden -q # then the expected files

- ``demo``: ``bb demo`` on the scripted models (``BB_SCRIPTED=1``), on its own
  fresh embedded server, then ``bb export``: sequences 1..N, so the same
  events appended to an empty stream replay to the same bytes.
- ``engine``: the test handlers (tests/engine_handlers.py) in process: a NEED
  follow-up (``needs`` spawns ``answer``), a retry (``flaky``), an approval
  (``gated``, approved), and a guardrail halt (``max_tasks`` 4: the spawned
  child is the fifth) resumed with a higher limit.
- ``cancel``: a final failure (``broken``) and the dependent it cancels, a
  task waiting for approval, and a running one, then ``bb cancel``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from blackboard.engine import control as client
from blackboard.log.server import EmbeddedServer
from blackboard.log.store import JetStreamEventStore, StoreSettings, connect
from blackboard.runtime.inprocess import running
from replay.export import export_lines
from tests.engine.conftest import engine_settings, spec, submit
from tests.engine_handlers import HANDLERS
from tests.waiting import goal_until, task_status

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _bb(args: list[str], env: dict[str, str]) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "blackboard.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if r.returncode != 0:
        raise SystemExit(f"bb {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def record_demo(tmp: Path) -> bytes:
    """``bb demo`` on a fresh data dir, then ``bb export`` of its goal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BB_", "OTEL_"))}
    env.update(BB_DATA_DIR=str(tmp / "demo"), BB_SCRIPTED="1")
    goal_id = json.loads(_bb(["demo", "--json"], env))["goal_id"]
    out = tmp / "demo.ndjson"
    _bb(["export", goal_id, "-o", str(out)], env)
    return out.read_bytes()


async def _engine_goal(store: JetStreamEventStore) -> str:
    s = engine_settings(backoff_base_s=0.1)
    async with running(store, s, HANDLERS, concurrency=4):
        goal_id = await submit(
            store,
            s,
            [
                spec("need", "needs"),
                spec("flaky", "flaky"),
                spec("gate", "gated"),
                spec("after", "echo", "local", "need", "flaky", "gate", value=1),
            ],
            "golden: need, retry, approval, halt and resume",
            max_tasks=4,
        )
        await goal_until(store, goal_id, lambda g: g.status == "halted")
        await goal_until(
            store,
            goal_id,
            lambda g: (
                task_status(g, "gate") == "awaiting_approval"
                and task_status(g, "flaky") == "done"
            ),
        )
        await client.resume(store, goal_id, {"max_tasks": 10}, by="ana")
        await client.approve(store, "gate", goal_id=goal_id, by="ana", note="go")
        goal = await client.wait_goal(store, goal_id, until=client.FINAL, timeout_s=60)
        assert goal.status == "done", goal.reason
    return goal_id


async def _cancel_goal(store: JetStreamEventStore) -> str:
    s = engine_settings(backoff_base_s=0.1)
    async with running(store, s, HANDLERS, concurrency=4):
        goal_id = await submit(
            store,
            s,
            [
                spec("ok", "echo", value=2),
                spec("bug", "broken"),
                spec("blocked", "echo", "local", "bug"),
                spec("gate", "gated"),
                spec("long", "slow", seconds=60),
            ],
            "golden: a failure, then cancel",
        )
        await goal_until(
            store,
            goal_id,
            lambda g: (
                task_status(g, "gate") == "awaiting_approval"
                and task_status(g, "long") == "claimed"
                and task_status(g, "blocked") == "cancelled"
                and task_status(g, "ok") == "done"
            ),
        )
        await client.cancel(store, goal_id, reason="golden", by="ana")
        goal = await client.wait_goal(store, goal_id, until=client.FINAL, timeout_s=60)
        assert goal.status == "cancelled", goal.status
    return goal_id


async def _record_engine(
    tmp: Path, goal: Callable[[JetStreamEventStore], Awaitable[str]]
) -> bytes:
    with EmbeddedServer(tmp / "nats") as server:
        nc = await connect(server.url, name="golden-record")
        try:
            store = JetStreamEventStore(nc, StoreSettings())
            await store.ensure()
            goal_id = await goal(store)
            return export_lines([env async for env in store.read_goal(goal_id)])
        finally:
            await nc.drain()


RECORDERS: dict[str, Callable[[Path], bytes]] = {
    "demo": record_demo,
    "engine": lambda tmp: asyncio.run(_record_engine(tmp, _engine_goal)),
    "cancel": lambda tmp: asyncio.run(_record_engine(tmp, _cancel_goal)),
}


def main(names: list[str]) -> None:
    """Record the named histories (all by default) into tests/golden/."""
    for name in names or list(RECORDERS):
        with tempfile.TemporaryDirectory(prefix=f"bb-golden-{name}-") as tmp:
            data = RECORDERS[name](Path(tmp))
        (HERE / f"{name}.ndjson").write_bytes(data)
        lines = data.count(b"\n")
        print(f"recorded {name}.ndjson: {lines} events", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
