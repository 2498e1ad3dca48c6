"""One trace per goal, metrics that agree with the log, and real OTLP export.

In-process runs use the SDK's in-memory exporters; the cross-process run
starts a scheduler and two lane workers as separate `bb` processes exporting
OTLP/HTTP to a receiver this test starts, and checks the tree they form.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from agents.handlers import Agents
from agents.session import DEMO_GOAL
from blackboard import telemetry
from blackboard.engine import control as client
from blackboard.engine.handlers import BUILTIN
from blackboard.log.events import (
    ModelCalled,
    TaskClaimed,
    TaskCompleted,
    ToolCallFinished,
)
from blackboard.runtime import config
from blackboard.runtime.inprocess import running
from blackboard.telemetry import spans
from projections.runner import Projector
from replay import otlp
from replay.trace import build_trace
from tests.e2e.test_cli_basics import bb
from tests.engine.conftest import events_of, submit
from tests.waiting import until, until_async

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def otel() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    spans = InMemorySpanExporter()
    tp = telemetry.tracer_provider("bb-test")
    tp.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    telemetry.install(tp, MeterProvider(metric_readers=[reader]))
    try:
        yield spans, reader
    finally:
        telemetry.disable()


def scripted_settings() -> config.Settings:
    return config.load(env={"BB_SCRIPTED": "1", "BB_LEASE_SECONDS": "5"}, path=None)


async def run_demo(store, exporter: InMemorySpanExporter) -> tuple[str, list[Any]]:
    s = scripted_settings()
    agents = Agents(s)
    async with running(store, s, {**BUILTIN, **agents.handlers()}):
        goal_id = await submit(store, s, [], DEMO_GOAL)
        goal = await client.wait_goal(store, goal_id, timeout_s=60)
        assert goal.status == "done", goal.reason
        await root_span_written(exporter, goal_id)
    await agents.aclose()
    return goal_id, await events_of(store, goal_id)


async def root_span_written(exporter: InMemorySpanExporter, goal_id: str) -> None:
    """The scheduler writes the goal's root span when it sees the goal's end."""
    trace_id = telemetry.trace_id_of(goal_id)
    await until_async(
        lambda: any(
            s.parent is None and s.context.trace_id == trace_id
            for s in exporter.get_finished_spans()
        ),
        what="the goal's root span",
    )


@pytest.mark.integration
async def test_one_goal_is_one_trace_with_the_right_tree(store, otel):
    exporter, _ = otel
    goal_id, events = await run_demo(store, exporter)
    spans = exporter.get_finished_spans()
    trace_id = telemetry.trace_id_of(goal_id)
    assert {s.context.trace_id for s in spans} == {trace_id}
    by_id = {s.context.span_id: s for s in spans}
    (root,) = [s for s in spans if s.parent is None]
    assert root.name.startswith("goal Add structured audit logging")
    assert root.context.span_id == telemetry.root_span_id(goal_id)
    assert root.attributes["bb.status"] == "done"

    tasks = [s for s in spans if s.name.startswith("task ")]
    claims = [e for e in events if isinstance(e, TaskClaimed)]
    assert len(tasks) == len(claims)  # one span per attempt
    for span in tasks:
        assert span.parent.span_id == root.context.span_id
        attrs = span.attributes
        assert {"bb.goal_id", "bb.task_id", "bb.task_type", "bb.lane", "bb.worker",
                "bb.attempt", "bb.dispatch", "bb.status"} <= set(attrs)
        assert span.context.span_id == telemetry.task_span_id(
            goal_id, attrs["bb.task_id"], attrs["bb.attempt"], attrs["bb.dispatch"]
        )

    calls = [e for e in events if isinstance(e, ModelCalled)]
    chats = [s for s in spans if s.name.startswith("chat ")]
    assert len(chats) == len(calls)
    for span in chats:
        parent = by_id[span.parent.span_id]
        assert parent.name.startswith("task ")
        a = span.attributes
        assert a["gen_ai.provider.name"] == "scripted"
        assert "gen_ai.system" not in a  # deprecated by the conventions
        assert a["gen_ai.request.model"] in ("claude-sonnet-4-5", "qwen2.5-7b-instruct")
        if span.status.is_ok:
            assert a["gen_ai.usage.input_tokens"] > 0
            assert a["gen_ai.usage.output_tokens"] > 0
        else:  # the demo's one 429
            assert "429" in span.status.description
        assert "bb.cost_usd" in a
    assert sum(s.attributes["bb.cost_usd"] for s in chats) == pytest.approx(
        sum(c.cost_usd for c in calls)
    )

    # A spawned task's span links to the attempt that spawned it.
    spawned = [s for s in tasks if s.links]
    assert len(spawned) >= 20  # the planned tasks, NEED answers, fix-ups
    for span in spawned:
        (link,) = span.links
        assert link.context.span_id in by_id
        assert by_id[link.context.span_id].name.startswith("task ")


@pytest.mark.integration
async def test_every_run_of_a_task_has_its_own_ids(store, otel, tmp_path):
    """A task run again after its NEED children starts its attempts at 1 again:
    spans, the projection's model_calls and replay must still tell its runs
    (and their calls) apart, and agree on them."""
    exporter, _ = otel
    s = scripted_settings()
    agents = Agents(s)
    db = tmp_path / "p.duckdb"
    async with running(
        store, s, {**BUILTIN, **agents.handlers()}, projector=Projector(store, db)
    ) as stack:
        goal_id = await submit(store, s, [], DEMO_GOAL)
        goal = await client.wait_goal(store, goal_id, timeout_s=60)
        assert goal.status == "done", goal.reason
        await root_span_written(exporter, goal_id)
        info = await store.js.stream_info(store.events_stream)
        assert stack.projector is not None
        await stack.projector.caught_up(info.state.last_seq)
    await agents.aclose()
    envs = [env async for env in store.read_goal(goal_id)]
    events = [env.event for env in envs]
    claims = [e for e in events if isinstance(e, TaskClaimed)]
    calls = [e for e in events if isinstance(e, ModelCalled)]
    tools = [e for e in events if isinstance(e, ToolCallFinished)]
    # The demo has tasks that run again after NEED answers and fix-ups.
    assert len({(c.task_id, c.attempt) for c in claims}) < len(claims)

    live = exporter.get_finished_spans()
    ids = [sp.context.span_id for sp in live]
    assert len(ids) == len(set(ids)) == 1 + len(claims) + len(calls) + len(tools)
    assert len(tools) == 23  # the demo's agents act: 21 writes, 2 MCP reads
    assert any(c.dispatch > 1 for c in calls)
    by_id = {sp.context.span_id: sp for sp in live}
    for chat in (sp for sp in live if sp.name.startswith("chat ")):
        task = by_id[chat.parent.span_id]
        for key in ("bb.attempt", "bb.dispatch"):
            assert chat.attributes[key] == task.attributes[key]
    keys = {(c.task_id, c.dispatch, c.attempt, c.call_index) for c in calls}
    assert len(keys) == len(calls)

    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT task_id, dispatch, attempt, call_index FROM model_calls "
            "WHERE goal_id = ?",
            [goal_id],
        ).fetchall()
    finally:
        con.close()
    assert len(rows) == len(set(rows)) == len(calls)
    assert set(rows) == keys

    trace = build_trace(envs, goal_id)
    replayed = {
        (t.task_id, a.dispatch, a.n, c.event.call_index)
        for t in trace.tasks.values()
        for a in t.attempts
        for c in a.calls
    }
    assert replayed == keys
    assert sum(len(t.calls) for t in trace.tasks.values()) == len(calls)

    # `bb replay --otlp` gives every span the id it had live.
    again = InMemorySpanExporter()
    tp = telemetry.tracer_provider("bb-replay")
    tp.add_span_processor(SimpleSpanProcessor(again))
    emitted = otlp.emit(trace, telemetry.install(tp))
    replay_ids = [sp.context.span_id for sp in again.get_finished_spans()]
    assert emitted == len(replay_ids) == len(set(replay_ids))
    assert set(replay_ids) == set(ids)
    replay_links = {
        sp.context.span_id: [link.context.span_id for link in sp.links]
        for sp in again.get_finished_spans()
    }
    assert replay_links == {
        sp.context.span_id: [link.context.span_id for link in sp.links] for sp in live
    }


def test_first_dispatch_keeps_its_span_ids():
    # Spans recorded before dispatches were told apart keep their ids.
    g = "01J0000000000000000000000G"
    old_task = spans._span_id("task", g, "t", 1)
    old_call = spans._span_id("call", g, "t", 1, 0)
    assert telemetry.task_span_id(g, "t", 1) == old_task
    assert telemetry.model_span_id(g, "t", 1, 0) == old_call
    assert telemetry.task_span_id(g, "t", 1, dispatch=2) != old_task
    assert telemetry.model_span_id(g, "t", 1, 0, dispatch=2) != old_call


def _points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == name
        for p in m.data.data_points
    ]


@pytest.mark.integration
async def test_metrics_agree_with_the_log(store, otel):
    exporter, reader = otel
    _, events = await run_demo(store, exporter)
    # A worker counts an attempt's outcome once its events are written: the
    # last one may be counted just after the goal's end.
    claims = len([e for e in events if isinstance(e, TaskClaimed)])
    await until_async(
        lambda: sum(p.count for p in _points(reader, "bb.task.run_time")) == claims,
        what="every attempt counted",
    )
    calls = [e for e in events if isinstance(e, ModelCalled)]
    tokens = {
        (p.attributes["lane"], p.attributes["kind"]): p.value
        for p in _points(reader, "bb.model.tokens")
    }
    for lane in ("frontier", "local"):
        mine = [c for c in calls if c.lane == lane]
        assert tokens[(lane, "input")] == sum(c.tokens_in for c in mine)
        assert tokens[(lane, "output")] == sum(c.tokens_out for c in mine)
    cost = sum(p.value for p in _points(reader, "bb.model.cost"))
    assert cost == pytest.approx(sum(c.cost_usd for c in calls))
    outcomes: dict[str, int] = {}
    for p in _points(reader, "bb.tasks.outcomes"):
        outcomes[p.attributes["status"]] = outcomes.get(p.attributes["status"], 0) + p.value
    completed = [e for e in events if isinstance(e, TaskCompleted)]
    assert outcomes["done"] == len(completed)
    run_counts = sum(p.count for p in _points(reader, "bb.task.run_time"))
    assert run_counts == len([e for e in events if isinstance(e, TaskClaimed)])
    assert sum(p.count for p in _points(reader, "bb.task.queue_wait")) == run_counts
    # The lanes' windows, as the scheduler last saw them: the goal over.
    windows = {
        (p.attributes["lane"], p.attributes["state"]): p.value
        for p in _points(reader, "bb.lane.window")
    }
    assert windows[("local", "limit")] == 64
    assert windows[("local", "in_flight")] == windows[("local", "waiting")] == 0


@pytest.mark.integration
async def test_guardrail_breach_is_counted(store, otel):
    _, reader = otel
    s = scripted_settings()
    agents = Agents(s)
    async with running(store, s, {**BUILTIN, **agents.handlers()}):
        # Planned tasks are at depth 1; the NEED answers they spawn, at 2.
        goal_id = await submit(store, s, [], DEMO_GOAL, max_depth=1)
        goal = await client.wait_goal(store, goal_id, timeout_s=60)
        await until_async(
            lambda: _points(reader, "bb.guardrail.breaches"), what="the breach"
        )
    await agents.aclose()
    assert goal.status == "halted"
    assert goal.halted_by == "max_depth"
    (p,) = _points(reader, "bb.guardrail.breaches")
    assert (p.value, p.attributes["guardrail"]) == (1, "max_depth")


# --- across processes, over OTLP/HTTP ---------------------------------------


class Receiver:
    """An OTLP/HTTP receiver: decodes what the exporters POST."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []  # (service.name, span)
        self.metrics: list[Any] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.paths.append(self.path)
                if self.path == "/v1/traces":
                    req = ExportTraceServiceRequest()
                    req.ParseFromString(body)
                    for rs in req.resource_spans:
                        service = next(
                            a.value.string_value
                            for a in rs.resource.attributes
                            if a.key == "service.name"
                        )
                        for ss in rs.scope_spans:
                            receiver.spans.extend((service, sp) for sp in ss.spans)
                elif self.path == "/v1/metrics":
                    req = ExportMetricsServiceRequest()
                    req.ParseFromString(body)
                    receiver.metrics.append(req)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.integration
def test_spans_from_separate_processes_form_one_tree_over_otlp(cli_env, tmp_path):
    with Receiver() as receiver:
        env = dict(
            cli_env,
            BB_SCRIPTED="1",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_METRIC_EXPORT_INTERVAL="500",
        )
        procs = []
        for args in (["scheduler"], ["worker", "--lane", "frontier"],
                     ["worker", "--lane", "local"]):
            with (tmp_path / f"{args[-1]}.log").open("w") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "blackboard.cli", *args],
                        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                    )
                )
        try:
            r = bb(["demo", "--detach", "--json"], cli_env)
            assert r.returncode == 0, r.stderr
            goal_id = json.loads(r.stdout)["goal_id"]
            status: dict[str, Any] = {}

            def ended() -> bool:
                status.update(json.loads(bb(["status", goal_id, "--json"], cli_env).stdout))
                return bool(status["status"] != "running")

            until(ended, timeout_s=90, what="the goal's end")
            assert status["status"] == "done", status.get("reason")
            # The scheduler writes the root span when it sees the goal's end.
            trace_id = telemetry.trace_id_of(goal_id).to_bytes(16, "big")
            until(
                lambda: any(
                    s.trace_id == trace_id and not s.parent_span_id
                    for _, s in receiver.spans
                ),
                what="the root span",
            )
        finally:
            for p in procs:
                p.terminate()  # SIGTERM: a clean stop flushes the exporters
            for p in procs:
                p.wait(timeout=30)
        logs = "".join(p.read_text() for p in tmp_path.glob("*.log"))
        assert "Traceback" not in logs

    trace_id = telemetry.trace_id_of(goal_id).to_bytes(16, "big")
    mine = [(svc, s) for svc, s in receiver.spans if s.trace_id == trace_id]
    assert {svc for svc, _ in mine} == {"bb-scheduler", "bb-worker"}
    by_id = {s.span_id: s for _, s in mine}
    (root,) = [s for _, s in mine if not s.parent_span_id]
    assert root.name.startswith("goal ")
    tasks = [s for _, s in mine if s.name.startswith("task ")]
    assert len(tasks) >= 30
    assert all(t.parent_span_id == root.span_id for t in tasks)
    chats = [s for _, s in mine if s.name.startswith("chat ")]
    assert chats and all(by_id[c.parent_span_id].name.startswith("task ") for c in chats)
    lanes = {
        a.value.string_value for t in tasks for a in t.attributes if a.key == "bb.lane"
    }
    assert lanes == {"frontier", "local"}
    assert "/v1/metrics" in receiver.paths


@pytest.mark.integration
def test_replay_otlp_re_emits_a_past_goal_with_its_ids(cli_env, tmp_path):
    env = {k: v for k, v in cli_env.items() if k != "BB_NATS_URL"}
    env["BB_DATA_DIR"] = str(tmp_path / "bb")
    r = bb(["demo", "--json"], env, timeout=120)
    assert r.returncode == 0, r.stderr
    goal_id = json.loads(r.stdout)["goal_id"]
    export = tmp_path / "goal.ndjson"
    assert bb(["export", goal_id, "-o", str(export)], env, timeout=60).returncode == 0
    with Receiver() as receiver:
        r = bb(
            ["replay", "--from-file", str(export), "--otlp"],
            dict(env, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url),
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
    trace_id = telemetry.trace_id_of(goal_id).to_bytes(16, "big")
    spans = [s for _, s in receiver.spans]
    assert spans and all(s.trace_id == trace_id for s in spans)
    (root,) = [s for s in spans if not s.parent_span_id]
    assert root.span_id == telemetry.root_span_id(goal_id).to_bytes(8, "big")
    tasks = [s for s in spans if s.name.startswith("task ")]
    assert len(tasks) >= 30 and all(t.parent_span_id == root.span_id for t in tasks)
    plan = next(
        t for t in tasks
        if any(a.key == "bb.task_id" and a.value.string_value == "plan" for a in t.attributes)
    )
    assert plan.span_id == telemetry.task_span_id(goal_id, "plan", 1).to_bytes(8, "big")
    # Original timings: the plan's span ends after it starts, on the goal's day.
    assert plan.end_time_unix_nano > plan.start_time_unix_nano
    assert root.start_time_unix_nano <= plan.start_time_unix_nano
    chats = [s for s in spans if s.name.startswith("chat ")]
    assert len(chats) == 57
    tool_spans = [s for s in spans if s.name.startswith("execute_tool ")]
    assert len(tool_spans) == 23
