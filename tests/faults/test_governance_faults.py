"""Approvals and budgets across process deaths, each process as its NATS role.

The deployment is the fault harness's (separate `bb` processes, short leases)
on a nats-server running the chart's exact authorization block
(tests/deploy/nats_chart.py): the schedulers connect as `scheduler`, workers
as `worker`, the projector as `projector`, and the approvals and resumes are
`bb approve` / `bb resume` run as `operator`. The local lane is a real
OpenAI-compatible HTTP server (the fake provider, through the real `openai`
SDK), so what the provider received can be counted.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from blackboard.engine import submission as service
from blackboard.log.events import (
    BudgetEntry,
    ModelCalled,
    TaskSpec,
    ToolCallFinished,
)
from blackboard.log.server import EmbeddedServer
from blackboard.log.store import JetStreamEventStore, StoreSettings, connect
from tests.deploy.nats_chart import nats_conf, nats_env, nats_values
from tests.deploy.test_chart import by_kind, render
from tests.fakes.providers import OPENAI_PATH, Canned, FakeProviderServer, Usage
from tests.faults.harness import ROOT, Deployment, audit, submit, wait_all
from tests.waiting import goal_until, task_status, until_async

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.integration

HANDLERS = "tests.engine_handlers:HANDLERS"


class RoleDeployment(Deployment):
    """The harness on the chart's NATS users, with a bb.toml of the test's."""

    def __init__(self, tmp: Path, config: str, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(tmp)
        docs = render()
        nats = nats_values()
        # The server reads the users' passwords from its environment, as in the pod.
        for var, value in nats_env(nats, docs).items():
            monkeypatch.setenv(var, value)
        self.server = EmbeddedServer(tmp / "nats", config=nats_conf(nats))
        self.passwords: dict[str, str] = by_kind(docs, "Secret")[
            "blackboard-nats-auth"
        ]["stringData"]
        self.config = tmp / "bb.toml"
        self.config.write_text(config)

    @property
    def env(self) -> dict[str, str]:
        """The projector's: what the harness starts by name (its rebuild)."""
        return self.as_role("projector")

    @property
    def reader_env(self) -> dict[str, str]:
        return self.as_role("reader")

    def as_role(self, role: str) -> dict[str, str]:
        env = super().env
        env.update(
            BB_SCRIPTED="0",
            BB_CONFIG=str(self.config),
            BB_NATS_USER=role,
            BB_NATS_PASSWORD=self.passwords[role],
        )
        return env

    def start_as(self, role: str, name: str, *args: str) -> None:
        self.start(name, *args, env=self.as_role(role))

    def bb(self, role: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "blackboard.cli", *args],
            env=self.as_role(role),
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )

    def worker_id(self, name: str) -> str:
        """The name a worker process writes in the log (it prints it at start)."""
        self.wait(lambda: re.search(r"(worker-local-\w+): handling", self.log(name)))
        found = re.search(r"(worker-local-\w+): handling", self.log(name))
        assert found is not None
        return found.group(1)

    async def store(self) -> AsyncIterator[JetStreamEventStore]:
        """The test's own connection, as the operator (who may submit)."""
        nc = await connect(
            self.server.url, user="operator", password=self.passwords["operator"]
        )
        try:
            s = JetStreamEventStore(nc, StoreSettings())
            await s.ensure()
            yield s
        finally:
            await nc.drain()


def lane(base_url: str, price: tuple[float, float]) -> str:
    return (
        "[lanes.local]\n"
        'provider = "openai-compatible"\n'
        'model = "fake-local"\n'
        f'base_url = "{base_url}"\n'
        'tools = ["workspace.*"]\n'
        "max_retries = 0\n"
        '[prices."fake-local"]\n'
        f"input_per_mtok = {price[0]}\n"
        f"output_per_mtok = {price[1]}\n"
    )


def execute(task_id: str) -> TaskSpec:
    return TaskSpec(
        task_id=task_id,
        type="execute",
        lane="local",
        payload={"title": f"task {task_id}", "instruction": "do it"},
    )


def rounds(body: dict[str, Any]) -> int:
    """How many answers the conversation already holds."""
    return sum(m.get("role") == "assistant" for m in body.get("messages", []))


def openai_requests(fake: FakeProviderServer) -> list[dict[str, Any]]:
    return [r.body for r in fake.requests if r.path == OPENAI_PATH]


async def test_two_approvals_across_a_worker_sigkill_and_a_scheduler_failover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def responder(path: str, body: dict[str, Any]) -> Canned | None:
        if path != OPENAI_PATH:
            return None
        t = "a" if "task a" in json.dumps(body["messages"]) else "b"
        if rounds(body) == 0:
            write = {"path": f"{t}.txt", "content": f"written by {t}"}
            return Canned(tool_calls=((f"w-{t}", "workspace.write", write),))
        refused = "denied" in json.dumps(body["messages"][-1])
        return Canned(text="went on without the file" if refused else "the file is in")

    policy = (
        "[policy]\n"
        "[[policy.rules]]\n"
        'name = "writes-need-a-human"\n'
        'when = { tool = "workspace.write" }\n'
        'decision = "require_approval"\n'
    )
    with FakeProviderServer(responder=responder) as fake:
        d = RoleDeployment(
            tmp_path, lane(fake.openai_base_url, (0.0, 0.0)) + policy, monkeypatch
        )
        d.server.start()
        try:
            d.start_as("scheduler", "scheduler-1", "scheduler")
            d.wait(lambda: "leading" in d.log("scheduler-1"))
            d.start_as("scheduler", "scheduler-2", "scheduler")
            worker = ("worker", "--lane", "local", "--handlers", HANDLERS)
            d.start_as("worker", "worker-local-1", *worker)
            d.start_as("projector", "projector", "projector", "--db", str(d.db))
            async for store in d.store():
                goal = await submit(
                    store, d.settings(), "two writes", [execute("a"), execute("b")]
                )
                await goal_until(
                    store,
                    goal,
                    lambda g: (
                        [task_status(g, t) for t in "ab"] == ["awaiting_approval"] * 2
                    ),
                    60,
                )
                asked = len(openai_requests(fake))
                # The worker dies and the leading scheduler with it; the standby
                # takes the lead. A human answers each task meanwhile.
                d.signal("worker-local-1", signal.SIGKILL)
                d.signal("scheduler-1", signal.SIGKILL)
                yes = await asyncio.to_thread(
                    d.bb, "operator", "approve", "a", "--goal", goal, "--note", "ok"
                )
                no = await asyncio.to_thread(
                    d.bb, "operator", "approve", "b", "--goal", goal, "--deny"
                )
                assert (yes.returncode, no.returncode) == (0, 0), yes.stderr + no.stderr
                d.start_as("worker", "worker-local-2", *worker)
                [state] = await wait_all(store, [goal], timeout=90)
                envs = [env async for env in store.read_goal(goal)]
                row = await audit(
                    "2 approvals: worker SIGKILL + scheduler failover",
                    store,
                    [goal],
                    deployment=d,
                )
        finally:
            d.down()

    assert state.status == "done", state.reason
    assert "leading" in d.log("scheduler-2")
    assert row.problems == [] and (row.lost, row.doubled) == (0, 0)
    # Each task asked once, waited, and resumed mid-conversation: one request
    # each after the answers, none repeated.
    sent = openai_requests(fake)
    assert asked == 2 and len(sent) == 4
    assert max(Counter(json.dumps(b, sort_keys=True) for b in sent).values()) == 1
    calls = [e.event for e in envs if isinstance(e.event, ModelCalled)]
    assert len(calls) == 4
    resumed = [c for c in calls if len(c.request["messages"]) > 1]
    assert sorted(c.task_id or "" for c in resumed) == ["a", "b"]
    assert all(c.request["messages"][-1].get("tool_results") for c in resumed)
    finished = {
        e.event.task_id: e.event for e in envs if isinstance(e.event, ToolCallFinished)
    }
    assert finished["a"].error is None
    assert finished["b"].refused and "denied by operator" in (finished["b"].error or "")
    assert (state.tasks["a"].result or {})["output"] == "the file is in"
    assert (state.tasks["b"].result or {})["output"] == "went on without the file"
    # The approver is the NATS user bb approve connected as.
    by = {
        t: [(a.by, a.granted) for a in state.tasks[t].approvals.values()] for t in "ab"
    }
    assert by == {"a": [("operator", True)], "b": [("operator", False)]}
    workspace = tmp_path / "bb" / "workspaces" / goal
    assert [p.name for p in workspace.iterdir()] == ["a.txt"]
    row.checked = (
        f"{len(sent)} provider requests for 2 tasks (none repeated); "
        "approver = the operator's NATS user"
    )


async def test_a_worker_killed_holding_a_reservation_cannot_let_a_goal_overspend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight tasks on two worker processes against $0.10; one worker dies
    mid-call. Its reservation is forfeited (the call may have been paid for),
    so what the provider was asked for stays within the budget; a resume
    with a higher limit finishes the goal."""
    release = threading.Event()
    usage = Usage(input_tokens=1500, output_tokens=1800)

    def responder(path: str, body: dict[str, Any]) -> Canned | None:
        if path != OPENAI_PATH:
            return None
        release.wait(60)  # every call is in flight until the kill
        return Canned(text="the work is done", usage=usage)

    budget = 0.10
    price = (3.0, 15.0)
    per_call = (usage.input_tokens * price[0] + usage.output_tokens * price[1]) / 1e6
    with FakeProviderServer(responder=responder) as fake:
        d = RoleDeployment(tmp_path, lane(fake.openai_base_url, price), monkeypatch)
        d.server.start()
        try:
            d.start_as("scheduler", "scheduler-1", "scheduler")
            d.wait(lambda: "leading" in d.log("scheduler-1"))
            worker = ("worker", "--lane", "local", "--concurrency", "4")
            for n in (1, 2):
                d.start_as("worker", f"worker-local-{n}", *worker)
            names = {
                d.worker_id(f"worker-local-{n}"): f"worker-local-{n}" for n in (1, 2)
            }
            d.start_as("projector", "projector", "projector", "--db", str(d.db))
            async for store in d.store():
                submitted = service.goal_submitted(
                    d.settings(),
                    "eight at once",
                    specs=[execute(f"t{i}") for i in range(8)],
                    overrides={"max_cost_usd": budget},
                    submitted_by="faults",
                )
                await store.append(submitted)
                goal = submitted.goal_id

                async def entries(
                    store: JetStreamEventStore = store, goal: str = goal
                ) -> list[BudgetEntry]:
                    ledger = store.subjects.kind_filter("budget_entry", goal)
                    return [
                        e.event
                        async for e in store.read(ledger)
                        if isinstance(e.event, BudgetEntry)
                    ]

                # Both calls the budget admits are at the provider, unanswered.
                await until_async(
                    lambda: len(openai_requests(fake)) >= 2, what="two calls in flight"
                )
                reserved = [e for e in await entries() if e.op == "reserve"]
                holders = {e.actor for e in reserved if e.actor}
                victim = names[sorted(holders)[0]]
                d.signal(victim, signal.SIGKILL)
                release.set()
                await goal_until(
                    store,
                    goal,
                    lambda g: (
                        g.halted_by == "max_cost_usd"
                        and all(t.status in ("done", "held") for t in g.tasks.values())
                    ),
                    90,
                )
                before = await entries()
                asked = len(openai_requests(fake))
                resumed = await asyncio.to_thread(
                    d.bb, "operator", "resume", goal, "--max-cost", "5"
                )
                assert resumed.returncode == 0, resumed.stderr
                [state] = await wait_all(store, [goal], timeout=90)
                after = await entries()
                envs = [env async for env in store.read_goal(goal)]
                row = await audit(
                    f"8 calls vs a ${budget:.2f} budget, a worker SIGKILLed mid-call",
                    store,
                    [goal],
                    deployment=d,
                )
        finally:
            release.set()
            d.down()

    assert state.status == "done", state.reason
    assert row.problems == [] and (row.lost, row.doubled) == (0, 0)
    # Before the resume: the provider was asked for no more than the budget,
    # the dead run's reservation was forfeited at its worst case, none held.
    assert reserved and len(reserved) == 2 and asked == 2
    assert asked * per_call <= budget
    forfeits = [e for e in before if e.op == "forfeit"]
    assert 1 <= len(forfeits) <= 2 and before[-1].held == {}
    assert before[-1].spent_usd <= budget
    # Every request the provider received is a recorded call or a forfeit.
    calls = [e.event for e in envs if isinstance(e.event, ModelCalled)]
    assert len(openai_requests(fake)) == len(calls) + len(forfeits)
    assert after[-1].held == {}
    assert after[-1].spent_usd == pytest.approx(
        sum(c.cost_usd for c in calls) + sum(f.cost_usd for f in forfeits)
    )
    row.checked = (
        f"asked ${asked * per_call:.4f} of ${budget:.2f} before the halt "
        f"({asked} calls, {len(forfeits)} forfeited); resumed to done"
    )
