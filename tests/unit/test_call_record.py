"""A call record is a ModelCalled less what the worker adds, and makes it.

(The one SDK error mapper, ``agents.models.error_from_sdk``, is exercised for
both SDKs over real HTTP in tests/contract/test_providers.py.)
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from agents.models import CallRecord
from blackboard.log.events import ModelCalled, Price


def test_every_field_of_a_call_record_is_model_calleds_own():
    event_fields = {f.name: f for f in msgspec.structs.fields(ModelCalled)}
    for f in msgspec.structs.fields(CallRecord):
        assert f.name in event_fields, f.name
        mine, theirs = f, event_fields[f.name]
        assert (mine.type, mine.default, mine.default_factory) == (
            theirs.type,
            theirs.default,
            theirs.default_factory,
        ), f.name


def test_to_event_keeps_every_field_and_adds_the_workers():
    record = CallRecord(
        provider="anthropic",
        model="m",
        request={"q": 1},
        response={"a": 2},
        text="hi",
        stop_reason="end_turn",
        tool_calls=({"t": 1},),
        tokens_in=10,
        tokens_out=5,
        tokens_cached=3,
        cost_usd=0.5,
        price=Price(input_per_mtok=1.0),
        latency_ms=12.5,
        call_index=1,
        request_hash="h",
        prompt_version="plan/v1",
        error=None,
        scripted=True,
    )
    at = datetime(2026, 1, 2, tzinfo=UTC)
    event = record.to_event(
        event_id="E",
        goal_id="G",
        task_id="T",
        at=at,
        actor="w",
        lane="frontier",
        call_index=4,
        attempt=2,
        dispatch=3,
    )
    assert isinstance(event, ModelCalled)
    mine = msgspec.structs.asdict(record)
    assert {k: getattr(event, k) for k in mine} == {**mine, "call_index": 4}
    assert (event.event_id, event.goal_id, event.task_id, event.at, event.actor) == (
        "E",
        "G",
        "T",
        at,
        "w",
    )
    assert (event.lane, event.attempt, event.dispatch) == ("frontier", 2, 3)
