"""A deployment of real `bb` processes on one nats-server, for fault tests.

Scripted models (`BB_SCRIPTED=1`), short leases, the engine tests' handlers
loaded beside the agents'. Processes can be killed, paused and restarted, and
the server stopped and started again on the same port and store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from blackboard.engine import control as client
from blackboard.engine import submission as service
from blackboard.log.events import (
    SideEffectCompleted,
    TaskCompleted,
    TaskSpec,
    ToolCallFinished,
)
from blackboard.log.server import EmbeddedServer
from blackboard.log.store import JetStreamEventStore, StoreSettings, connect
from blackboard.runtime import config
from tests.waiting import until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = "tests.engine_handlers:HANDLERS"


@dataclass
class Row:
    """One line of the fault report."""

    fault: str
    goals: int
    tasks: int
    lost: int
    doubled: int
    effects: int
    problems: list[str] = field(default_factory=list)
    projection: str = "-"
    """Whether the live projection equals a --rebuild from scratch."""
    checked: str = "-"
    """What else the test checked, in its own figures (the report's last column)."""


REPORT: list[Row] = []


D = TypeVar("D", bound="Deployment")


@contextlib.contextmanager
def running(d: D) -> Iterator[D]:
    """A deployment up for a test, down after it; no process may have crashed."""
    d.up()
    try:
        yield d
    finally:
        d.down()
    assert d.tracebacks() == [], "a process crashed"


class Deployment:
    """nats-server + schedulers + lane workers as separate processes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.server = EmbeddedServer(tmp / "nats")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ledger = tmp / "ledger"
        self.ledger.touch()

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BB_", "OTEL_", "ANTHROPIC_", "OPENAI_"))
        }
        env.update(
            BB_NATS_URL=self.server.url,
            BB_SCRIPTED="1",
            BB_LEASE_SECONDS="2",
            BB_LOCK_TTL_SECONDS="2",
            # Snapshots of the scheduler's fold every few dozen events, so a
            # failover in these goals restores one (the default is 50,000).
            BB_SNAPSHOT_EVERY="40",
            BB_DATA_DIR=str(self.tmp / "bb"),
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
        )
        return env

    @property
    def reader_env(self) -> dict[str, str]:
        """What ``bb sql`` runs with (it asks the live projector over NATS)."""
        return self.env

    def settings(self) -> config.Settings:
        return config.load(env=self.env, path=None)

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "blackboard.cli", *args],
                env=self.env if env is None else env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def up(self) -> None:
        """A leading scheduler, a standby, one frontier and two local workers."""
        self.server.start()
        self.start_processes()

    def start_processes(self) -> None:
        """Up's processes, once the server is up."""
        self.start("scheduler-1", "scheduler")
        self.wait(lambda: "leading" in self.log("scheduler-1"))
        self.start("scheduler-2", "scheduler")
        self.start(
            "worker-frontier",
            "worker",
            "--lane",
            "frontier",
            "--concurrency",
            "4",
            "--handlers",
            HANDLERS,
        )
        self.start_local_workers()
        self.start("projector", "projector", "--db", str(self.db))

    def start_local_workers(self, n: int = 2) -> None:
        """``n`` workers of the local lane, 4 slots each."""
        for i in range(1, n + 1):
            self.start(
                f"worker-local-{i}",
                "worker",
                "--lane",
                "local",
                "--concurrency",
                "4",
                "--handlers",
                HANDLERS,
            )

    @property
    def db(self) -> Path:
        return self.tmp / "live.duckdb"

    def projection_equals_rebuild(self, last_seq: int) -> bool:
        """Stop the live projector once caught up; rebuild; compare every table."""
        from tests.projections.test_projector import caught_up, tables

        env = self.reader_env
        self.wait(lambda: caught_up(env, self.db, last_seq), timeout=60)
        self.procs["projector"].terminate()
        self.procs["projector"].wait(timeout=30)
        rebuilt = self.tmp / "rebuilt.duckdb"
        self.start("rebuild", "projector", "--db", str(rebuilt), "--rebuild")
        self.wait(lambda: caught_up(env, rebuilt, last_seq), timeout=60)
        self.procs["rebuild"].terminate()
        self.procs["rebuild"].wait(timeout=30)
        return tables(self.db) == tables(rebuilt)

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.procs[name].send_signal(sig)
        if sig == signal.SIGKILL:
            self.procs[name].wait()

    def down(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.server.stop()

    @staticmethod
    def wait(predicate: Any, timeout: float = 30.0) -> None:
        until(predicate, timeout_s=timeout)

    def tracebacks(self) -> list[str]:
        return [p.name for p in self.tmp.glob("*.log") if "Traceback" in p.read_text()]

    async def store(self) -> AsyncIterator[JetStreamEventStore]:
        nc = await connect(self.server.url, name="fault-test")
        try:
            s = JetStreamEventStore(nc, StoreSettings())
            await s.ensure()
            yield s
        finally:
            await nc.drain()


def effect_goal(ledger: Path, n: int = 12, seconds: float = 0.4) -> list[TaskSpec]:
    """n local tasks that work a while, then append to the ledger once."""
    return [
        TaskSpec(
            task_id=f"e{i:02d}",
            type="slow_effect",
            lane="local",
            payload={"ledger": str(ledger), "seconds": seconds},
        )
        for i in range(n)
    ]


async def submit(
    store: JetStreamEventStore,
    settings: config.Settings,
    text: str,
    specs: list[TaskSpec] | None = None,
) -> str:
    event = service.goal_submitted(
        settings, text, specs=specs or (), submitted_by="faults"
    )
    await store.append(event)
    return event.goal_id


async def wait_all(
    store: JetStreamEventStore, goal_ids: list[str], timeout: float = 90
):
    """Every goal's end state; on a timeout, a failure that says what is stuck.

    The timeout is under pytest's own (120 s), so a stuck goal fails with its
    tasks' states rather than with a stack of the event loop.
    """
    try:
        return await asyncio.gather(
            *(client.wait_goal(store, g, timeout_s=timeout) for g in goal_ids)
        )
    except TimeoutError:
        stuck = []
        for g in goal_ids:
            goal = await client.goal_state(store, g)
            waiting = [
                f"{t.task_id} {t.status} {t.approval_reason or t.held_reason}".strip()
                for t in goal.tasks.values()
                if t.status not in ("done", "failed", "cancelled")
            ]
            stuck.append(f"goal {g} {goal.status}: {'; '.join(waiting) or '-'}")
        raise AssertionError(
            f"not ended within {timeout:g}s:\n" + "\n".join(stuck)
        ) from None


def ledger_lines(ledger: Path) -> list[str]:
    """Each performance of an effect: one line in the ledger."""
    return ledger.read_text().split()


async def audit(
    fault: str,
    store: JetStreamEventStore,
    goal_ids: list[str],
    ledger: Path | None = None,
    expect: str = "done",
    deployment: Deployment | None = None,
) -> Row:
    """Every goal at its right end; no task completed twice; no effect twice."""
    row = Row(fault, len(goal_ids), 0, 0, 0, 0)
    for goal_id in goal_ids:
        goal = await client.goal_state(store, goal_id)
        events = [env.event async for env in store.read_goal(goal_id)]
        if goal.status != expect:
            row.problems.append(f"goal {goal_id} is {goal.status}: {goal.reason}")
        row.tasks += len(goal.tasks)
        row.lost += sum(t.status != "done" for t in goal.tasks.values())
        completed = Counter(e.task_id for e in events if isinstance(e, TaskCompleted))
        effects = Counter(
            e.idempotency_key for e in events if isinstance(e, SideEffectCompleted)
        )
        # A tool call that acted, by the provider's call id: a later attempt
        # reuses the recorded answer, so a call run again has the same id.
        acted = Counter(
            (e.task_id, e.tool, e.call_id)
            for e in events
            if isinstance(e, ToolCallFinished)
            and e.effect != "read"
            and not e.refused
            and e.error is None
        )
        row.effects += len(effects) + len(acted)
        row.doubled += sum(n - 1 for n in completed.values())
        row.doubled += sum(n - 1 for n in effects.values())
        row.doubled += sum(n - 1 for n in acted.values())
    if ledger is not None:
        lines = Counter(ledger_lines(ledger))
        row.doubled += sum(n - 1 for n in lines.values())
    if deployment is not None:
        info = await store.js.stream_info(store.events_stream)
        last = int(info.state.last_seq)
        same = await asyncio.to_thread(deployment.projection_equals_rebuild, last)
        row.projection = "equal" if same else "DIFFERS"
        if not same:
            row.problems.append("the projection differs from a --rebuild")
    REPORT.append(row)
    return row
