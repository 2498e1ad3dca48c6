"""The chart's NATS roles on a real nats-server running the exact
authorization block a release renders (tests/deploy/nats_chart.py): each role
may write its own event kinds and no other, the operator approves, and the
server refuses a worker's forged approval, resume or goal end, its deleting a
consumer or a stream, and any event from the projector or a reader.

The whole goal, each process connecting as its role, is run by
tests/deploy/test_chart.py; what the server refuses is checked here, in what
it reports (its log and the connection's error) and in what the log holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import TYPE_CHECKING, Any

import pytest

from blackboard.engine import control
from blackboard.errors import PermissionDenied
from blackboard.log import events as ev
from blackboard.log import roles
from blackboard.log.server import EmbeddedServer
from blackboard.log.store import JetStreamEventStore, StoreSettings, connect
from blackboard.log.subjects import EVENTS_STREAM, WORK_STREAM
from tests import factories as f
from tests.deploy.nats_chart import nats_conf, nats_env, nats_values
from tests.deploy.test_chart import by_kind, render
from tests.e2e.test_cli_basics import bb

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from nats.aio.client import Client as NatsClient

pytestmark = pytest.mark.integration

_VIOLATION = re.compile(r'"\$G/user:(\w+)" - Publish Violation - Subject "([^"]+)"')

ROLES = tuple(roles.WRITES)
ALL_KINDS = sorted(ev.KINDS | {k for kinds in roles.WRITES.values() for k in kinds})


class ChartNats:
    """A nats-server with the chart's NATS config and passwords."""

    def __init__(self, server: EmbeddedServer, passwords: dict[str, str]) -> None:
        self.server = server
        self.passwords = passwords

    def violations(self) -> set[tuple[str, str]]:
        """(user, subject) of every publish the server refused, from its log."""
        return set(_VIOLATION.findall(self.server.log_path.read_text()))

    async def client(self, role: str, errors: list[Exception] | None = None) -> Any:
        async def keep(e: Exception) -> None:
            if errors is not None:
                errors.append(e)

        return await connect(
            self.server.url,
            user=role,
            password=self.passwords[role],
            error_cb=keep,
        )

    @contextlib.asynccontextmanager
    async def store(self, role: str) -> AsyncIterator[JetStreamEventStore]:
        nc = await self.client(role)
        try:
            store = JetStreamEventStore(nc, StoreSettings())
            await store.ensure()
            yield store
        finally:
            await nc.close()

    def env(self, role: str, tmp_path: Path, cli_env: dict[str, str]) -> dict[str, str]:
        return dict(
            cli_env,
            BB_NATS_URL=self.server.url,
            BB_NATS_USER=role,
            BB_NATS_PASSWORD=self.passwords[role],
            BB_DATA_DIR=str(tmp_path / role),
        )


@pytest.fixture
def chart_nats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ChartNats]:
    docs = render()
    nats = nats_values()
    # The NATS container's env, from the chart's Secret: the server reads the
    # passwords' variables from its environment, as in the pod.
    for var, value in nats_env(nats, docs).items():
        monkeypatch.setenv(var, value)
    server = EmbeddedServer(tmp_path / "nats", config=nats_conf(nats))
    server.start()
    passwords = by_kind(docs, "Secret")["blackboard-nats-auth"]["stringData"]
    assert set(passwords) == set(ROLES)
    try:
        yield ChartNats(server, passwords)
    finally:
        server.stop()


async def test_each_role_may_write_exactly_its_event_kinds(chart_nats: ChartNats):
    async with chart_nats.store("scheduler") as sched:  # creates the streams
        clients: dict[str, NatsClient] = {}
        errors: dict[str, list[Exception]] = {r: [] for r in ROLES}
        try:
            for role in ROLES:
                clients[role] = await chart_nats.client(role, errors[role])
            # Every kind, from every role, on the subject writers use (the
            # task token names the role, so what lands says who wrote it).
            for role, nc in clients.items():
                for kind in ALL_KINDS:
                    await nc.publish(f"bb.in.evt.G1.{role}.{kind}", b"{}")
                await nc.flush()
            refused = {
                role: {kind for kind in ALL_KINDS if kind not in roles.WRITES[role]}
                for role in ROLES
            }
            want = sum(len(k) for k in refused.values())
            for _ in range(100):
                if sum(len(e) for e in errors.values()) >= want:
                    break
                await asyncio.sleep(0.05)
        finally:
            for nc in clients.values():
                await nc.close()
        info = await sched.js.stream_info(EVENTS_STREAM, subjects_filter="bb.evt.>")
    stored = info.state.subjects or {}
    for role in ROLES:
        landed = {s.rsplit(".", 1)[1] for s in stored if s.split(".")[3] == role}
        assert landed == roles.WRITES[role], role
        said = {_subject_of(e).rsplit(".", 1)[1] for e in errors[role]}
        assert said == refused[role], role
    assert chart_nats.violations() == {
        (role, f"bb.in.evt.G1.{role}.{kind}")
        for role, kinds in refused.items()
        for kind in kinds
    }


def _subject_of(error: Exception) -> str:
    """The subject of nats-py's report of a violation (it lowercases the text)."""
    m = re.search(r'permissions violation for publish to "([^"]+)"', str(error))
    assert m is not None, error
    return m.group(1)


async def test_a_workers_forgeries_and_deletions_are_refused_the_operator_approves(
    chart_nats: ChartNats,
):
    async with (
        chart_nats.store("scheduler") as sched,
        chart_nats.store("operator") as operator,
        chart_nats.store("worker") as worker,
        chart_nats.store("projector") as projector,
        chart_nats.store("reader") as reader,
    ):
        g = "G1"
        await operator.append(f.goal(g))
        await sched.append_batch([(f.created(g, "deploy"), 0)])
        asked = ev.ApprovalRequested(
            event_id="ask", goal_id=g, task_id="deploy", at=f.at(), actor="sched"
        )
        await sched.append(asked, expect=await sched.last_seq(g, "deploy"))
        # A large event's body goes to the blob bucket; written again (a retry)
        # the blob is found, not put again: that would purge, which no role may.
        big = f.created(g, "big", payload={"text": "x" * 300_000})
        assert await sched.append(big) == await sched.append(big)
        # The worker's lane consumer, which it may create (and must not delete).
        await worker.work_queue().ensure_lane("local", lease_s=30, max_ack_pending=8)

        base: dict[str, Any] = {"goal_id": g, "at": f.at(), "actor": "worker-x"}
        forged: list[tuple[JetStreamEventStore, ev.Event]] = [
            (
                worker,
                ev.ApprovalGranted(event_id="f1", task_id="deploy", by="ana", **base),
            ),
            (
                worker,
                ev.GoalResumed(
                    event_id="f2", limits=ev.Limits(max_cost_usd=1e9), **base
                ),
            ),
            (worker, ev.GoalCompleted(event_id="f3", **base)),
            (projector, f.completed(g, "deploy")),
            (reader, f.goal("G2")),
        ]
        # A refused publish is only reported on the connection; the store
        # raises PermissionDenied when it is, instead of retrying the silence.
        results = await asyncio.gather(
            *(store.append(event) for store, event in forged), return_exceptions=True
        )
        assert all(isinstance(r, PermissionDenied) for r in results), results
        assert "refused" in str(results[0]) and "Roles" in str(results[0])

        # JetStream API calls that delete what the worker does not own: the
        # server drops them (no answer comes) and reports each violation.
        wnc = worker.nc
        for subject in (
            f"$JS.API.CONSUMER.DELETE.{WORK_STREAM}.bb-local",
            f"$JS.API.STREAM.DELETE.{EVENTS_STREAM}",
            f"$JS.API.STREAM.PURGE.{EVENTS_STREAM}",
        ):
            with pytest.raises(TimeoutError):
                await wnc.request(subject, b"", timeout=1)
        assert (await worker.js.consumer_info(WORK_STREAM, "bb-local")).name
        assert (await worker.js.stream_info(EVENTS_STREAM)).state.messages == 4

        # The projector may re-create its own durable consumer (delete and add).
        await (await projector.durable("bb-projector", 1)).close()
        await (await projector.durable("bb-projector", 1)).close()

        await control.approve(operator, "deploy", goal_id=g, by="operator")
        envs = [e async for e in reader.read_goal(g)]
        assert [ev.kind(e.event) for e in envs] == [
            "goal_submitted",
            "task_created",
            "approval_requested",
            "task_created",
            "approval_granted",
        ]
        granted = envs[-1].event
        assert isinstance(granted, ev.ApprovalGranted)
        assert (granted.by, granted.actor) == ("operator", "cli:operator")
        assert await reader.last_event("G2", None) is None

    assert chart_nats.violations() == {
        ("worker", "bb.in.evt.G1.deploy.approval_granted"),
        ("worker", "bb.in.evt.G1._.goal_resumed"),
        ("worker", "bb.in.evt.G1._.goal_completed"),
        ("worker", "$JS.API.CONSUMER.DELETE.BB_WORK.bb-local"),
        ("worker", "$JS.API.STREAM.DELETE.BB_EVENTS"),
        ("worker", "$JS.API.STREAM.PURGE.BB_EVENTS"),
        ("projector", "bb.in.evt.G1.deploy.task_completed"),
        ("reader", "bb.in.evt.G2._.goal_submitted"),
    }


def test_bb_approve_records_the_nats_user_it_connects_as(
    chart_nats: ChartNats, tmp_path: Path, cli_env: dict[str, str]
):
    submitter = chart_nats.env("submitter", tmp_path, cli_env)
    operator = chart_nats.env("operator", tmp_path, cli_env)
    r = bb(["submit", "ship it", "--json"], submitter)
    assert r.returncode == 0, r.stderr
    goal = json.loads(r.stdout)["goal_id"]

    async def gate() -> None:
        async with chart_nats.store("scheduler") as sched:
            await sched.append_batch([(f.created(goal, "deploy"), 0)])
            asked = ev.ApprovalRequested(
                event_id="ask", goal_id=goal, task_id="deploy", at=f.at(), actor="s"
            )
            await sched.append(asked, expect=await sched.last_seq(goal, "deploy"))

    asyncio.run(gate())

    r = bb(["approve", "deploy", "--by", "mallory"], operator)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--by mallory contradicts the NATS user operator" in r.stderr
    # A submitter may submit but not approve: the server refuses, in one line.
    r = bb(["approve", "deploy"], submitter)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "refused" in r.stderr and "approval_granted" in r.stderr
    r = bb(["approve", "deploy", "--by", "operator", "--note", "looked fine"], operator)
    assert r.returncode == 0, r.stderr

    async def written() -> tuple[ev.Event, ev.Event]:
        async with chart_nats.store("reader") as reader:
            submitted = await reader.last_event(goal, None, "goal_submitted")
            granted = await reader.last_event(goal, "deploy", "approval_granted")
        assert submitted is not None and granted is not None
        return submitted.event, granted.event

    submitted, granted = asyncio.run(written())
    assert isinstance(submitted, ev.GoalSubmitted)
    assert submitted.submitted_by == "submitter"
    assert isinstance(granted, ev.ApprovalGranted)
    assert (granted.by, granted.note) == ("operator", "looked fine")


def test_a_reader_before_any_stream_is_told_to_start_the_scheduler(
    chart_nats: ChartNats, tmp_path: Path, cli_env: dict[str, str]
):
    # A reader may not create the streams (every other role may): refused,
    # it says so in one line rather than waiting on a server that never answers.
    r = bb(["status"], chart_nats.env("reader", tmp_path, cli_env))
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "stream.create.bb_events" in r.stderr.lower()
    assert "start it first" in r.stderr
    assert chart_nats.violations() == {("reader", "$JS.API.STREAM.CREATE.BB_EVENTS")}


async def test_the_scheduler_keeps_its_snapshots_and_a_worker_cannot(
    chart_nats: ChartNats,
):
    """Saving (again: the old chunks purged) and loading, as the scheduler."""
    from blackboard.errors import StoreError
    from blackboard.log.snapshots import JetStreamSnapshots

    async with chart_nats.store("scheduler") as sched:
        snaps = sched.snapshots()
        big = bytes(range(256)) * 2048  # 512 KiB: four chunks
        await snaps.save("scheduler", big)
        await snaps.save("scheduler", big[::-1])
        assert await snaps.load("scheduler") == big[::-1]
    async with chart_nats.store("worker") as worker:
        forged = JetStreamSnapshots(worker.nc, "bb_snapshots", patience_s=1.0)
        with pytest.raises(StoreError):
            await forged.save("scheduler", b"not the fold")
    async with chart_nats.store("scheduler") as sched:
        assert await sched.snapshots().load("scheduler") == big[::-1]
    refused = {user for user, _ in chart_nats.violations()}
    assert refused == {"worker"}
