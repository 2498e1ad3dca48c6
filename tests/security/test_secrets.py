"""No secret is recorded: not in events, not in logs, not in spans.

A goal runs on the real SDKs (keys set) against a fake provider whose answers
echo a key and carry data the configuration says to redact; then the whole
log, every log record (DEBUG, SDKs included) and every span are scanned.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

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
from blackboard.log.events import ModelCalled
from blackboard.log.redact import MASK, Redactor
from blackboard.runtime import config
from blackboard.runtime.inprocess import running
from tests.engine.conftest import spec, submit
from tests.fakes.providers import FakeProviderServer

if TYPE_CHECKING:
    from collections.abc import Iterator

ANTHROPIC_KEY = "sk-ant-api03-TESTSECRETabcdefghijklmnop0123456789"
LOCAL_KEY = "local-gpu-box-secret-77f3a9"
CARD = "4111 1111 1111 1111"
SSN = "123-45-6789"
PATTERNS = [r"\b(?:\d[ -]?){13,16}\b", r"\b\d{3}-\d{2}-\d{4}\b"]


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
    recorded = b"".join(
        msgspec.json.encode(env.event) for env in [e async for e in store.read()]
    ).decode()
    traced = "".join(span.to_json() for span in spans.get_finished_spans())
    logged = "\n".join(logs)
    assert logged, "the run logged nothing at DEBUG: the scan would prove nothing"
    for where, text in (("events", recorded), ("spans", traced), ("logs", logged)):
        for secret in (ANTHROPIC_KEY, LOCAL_KEY, CARD, SSN):
            assert secret not in text, f"{secret!r} found in {where}"
    calls = [e async for e in store.read_goal(goal_id)]
    answers = [e.event for e in calls if isinstance(e.event, ModelCalled)]
    assert answers[0].text == f"I was called with {MASK}; the card is {MASK}."
    assert MASK in answers[0].request["messages"][0]["content"]  # the SSN in the prompt
    assert answers[1].text == f"Local saw {MASK} and SSN {MASK}."
