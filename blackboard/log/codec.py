"""Encoding events and work items to bytes and back. Pure.

One module-level encoder and typed decoder are reused (msgspec's fast path).
Bodies are JSON so any language and the nats CLI can read them.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Final

import msgspec

from blackboard.errors import MalformedEvent
from blackboard.log.events import KINDS, AnyEvent, Event, json_schema


class Envelope(msgspec.Struct, frozen=True):
    """An event as read from the log, with its stream sequence and subject."""

    seq: int
    subject: str
    event: AnyEvent


class WorkItem(msgspec.Struct, frozen=True, kw_only=True):
    """The message on ``bb.work.<lane>`` that tells a worker to run a task.

    ``ready_seq`` is the stream sequence of the TaskReady event that caused
    it: the worker's claim is guarded on it, so a stale or duplicated work item
    can never start a second run of the same attempt.
    """

    goal_id: str
    task_id: str
    lane: str
    task_type: str
    dispatch: int
    ready_seq: int
    max_attempts: int = 3
    approved: bool = False
    parent_id: str | None = None
    """The task that spawned this one, and its run: for trace links."""
    parent_attempt: int = 0
    parent_dispatch: int = 1


class BlobStub(msgspec.Struct, frozen=True, kw_only=True):
    """Body published in place of an event too large for a message.

    The message carries the ``Bb-Blob`` header; the event itself is in the
    object store under ``blob_sha256``.
    """

    type: str
    event_id: str
    goal_id: str
    task_id: str | None
    blob_sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    blob_size: Annotated[int, msgspec.Meta(ge=0)]


_encoder: Final = msgspec.json.Encoder()
_event_decoder: Final = msgspec.json.Decoder(AnyEvent)
_work_decoder: Final = msgspec.json.Decoder(WorkItem)
_stub_decoder: Final = msgspec.json.Decoder(BlobStub)


def encode(value: Event | WorkItem | BlobStub) -> bytes:
    """Encode an event, a work item or a blob stub as JSON."""
    return _encoder.encode(value)


def decode_event(data: bytes, subject: str = "", seq: int | None = None) -> AnyEvent:
    """Decode one event body, raising MalformedEvent with the reason."""
    try:
        event: AnyEvent = _event_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise MalformedEvent(subject, seq, str(e)) from e
    return event


def decode_work(data: bytes) -> WorkItem:
    """Decode a work item, raising MalformedEvent with the reason."""
    try:
        item: WorkItem = _work_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise MalformedEvent("work", None, str(e)) from e
    return item


def decode_stub(data: bytes, subject: str, seq: int | None) -> BlobStub:
    """Decode a blob stub, raising MalformedEvent with the reason."""
    try:
        stub: BlobStub = _stub_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise MalformedEvent(subject, seq, f"bad blob stub: {e}") from e
    return stub


def wire_schema() -> dict[str, Any]:
    """Return the JSON Schema of a body on the events subjects (``bb schema``).

    A body is an event or, with the ``Bb-Blob`` header, a :class:`BlobStub`
    whose ``type`` is the kind of the event it stands for.
    """
    schema = json_schema()
    (stub,), defs = msgspec.json.schema_components(
        (BlobStub,), ref_template="#/$defs/{name}"
    )
    defs["BlobStub"]["properties"]["type"] = {"enum": sorted(KINDS)}
    schema["$defs"].update(defs)
    schema["anyOf"].append(stub)
    return schema


def sha256(data: bytes) -> str:
    """Hex digest used as the object-store key of a large event."""
    return hashlib.sha256(data).hexdigest()


def to_builtins(value: Any) -> Any:
    """Convert structs to JSON-able builtins (for ``--json`` output)."""
    return msgspec.to_builtins(value)


def dumps(value: Any) -> bytes:
    """Encode any JSON-able value with the shared encoder."""
    return _encoder.encode(value)
