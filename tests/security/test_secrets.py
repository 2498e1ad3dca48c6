"""No secret is recorded: not in events, not in logs, not in spans.

A goal runs on the real SDKs (keys set) against a fake provider whose answers
echo a key and carry data the configuration says to redact; then the whole
log, every log record (DEBUG, SDKs included) and every span are scanned.

The scan reads every string of every event (keys included) and of every span
as it is, not their JSON: a secret JSON would escape (a quote, a backslash) is
found too. Tool calls (ToolCallStarted.arguments, ToolCallFinished.result and
error) are events like the others; a test without a server shows the scan
finds a secret in each and that redacted events leave it nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from agents.handlers import Agents
from agents.lanes import Lanes
from blackboard import telemetry
from blackboard.engine import control as client
from blackboard.engine.handlers import BUILTIN
from blackboard.log.events import (
    AnyEvent,
    ModelCalled,
    ToolCallFinished,
    ToolCallStarted,
)
from blackboard.log.redact import MASK, Redactor
from blackboard.runtime import config
from blackboard.runtime.inprocess import running
from tests import tool_history as h
from tests.engine.conftest import spec, submit
from tests.fakes.providers import FakeProviderServer

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from opentelemetry.sdk.trace import ReadableSpan

ANTHROPIC_KEY = "sk-ant-api03-TESTSECRETabcdefghijklmnop0123456789"
LOCAL_KEY = "local-gpu-box-secret-77f3a9"
CARD = "4111 1111 1111 1111"
SSN = "123-45-6789"
PATTERNS = [r"\b(?:\d[ -]?){13,16}\b", r"\b\d{3}-\d{2}-\d{4}\b"]
PASSWORD = 'db-pa"ss\\word-91c2'
"""A configured secret with characters JSON escapes (a quote, a backslash)."""


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def event_text(events: Iterable[AnyEvent]) -> str:
    """Every string of the events, keys included, one a line."""
    return "\n".join(s for e in events for s in _strings(msgspec.to_builtins(e)))


def span_text(spans: Iterable[ReadableSpan]) -> str:
    """Every string of the spans: names, attributes, statuses, events, links."""
    out: list[str] = []
    for span in spans:
        out += [span.name, span.status.description or ""]
        attributes = [span.attributes, span.resource.attributes]
        attributes += [e.attributes for e in span.events]
        attributes += [link.attributes for link in span.links]
        for attrs in attributes:
            for k, v in (attrs or {}).items():
                out += [k, *_strings(list(v) if isinstance(v, tuple) else v)]
        out += [e.name for e in span.events]
    return "\n".join(out)


def leaks(texts: dict[str, str], secrets: Iterable[str]) -> list[tuple[str, str]]:
    """``(where, secret)`` for every secret found in a text."""
    found = []
    for where, text in texts.items():
        found += [(where, secret) for secret in secrets if secret in text]
    return found


@pytest.fixture
def fake() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        yield server


@pytest.fixture
def logs() -> Iterator[list[str]]:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record) + repr(record.__dict__))

    handler = Keep(logging.DEBUG)
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def test_redactor_masks_keys_tokens_and_patterns():
    r = Redactor(PATTERNS, [ANTHROPIC_KEY])
    text = f"key {ANTHROPIC_KEY} card {CARD} ssn {SSN} Authorization: Bearer abc.def.ghi123"
    out = r.text(text)
    for secret in (ANTHROPIC_KEY, CARD, SSN, "abc.def.ghi123"):
        assert secret not in out
    assert out.count(MASK) == 4
    assert r.apply({"a": [text], "n": 3}) == {"a": [out], "n": 3}
    with pytest.raises(ValueError, match="invalid redact pattern"):
        Redactor(["("])


@pytest.mark.integration
async def test_no_secret_in_events_logs_or_spans(store, fake, logs):
    spans = InMemorySpanExporter()
    tp = telemetry.tracer_provider("bb-test")
    tp.add_span_processor(SimpleSpanProcessor(spans))
    telemetry.install(tp, MeterProvider(metric_readers=[InMemoryMetricReader()]))
    s = config.load(env={"BB_LEASE_SECONDS": "5"}, path=None)
    s.redact = PATTERNS
    s.prices = {"claude-main": {"input_per_mtok": 3.0}, "local-main": {}}
    s.lanes = {
        "frontier": config.LaneSettings(
            provider="anthropic", model="claude-main", base_url=fake.anthropic_base_url
        ),
        "local": config.LaneSettings(
            provider="openai-compatible",
            model="local-main",
            base_url=fake.openai_base_url,
        ),
    }
    env = {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "BB_LOCAL_API_KEY": LOCAL_KEY}
    agents = Agents(s, Lanes(s, env=env))
    fake.enqueue(text=f"I was called with {ANTHROPIC_KEY}; the card is {CARD}.")
    fake.enqueue(text=f"Local saw {LOCAL_KEY} and SSN {SSN}.")
    try:
        async with running(store, s, {**BUILTIN, **agents.handlers()}):
            goal_id = await submit(
                store,
                s,
                [
                    spec(
                        "a",
                        "execute",
                        "frontier",
                        title="t",
                        instruction=f"customer SSN {SSN}",
                    ),
                    spec("b", "execute", "local", "a", title="t", instruction="go"),
                ],
            )
            goal = await client.wait_goal(store, goal_id, timeout_s=60)
        assert goal.status == "done", goal.reason
    finally:
        await agents.aclose()
        telemetry.disable()

    # The keys did go to the providers...
    headers = [r.headers for r in fake.requests]
    assert ANTHROPIC_KEY in (
        headers[0].get("x-api-key"),
        headers[0]["authorization"][7:],
    )
    assert headers[1]["authorization"] == f"Bearer {LOCAL_KEY}"
    # ...and nowhere else.
    recorded = event_text([env.event async for env in store.read()])
    traced = span_text(spans.get_finished_spans())
    logged = "\n".join(logs)
    assert logged, "the run logged nothing at DEBUG: the scan would prove nothing"
    texts = {"events": recorded, "spans": traced, "logs": logged}
    assert leaks(texts, (ANTHROPIC_KEY, LOCAL_KEY, CARD, SSN)) == []
    calls = [e async for e in store.read_goal(goal_id)]
    answers = [e.event for e in calls if isinstance(e.event, ModelCalled)]
    assert answers[0].text == f"I was called with {MASK}; the card is {MASK}."
    assert MASK in answers[0].request["messages"][0]["content"]  # the SSN in the prompt
    assert answers[1].text == f"Local saw {MASK} and SSN {MASK}."


def _redacted(e: AnyEvent, r: Redactor) -> AnyEvent:
    """What the writer records of a tool call's events (and of the model's ask)."""
    replace = msgspec.structs.replace
    match e:
        case ToolCallStarted():
            return replace(e, arguments=r.apply(e.arguments))
        case ToolCallFinished():
            error = r.text(e.error) if e.error is not None else None
            return replace(e, result=r.apply(e.result), error=error)
        case ModelCalled():
            return replace(e, tool_calls=tuple(r.apply(list(e.tool_calls))))
        case _:
            return e


def test_the_scan_finds_secrets_in_tool_calls_and_none_once_redacted():
    secrets = (ANTHROPIC_KEY, CARD, SSN, PASSWORD)
    headers = {"x-api-key": ANTHROPIC_KEY}
    asked = h.model("T1", 10, 0, [("c1", "http.get", {"headers": headers})])
    start = h.started(
        "T1",
        11,
        "c1",
        "http.get",
        {"url": "https://api.example", "headers": headers, "body": [f"card {CARD}"]},
        asked,
    )
    done = h.finished(
        "T1", 15, "c1", "http.get", result={"rows": [{"ssn": SSN, "pw": PASSWORD}]}
    )
    failed = h.finished(
        "T1", 16, "c2", "db.login", error=f"login as {PASSWORD} with {ANTHROPIC_KEY}"
    )
    raw: list[AnyEvent] = [asked, start, done, failed]

    # Each field of each tool event is scanned.
    for event, found in (
        (asked, {ANTHROPIC_KEY}),  # the arguments the model asked with
        (start, {ANTHROPIC_KEY, CARD}),  # ToolCallStarted.arguments, nested
        (done, {SSN, PASSWORD}),  # ToolCallFinished.result
        (failed, {PASSWORD, ANTHROPIC_KEY}),  # ToolCallFinished.error
    ):
        got = leaks({"events": event_text([event])}, secrets)
        assert {s for _, s in got} == found, type(event).__name__
    # A scan of the JSON would miss the password: JSON escapes its quote.
    assert PASSWORD not in msgspec.json.encode(done).decode()

    # Spans never carry arguments or results; a failed call's span carries
    # its error, so it must be given the event as recorded (redacted).
    spans = InMemorySpanExporter()
    tp = telemetry.tracer_provider("bb-test")
    tp.add_span_processor(SimpleSpanProcessor(spans))
    tm = telemetry.install(tp)
    try:
        tm.tool_call(start, done)
        assert leaks({"spans": span_text(spans.get_finished_spans())}, secrets) == []
        tm.tool_call(None, failed)
        in_spans = leaks({"spans": span_text(spans.get_finished_spans())}, secrets)
        assert {s for _, s in in_spans} == {PASSWORD, ANTHROPIC_KEY}

        r = Redactor(PATTERNS, [ANTHROPIC_KEY, PASSWORD])
        clean = [_redacted(e, r) for e in raw]
        assert leaks({"events": event_text(clean)}, secrets) == []
        spans.clear()
        for s, f in ((clean[1], clean[2]), (None, clean[3])):
            assert isinstance(f, ToolCallFinished)
            assert s is None or isinstance(s, ToolCallStarted)
            tm.tool_call(s, f)
        assert leaks({"spans": span_text(spans.get_finished_spans())}, secrets) == []
    finally:
        telemetry.disable()
    assert isinstance(clean[1], ToolCallStarted)
    assert clean[1].arguments["headers"] == {"x-api-key": MASK}
    assert clean[1].arguments["body"] == [f"card {MASK}"]
    assert isinstance(clean[3], ToolCallFinished)
    assert clean[3].error == f"login as {MASK} with {MASK}"
