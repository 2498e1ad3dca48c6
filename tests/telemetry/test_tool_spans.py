"""Tool calls in OpenTelemetry: an `execute_tool` span per call under its run
(GenAI conventions), counts and durations by tool, and the same spans again
from the log (`bb replay --otlp`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from blackboard import telemetry
from blackboard.log.events import ToolCallFinished, ToolCallStarted
from replay import otlp
from replay.trace import build_trace
from tests import tool_history as h

if TYPE_CHECKING:
    from collections.abc import Iterator

    from opentelemetry.sdk.trace import ReadableSpan


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


def calls() -> list[tuple[ToolCallStarted, ToolCallFinished]]:
    """Each finished call of the history with its start, as a worker has them."""
    events = h.events()
    out = []
    for e in events:
        if isinstance(e, ToolCallFinished):
            start = next(
                s
                for s in events
                if isinstance(s, ToolCallStarted)
                and (s.idempotency_key, s.attempt) == (e.idempotency_key, e.attempt)
            )
            out.append((start, e))
    return out


def _ns(e: ToolCallStarted | ToolCallFinished) -> int:
    return int(e.at.timestamp() * 1_000_000_000)


def tools(spans: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    """The tool spans, by ``task:call id:attempt``."""
    out = {}
    for s in spans.get_finished_spans():
        a = dict(s.attributes or {})
        if s.name.startswith("execute_tool "):
            key = (a["bb.task_id"], a["gen_ai.tool.call.id"], a["bb.attempt"])
            out[":".join(map(str, key))] = s
    return out


def test_a_span_per_tool_call_under_its_run(otel):
    exporter, _ = otel
    for started, finished in calls():
        telemetry.get().tool_call(started, finished)
    spans = tools(exporter)
    assert sorted(spans) == ["T1:c1:1", "T1:c2:1", "T1:c3:1", "T2:c5:1", "T2:c6:2"]
    for (started, finished), key in zip(calls(), sorted(spans), strict=True):
        span = spans[key]
        assert span.name == f"execute_tool {finished.tool}"
        assert span.kind == SpanKind.INTERNAL
        assert span.context is not None and span.parent is not None
        assert finished.task_id is not None
        assert span.context.trace_id == telemetry.trace_id_of(h.GOAL)
        assert span.parent.span_id == telemetry.task_span_id(
            h.GOAL, finished.task_id, finished.attempt, finished.dispatch
        )
        assert span.context.span_id == telemetry.tool_span_id(
            h.GOAL,
            finished.task_id,
            finished.attempt,
            finished.idempotency_key,
            finished.dispatch,
        )
        assert (span.start_time, span.end_time) == (_ns(started), _ns(finished))
        a = dict(span.attributes or {})
        assert {
            k: a[k]
            for k in (
                "gen_ai.operation.name",
                "gen_ai.tool.name",
                "gen_ai.tool.call.id",
                "gen_ai.tool.type",
                "bb.tool.effect",
                "bb.tool.source",
                "bb.tool.model_call",
                "bb.goal_id",
                "bb.task_id",
            )
        } == {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": finished.tool,
            "gen_ai.tool.call.id": finished.call_id,
            "gen_ai.tool.type": "function",
            "bb.tool.effect": finished.effect,
            "bb.tool.source": started.source,
            "bb.tool.model_call": started.model_call,
            "bb.goal_id": h.GOAL,
            "bb.task_id": finished.task_id,
        }
        # Arguments and results are the log's (opt-in in the conventions).
        assert not {k for k in a if "argument" in k or "result" in k}
    ok, failed, refused = spans["T1:c1:1"], spans["T1:c2:1"], spans["T1:c3:1"]
    assert ok.status.status_code == StatusCode.UNSET
    assert "error.type" not in (ok.attributes or {})
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "disk full"
    assert (failed.attributes or {})["error.type"] == "_OTHER"
    assert (failed.attributes or {})["bb.tool.status"] == "error"
    assert refused.status.status_code == StatusCode.ERROR
    assert (refused.attributes or {})["bb.tool.status"] == "refused"
    # A call run again by a later attempt is a span of that run.
    rerun = spans["T2:c6:2"]
    assert rerun.parent is not None
    assert rerun.parent.span_id == telemetry.task_span_id(h.GOAL, "T2", 2)


def test_without_its_start_the_span_starts_duration_before_the_end(otel):
    exporter, _ = otel
    _, finished = calls()[1]
    telemetry.get().tool_call(None, finished)
    (span,) = tools(exporter).values()
    assert span.end_time == _ns(finished)
    assert span.end_time - (span.start_time or 0) == 4_000_000  # 4 ms
    assert "bb.tool.source" not in (span.attributes or {})


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


def test_tool_calls_are_counted_and_timed_by_tool_and_status(otel):
    _, reader = otel
    for started, finished in calls():
        telemetry.get().tool_call(started, finished)
    counted = {
        (p.attributes["tool"], p.attributes["status"]): p.value
        for p in _points(reader, "bb.tool.calls")
    }
    assert counted == {
        ("workspace.read", "ok"): 3,
        ("workspace.write", "error"): 1,
        ("shell.run", "refused"): 1,
    }
    timed = {
        (p.attributes["tool"], p.attributes["status"]): (p.count, p.sum)
        for p in _points(reader, "bb.tool.duration")
    }
    assert timed[("workspace.read", "ok")] == (3, pytest.approx(0.016))
    assert timed[("workspace.write", "error")] == (1, pytest.approx(0.004))


def test_disabled_telemetry_records_nothing():
    telemetry.disable()
    for started, finished in calls():
        telemetry.get().tool_call(started, finished)  # returns at once


def test_replay_otlp_re_emits_the_tool_spans_with_their_ids(otel):
    exporter, _ = otel
    for started, finished in calls():
        telemetry.get().tool_call(started, finished)
    live = tools(exporter)
    exporter.clear()

    trace = build_trace(h.envelopes())
    emitted = otlp.emit(trace, telemetry.get())
    replayed = tools(exporter)
    # Running calls (the abandoned c6, c7) have no span, live or replayed.
    assert sorted(replayed) == sorted(live)
    for key, span in replayed.items():
        was = live[key]
        assert span.context is not None and was.context is not None
        assert span.context.span_id == was.context.span_id
        assert span.parent is not None and was.parent is not None
        assert span.parent.span_id == was.parent.span_id
        assert (span.start_time, span.end_time) == (was.start_time, was.end_time)
        assert span.attributes == was.attributes
        assert span.status.status_code == was.status.status_code
    everything = exporter.get_finished_spans()
    assert emitted == len(everything)
    by_id = {s.context.span_id: s for s in everything if s.context is not None}
    for span in replayed.values():
        assert span.parent is not None
        assert by_id[span.parent.span_id].name == "task execute"
