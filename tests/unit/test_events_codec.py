"""The catalogue, its codec and its subjects. Pure."""

from __future__ import annotations

import json

import msgspec
import pytest

from blackboard.errors import MalformedEvent
from blackboard.log import codec
from blackboard.log import events as ev
from blackboard.log.subjects import Subjects, check_token
from tests.samples import _REQUIRED, all_samples


def test_every_event_type_has_a_sample():
    assert set(_REQUIRED) == set(ev.EVENT_TYPES)


@pytest.mark.parametrize("event", all_samples(), ids=lambda e: ev.kind(e))
def test_round_trip_through_json(event):
    data = codec.encode(event)
    assert json.loads(data)["type"] == ev.kind(event)
    assert codec.decode_event(data) == event


def test_tags_are_snake_case_kinds():
    assert ev.kind_of("TaskNeedsFollowup") == "task_needs_followup"
    assert "model_called" in ev.KINDS and len(ev.KINDS) == len(ev.EVENT_TYPES)


def test_events_are_frozen():
    event = all_samples()[0]
    with pytest.raises(AttributeError):
        event.goal_id = "other"  # type: ignore[misc]


def test_unknown_fields_are_ignored_for_additive_evolution():
    body = json.loads(codec.encode(all_samples()[0]))
    body["added_in_v2"] = {"anything": 1}
    assert codec.decode_event(json.dumps(body).encode()).goal_id == "G1"


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[]", b'{"type": "nope"}', b'{"type": "goal_completed"}', b"\xff\xfe"],
)
def test_garbage_raises_malformed_with_reason(data):
    with pytest.raises(MalformedEvent) as err:
        codec.decode_event(data, "bb.evt.G._.x", 7)
    assert err.value.seq == 7 and err.value.reason


def test_schema_covers_the_union():
    schema = ev.json_schema()
    assert len(schema["anyOf"]) == len(ev.EVENT_TYPES)
    assert schema["$defs"]["TaskCreated"]["properties"]["type"]["enum"] == [
        "task_created"
    ]


def test_subjects_round_trip():
    s = Subjects("bb")
    subject = s.event("G1", None, "goal_submitted")
    assert subject == "bb.evt.G1._.goal_submitted"
    assert s.parse_event(subject) == ("G1", None, "goal_submitted")
    assert s.parse_event(s.event("G1", "T1", "task_ready")) == (
        "G1",
        "T1",
        "task_ready",
    )
    assert s.task_events("G1", "T1") == "bb.evt.G1.T1.*"
    assert Subjects("acme.prod").work("local") == "acme.prod.work.local"
    assert Subjects("acme.prod").parse_event("acme.prod.evt.G.T.k") == ("G", "T", "k")


@pytest.mark.parametrize("bad", ["a.b", "a b", "*", ">", ""])
def test_ids_that_would_break_subjects_are_refused(bad):
    with pytest.raises(ValueError, match="invalid"):
        check_token(bad, "task id")


def test_blob_stub_is_not_an_event():
    stub = codec.BlobStub(
        type="task_completed",
        event_id="e",
        goal_id="G",
        task_id="T",
        blob_sha256="0" * 64,
        blob_size=9,
    )
    with pytest.raises(MalformedEvent):
        codec.decode_event(codec.encode(stub))
    assert msgspec.json.decode(codec.encode(stub))["blob_size"] == 9
