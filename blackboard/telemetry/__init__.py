"""OpenTelemetry traces and metrics: the only package that talks to the SDK.

**One trace per goal.** Its trace id is the goal's ULID (both are 128 bits),
and every span id is derived from what the span stands for (the goal; a run
of a task; a model call), so every process (the submitter, a scheduler and its
standby, workers anywhere) and ``bb replay --otlp`` long after agree on them
without asking anyone. The goal's context travels in the W3C ``traceparent``
header: on GoalSubmitted, and on every work message, from which a worker takes
the parent of its attempt span.

Spans::

    goal <text>                    scheduler, from submission to the goal's end
    ├── task <type>                worker, one per run (goal, task, lane,
    │   │                          worker, dispatch, attempt, status); a
    │   │                          spawned task's span links to the run that
    │   │                          spawned it
    │   ├── chat <model>           one per model call, GenAI conventions + cost
    │   └── execute_tool <tool>    one per tool call, GenAI conventions + effect
    └── ...

A run is one attempt of one dispatch: a task made ready again (after the
children it waited for) starts its attempts at 1 again, so ``(dispatch,
attempt)`` is what tells its runs apart, in span ids as in the projection's
``model_calls`` and in replay.

Export is configured by the standard ``OTEL_*`` variables. With none set,
nothing is installed and every call here returns at once.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from datetime import datetime

    from opentelemetry.metrics import Meter, MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from blackboard.log.events import (
        BreakerChanged,
        ModelCalled,
        ToolCallFinished,
        ToolCallStarted,
    )

__all__ = [
    "Telemetry",
    "configure_from_env",
    "get",
    "model_span_id",
    "root_span_id",
    "shutdown",
    "task_span_id",
    "tool_span_id",
    "trace_id_of",
    "traceparent",
    "tracer_provider",
]

OTEL_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
)


def parse_traceparent(value: str | None) -> SpanContext | None:
    """The span context in a ``traceparent`` header, or None if malformed."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id = int(parts[1], 16), int(parts[2], 16)
        flags = int(parts[3], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


_NEXT_SPAN_ID: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "bb_next_span_id", default=None
)
_NEXT_TRACE_ID: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "bb_next_trace_id", default=None
)


def error_status(description: str) -> Status:
    """An error status for a span (so callers need not import the SDK)."""
    return Status(StatusCode.ERROR, description)


class _PresetIds(IdGenerator):
    """Random ids, unless the caller has said which ids the next span gets.

    The SDK asks for a trace id only for a span without a parent (a goal's
    root span), and for a span id for every span.
    """

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        preset = _NEXT_SPAN_ID.get()
        return preset if preset is not None else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        preset = _NEXT_TRACE_ID.get()
        return preset if preset is not None else self._random.generate_trace_id()


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000_000)


def _tool_status(e: ToolCallFinished) -> str:
    # As projections.rows.tool_status (which this package may not import).
    if e.refused:
        return "refused"
    return "ok" if e.error is None else "error"


def _parent(goal_id: str, span_id: int | None = None) -> otel_context.Context:
    ctx = SpanContext(
        trace_id_of(goal_id),
        span_id if span_id is not None else root_span_id(goal_id),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(ctx))


# --- the instruments -----------------------------------------------------------


@dataclass
class Telemetry:
    """Tracer, meter and instruments of one process (no-op when disabled)."""

    tracer: Tracer | None = None
    meter: Meter | None = None
    lag: dict[str, int] = field(default_factory=dict)
    """Pending work messages per lane, refreshed by the lane's worker."""
    open_tasks: dict[tuple[str, str], int] = field(default_factory=dict)
    """Tasks of running goals by (lane, status), refreshed by the scheduler."""
    windows: dict[tuple[str, str], int] = field(default_factory=dict)
    """Each lane's dispatch window by (lane, what): ``in_flight``,
    ``waiting`` (held back by it) and ``limit``, refreshed by the scheduler."""
    breakers: dict[tuple[str, str], str] = field(default_factory=dict)
    """Each model's circuit breaker by (provider, model), as this process
    last read it before a call: ``closed``, ``half_open`` or ``open``."""
    _instruments: dict[str, Any] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """Whether anything is recorded at all."""
        return self.tracer is not None or self.meter is not None

    def __post_init__(self) -> None:
        if self.meter is None:
            return
        m = self.meter
        from opentelemetry.metrics import CallbackOptions, Observation

        def lag(_: CallbackOptions) -> list[Observation]:
            return [Observation(v, {"lane": k}) for k, v in sorted(self.lag.items())]

        def tasks(_: CallbackOptions) -> list[Observation]:
            return [
                Observation(v, {"lane": lane, "status": status})
                for (lane, status), v in sorted(self.open_tasks.items())
            ]

        def windows(_: CallbackOptions) -> list[Observation]:
            return [
                Observation(v, {"lane": lane, "state": state})
                for (lane, state), v in sorted(self.windows.items())
            ]

        def breakers(_: CallbackOptions) -> list[Observation]:
            return [
                Observation(
                    BREAKER_VALUES.get(state, 0),
                    {"provider": provider, "model": model, "state": state},
                )
                for (provider, model), state in sorted(self.breakers.items())
            ]

        self._instruments = {
            "outcomes": m.create_counter(
                "bb.tasks.outcomes", "{attempt}", "Task attempts by outcome and lane"
            ),
            "run": m.create_histogram(
                "bb.task.run_time", "s", "Time from claim to outcome"
            ),
            "wait": m.create_histogram(
                "bb.task.queue_wait", "s", "Time a ready task waited for a worker"
            ),
            "tokens": m.create_counter(
                "bb.model.tokens", "{token}", "Model tokens by lane, model and kind"
            ),
            "cost": m.create_counter(
                "bb.model.cost", "USD", "Model cost by lane and model"
            ),
            "tool_calls": m.create_counter(
                "bb.tool.calls", "{call}", "Tool calls by tool and status"
            ),
            "tool_duration": m.create_histogram(
                "bb.tool.duration", "s", "Time a tool call took, by tool and status"
            ),
            "breaches": m.create_counter(
                "bb.guardrail.breaches", "{breach}", "Goals halted by a guardrail"
            ),
            "breaker_moves": m.create_counter(
                "bb.model.breaker.transitions",
                "{transition}",
                "Moves of a model's circuit breaker made by this process",
            ),
        }
        m.create_observable_gauge(
            "bb.consumer.lag", [lag], "{message}", "Work messages pending per lane"
        )
        m.create_observable_gauge(
            "bb.tasks", [tasks], "{task}", "Tasks of running goals by lane and status"
        )
        m.create_observable_gauge(
            "bb.lane.window",
            [windows],
            "{task}",
            "Each lane's dispatch window: in_flight, waiting and its limit",
        )
        m.create_observable_gauge(
            "bb.model.breaker",
            [breakers],
            "1",
            "Each model's circuit breaker: 0 closed, 1 half_open, 2 open",
        )

    # --- spans ---------------------------------------------------------------

    @contextlib.contextmanager
    def task_span(
        self,
        *,
        goal_id: str,
        task_id: str,
        task_type: str,
        lane: str,
        worker: str,
        attempt: int,
        carrier: Mapping[str, str] | None,
        dispatch: int = 1,
        parent_task: tuple[str, int, int] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[Span | None]:
        """The span of one task run; its parent comes from ``carrier``.

        ``parent_task`` is the (task, attempt, dispatch) that spawned this task.
        """
        if self.tracer is None:
            yield None
            return
        remote = parse_traceparent((carrier or {}).get("traceparent"))
        parent = (
            trace.set_span_in_context(NonRecordingSpan(remote))
            if remote is not None
            else _parent(goal_id)
        )
        links = []
        if parent_task is not None:
            ptask, pattempt, pdispatch = parent_task
            links.append(
                Link(
                    SpanContext(
                        trace_id_of(goal_id),
                        task_span_id(goal_id, ptask, pattempt, pdispatch),
                        is_remote=True,
                        trace_flags=TraceFlags(TraceFlags.SAMPLED),
                    ),
                    {"bb.link": "spawned_by"},
                )
            )
        token = _NEXT_SPAN_ID.set(task_span_id(goal_id, task_id, attempt, dispatch))
        try:
            span = self.tracer.start_span(
                f"task {task_type}",
                context=parent,
                kind=SpanKind.CONSUMER,
                links=links,
                start_time=_ns(start) if start is not None else None,
                attributes={
                    "bb.goal_id": goal_id,
                    "bb.task_id": task_id,
                    "bb.task_type": task_type,
                    "bb.lane": lane,
                    "bb.worker": worker,
                    "bb.attempt": attempt,
                    "bb.dispatch": dispatch,
                },
            )
        finally:
            _NEXT_SPAN_ID.reset(token)
        try:
            yield span
        finally:
            span.end(end_time=_ns(end) if end is not None else None)

    def recorded_attempt(
        self,
        *,
        goal_id: str,
        task_id: str,
        task_type: str,
        lane: str,
        worker: str,
        attempt: int,
        status: str,
        start: datetime,
        end: datetime,
        dispatch: int = 1,
        parent_task: tuple[str, int, int] | None = None,
    ) -> None:
        """An attempt's span from the log (``bb replay --otlp``), same ids."""
        if self.tracer is None:
            return
        with self.task_span(
            goal_id=goal_id,
            task_id=task_id,
            task_type=task_type,
            lane=lane,
            worker=worker,
            attempt=attempt,
            carrier=None,
            dispatch=dispatch,
            parent_task=parent_task,
            start=start,
            end=end,
        ) as span:
            if span is not None:
                span.set_attribute("bb.status", status)
                if status == "failed":
                    span.set_status(error_status(status))

    def model_call(self, event: ModelCalled) -> None:
        """Record a model call: a span under its attempt, tokens and cost."""
        if self.tracer is not None and event.task_id is not None:
            self.model_span(event)
        if self.meter is not None:
            attrs = {"lane": event.lane, "model": event.model}
            tokens = self._instruments["tokens"]
            tokens.add(event.tokens_in, {**attrs, "kind": "input"})
            tokens.add(event.tokens_out, {**attrs, "kind": "output"})
            if event.tokens_cached:
                tokens.add(event.tokens_cached, {**attrs, "kind": "cached"})
            self._instruments["cost"].add(event.cost_usd, attrs)

    def model_span(self, e: ModelCalled, dispatch: int | None = None) -> None:
        """The span of one model call, from its recorded event.

        ``dispatch`` overrides the event's (replay knows it from the log even
        for events recorded before ModelCalled carried it).

        Attributes follow the OpenTelemetry GenAI conventions: the provider is
        ``gen_ai.provider.name`` (``gen_ai.system``, which it replaced, is not
        written); input tokens include cached ones, which are also given alone
        as ``gen_ai.usage.cache_read.input_tokens``.
        """
        assert self.tracer is not None
        assert e.task_id is not None
        run = e.dispatch if dispatch is None else dispatch
        parent = _parent(e.goal_id, task_span_id(e.goal_id, e.task_id, e.attempt, run))
        end = _ns(e.at)
        start = end - int(e.latency_ms * 1_000_000)
        token = _NEXT_SPAN_ID.set(
            model_span_id(e.goal_id, e.task_id, e.attempt, e.call_index, run)
        )
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": e.provider,
            "gen_ai.request.model": e.model,
            "gen_ai.response.model": str(e.response.get("model", e.model)),
            "gen_ai.usage.input_tokens": e.tokens_in + e.tokens_cached,
            "gen_ai.usage.output_tokens": e.tokens_out,
            "gen_ai.response.finish_reasons": (e.stop_reason or "",),
            "bb.cost_usd": e.cost_usd,
            "bb.lane": e.lane,
            "bb.prompt_version": e.prompt_version,
            "bb.attempt": e.attempt,
            "bb.dispatch": run,
            "bb.call_index": e.call_index,
            "bb.scripted": e.scripted,
        }
        if e.tokens_cached:
            attributes["gen_ai.usage.cache_read.input_tokens"] = e.tokens_cached
        if e.error is not None:
            # The recorded error is a message, not a class: the conventions'
            # fallback value says so.
            attributes["error.type"] = "_OTHER"
        try:
            span = self.tracer.start_span(
                f"chat {e.model}",
                context=parent,
                kind=SpanKind.CLIENT,
                start_time=start,
                attributes=attributes,
            )
        finally:
            _NEXT_SPAN_ID.reset(token)
        if e.error is not None:
            span.set_status(Status(StatusCode.ERROR, e.error))
        span.end(end_time=end)

    def tool_call(
        self, started: ToolCallStarted | None, finished: ToolCallFinished
    ) -> None:
        """Record a finished tool call: a span under its run, count and duration.

        ``started`` is the call's start, if at hand (the span then starts when
        it did; otherwise ``duration_ms`` before the end).
        """
        if self.tracer is not None and finished.task_id is not None:
            self.tool_span(started, finished)
        if self.meter is not None:
            attrs = {"tool": finished.tool, "status": _tool_status(finished)}
            self._instruments["tool_calls"].add(1, attrs)
            self._instruments["tool_duration"].record(
                max(finished.duration_ms, 0.0) / 1000, attrs
            )

    def tool_span(
        self, started: ToolCallStarted | None, finished: ToolCallFinished
    ) -> None:
        """The span of one tool call, from its recorded events.

        Its parent is the run that executed the call (the call's own attempt
        and dispatch), beside the model calls: an ``execute_tool`` span of the
        OpenTelemetry GenAI conventions. Arguments and results are not
        attributes (the conventions make them opt-in: they may hold anything);
        the log has them.
        """
        assert self.tracer is not None
        e = finished
        assert e.task_id is not None
        parent = _parent(
            e.goal_id, task_span_id(e.goal_id, e.task_id, e.attempt, e.dispatch)
        )
        end = _ns(e.at)
        start = (
            _ns(started.at)
            if started is not None
            else end - int(e.duration_ms * 1_000_000)
        )
        status = _tool_status(e)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": e.tool,
            "gen_ai.tool.call.id": e.call_id,
            "gen_ai.tool.type": "function",
            "bb.tool.effect": e.effect,
            "bb.tool.status": status,
            "bb.goal_id": e.goal_id,
            "bb.task_id": e.task_id,
            "bb.attempt": e.attempt,
            "bb.dispatch": e.dispatch,
        }
        if started is not None:
            attributes["bb.tool.source"] = started.source
            attributes["bb.tool.model_call"] = started.model_call
        if e.error is not None:
            attributes["error.type"] = "_OTHER"
        token = _NEXT_SPAN_ID.set(
            tool_span_id(e.goal_id, e.task_id, e.attempt, e.idempotency_key, e.dispatch)
        )
        try:
            span = self.tracer.start_span(
                f"execute_tool {e.tool}",
                context=parent,
                kind=SpanKind.INTERNAL,
                start_time=min(start, end),
                attributes=attributes,
            )
        finally:
            _NEXT_SPAN_ID.reset(token)
        if e.error is not None:
            span.set_status(Status(StatusCode.ERROR, e.error))
        span.end(end_time=end)

    def goal_span(
        self,
        goal_id: str,
        text: str,
        status: str,
        started: datetime,
        ended: datetime,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """The goal's root span, written once its end is known."""
        if self.tracer is None:
            return
        token = _NEXT_SPAN_ID.set(root_span_id(goal_id))
        trace_token = _NEXT_TRACE_ID.set(trace_id_of(goal_id))
        try:
            span = self.tracer.start_span(
                f"goal {text[:60]}",
                context=otel_context.Context(),
                kind=SpanKind.INTERNAL,
                start_time=_ns(started),
                attributes={
                    "bb.goal_id": goal_id,
                    "bb.status": status,
                    **(attributes or {}),
                },
            )
        finally:
            _NEXT_SPAN_ID.reset(token)
            _NEXT_TRACE_ID.reset(trace_token)
        if status in ("failed", "halted"):
            span.set_status(Status(StatusCode.ERROR, status))
        span.end(end_time=_ns(ended))

    # --- metrics ---------------------------------------------------------------

    def outcome(
        self,
        lane: str,
        task_type: str,
        status: str,
        run_s: float | None = None,
        wait_s: float | None = None,
    ) -> None:
        """Count a task attempt's outcome, with its run time and queue wait."""
        if self.meter is None:
            return
        attrs = {"lane": lane, "task_type": task_type}
        self._instruments["outcomes"].add(1, {**attrs, "status": status})
        if run_s is not None:
            self._instruments["run"].record(max(run_s, 0.0), attrs)
        if wait_s is not None:
            self._instruments["wait"].record(max(wait_s, 0.0), attrs)

    def breach(self, guardrail: str) -> None:
        """Count a goal halted by a guardrail."""
        if self.meter is not None:
            self._instruments["breaches"].add(1, {"guardrail": guardrail})

    def breaker_state(self, provider: str, model: str, state: str) -> None:
        """A model's breaker as just read (the ``bb.model.breaker`` gauge)."""
        self.breakers[(provider, model)] = state

    def breaker_changed(self, event: BreakerChanged) -> None:
        """Count a move of a breaker this process made and recorded."""
        self.breakers[(event.provider, event.model)] = event.to_state
        if self.meter is not None:
            self._instruments["breaker_moves"].add(
                1,
                {
                    "provider": event.provider,
                    "model": event.model,
                    "from_state": event.from_state,
                    "to_state": event.to_state,
                },
            )


BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
"""The ``bb.model.breaker`` gauge's value of each state."""

_CURRENT = Telemetry()


def get() -> Telemetry:
    """This process's telemetry (disabled unless configured)."""
    return _CURRENT


def install(
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> Telemetry:
    """Use these providers in this process (tests pass in-memory ones)."""
    global _CURRENT
    _CURRENT = Telemetry(
        tracer=tracer_provider.get_tracer("blackboard") if tracer_provider else None,
        meter=meter_provider.get_meter("blackboard") if meter_provider else None,
    )
    return _CURRENT


def disable() -> None:
    """Record nothing (the default)."""
    global _CURRENT
    _CURRENT = Telemetry()


# Below the names export.py takes from here; re-exported for callers.
from blackboard.telemetry.export import (  # noqa: E402
    configure_from_env,
    shutdown,
    tracer_provider,
)
from blackboard.telemetry.spans import (  # noqa: E402
    model_span_id,
    root_span_id,
    task_span_id,
    tool_span_id,
    trace_id_of,
    traceparent,
)
