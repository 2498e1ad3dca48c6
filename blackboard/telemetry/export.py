"""Exporters from the standard ``OTEL_*`` variables: OTLP over HTTP, console.

Kept apart from the span and metric logic (``blackboard.telemetry``), which
never needs to know where the data goes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import TracerProvider

from blackboard.telemetry import OTEL_VARS, Telemetry, _PresetIds, get, install

if TYPE_CHECKING:
    from collections.abc import Mapping


def tracer_provider(service: str) -> TracerProvider:
    """A tracer provider whose span ids can be preset (see module docstring)."""
    from opentelemetry.sdk.resources import Resource

    return TracerProvider(
        resource=Resource.create({"service.name": service}), id_generator=_PresetIds()
    )


def configure_from_env(service: str, env: Mapping[str, str] | None = None) -> Telemetry:
    """Install exporters as the ``OTEL_*`` variables say; none set: disabled."""
    env = os.environ if env is None else env
    if not any(env.get(v) for v in OTEL_VARS):
        return get()
    traces = env.get("OTEL_TRACES_EXPORTER", "otlp").lower()
    metrics = env.get("OTEL_METRICS_EXPORTER", "otlp").lower()
    tp = None
    if traces != "none":
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        tp = tracer_provider(env.get("OTEL_SERVICE_NAME", service))
        tp.add_span_processor(BatchSpanProcessor(_span_exporter(traces)))
    mp = None
    if metrics != "none":
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource

        reader = PeriodicExportingMetricReader(_metric_exporter(metrics))
        mp = SdkMeterProvider(
            resource=Resource.create(
                {"service.name": env.get("OTEL_SERVICE_NAME", service)}
            ),
            metric_readers=[reader],
        )
    telemetry = install(tp, mp)
    telemetry._providers = (tp, mp)  # type: ignore[attr-defined]
    return telemetry


def shutdown() -> None:
    """Flush and stop the exporters installed by :func:`configure_from_env`."""
    providers = getattr(get(), "_providers", (None, None))
    for p in providers:
        if p is not None:
            p.shutdown()


def _span_exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )
    except ImportError as e:
        from blackboard.errors import ConfigError

        raise ConfigError(
            "OTLP export needs the otlp extra: pip install 'blackboard[otlp]'"
        ) from e
    return OTLPSpanExporter()


def _metric_exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter,
        )
    except ImportError as e:
        from blackboard.errors import ConfigError

        raise ConfigError(
            "OTLP export needs the otlp extra: pip install 'blackboard[otlp]'"
        ) from e
    return OTLPMetricExporter()
