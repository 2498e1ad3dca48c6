"""An event as a message, and back: subject, body, headers. Pure.

Both event stores write and read exactly these messages, so the in-memory
twin checks what the JetStream store would: which events can be written at
all, the headers of deduplication, guards and batches, bodies too large for a
message (replaced by a ``BlobStub`` whose blob is kept aside), and a body whose
kind disagrees with its subject.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from blackboard.errors import InvalidEvent, MalformedEvent
from blackboard.log import codec, subjects
from blackboard.log.codec import Envelope
from blackboard.log.events import SCHEMA_VERSION, BudgetEntry, Event, kind

if TYPE_CHECKING:
    from collections.abc import Sequence

    from blackboard.log.ports import StoredMessage
    from blackboard.log.subjects import Subjects

ERR_WRONG_LAST_SEQUENCE = 10071
ERR_BATCH_DUPLICATE_MSG_ID = 10201
WRONG_LAST = re.compile(r"wrong last sequence: (\d+)")
MAX_GARBAGE_SKIPS = 5
"""Times one write is retried past garbage before it is a conflict after all."""

_MAX_EVENT_ID = 300
"""Longest event id (its ``Nats-Msg-Id`` header): ids built from two legal ids
and a few words stay well below it."""

_BLOB_HEADER = subjects.H_BLOB.encode()

_MAX_SUBJECT = 512
"""Longest subject the store writes. The server closes the connection of a
client whose protocol line passes 4 KiB, which would stall every component
sharing it; ids checked at the door are far shorter (``MAX_ID_LEN``), and this
bound still lets an event of a goal written by another client be recorded."""

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def unwritable(event: Event, subject: str) -> str:
    """Why an event can never be written ('' when it can)."""
    if not _TOKEN.match(event.goal_id):
        return "the goal id is not a subject token"
    if event.task_id is not None and (
        event.task_id == subjects.GOAL_TOKEN or not _TOKEN.match(event.task_id)
    ):
        return f"the task id {event.task_id[:40]!r} is not a legal subject token"
    if len(subject) > _MAX_SUBJECT:
        return f"its subject has {len(subject)} characters (at most {_MAX_SUBJECT})"
    if len(event.event_id) > _MAX_EVENT_ID:
        return f"its id has {len(event.event_id)} characters (at most {_MAX_EVENT_ID})"
    return ""


def prepared(
    event: Event, subjects_: Subjects, traceparent: str | None
) -> tuple[str, bytes, dict[str, str]]:
    """The subject, body and headers of one event, ready to publish.

    Raises InvalidEvent when it can never be written. Moving a large body to
    the blob store is the adapter's part.
    """
    k = kind(event)
    subject = subjects_.event_in(event.goal_id, event.task_id, k)
    bad = unwritable(event, subject)
    if bad:
        raise InvalidEvent(f"cannot write {k} {event.event_id[:60]!r}: {bad}")
    return subject, codec.encode(event), headers_of(event, traceparent)


def headers_of(event: Event, traceparent: str | None) -> dict[str, str]:
    """The headers every event is written with."""
    headers = {
        subjects.H_MSG_ID: event.event_id,
        subjects.H_SCHEMA: str(SCHEMA_VERSION),
    }
    if traceparent:
        headers[subjects.H_TRACEPARENT] = traceparent
    return headers


def stub_body(event: Event, body: bytes, digest: str) -> bytes:
    """The body written in place of one too large: where the event is kept."""
    return codec.encode(
        codec.BlobStub(
            type=kind(event),
            event_id=event.event_id,
            goal_id=event.goal_id,
            task_id=event.task_id,
            blob_sha256=digest,
            blob_size=len(body),
        )
    )


def guard(
    subjects_: Subjects, headers: dict[str, str], event: Event, expect: int
) -> str:
    """Add the task-wide guard to ``headers``; return the guard's scope.

    A goal's budget entries are guarded on the last budget entry of the goal
    instead: they form one chain, whoever writes them (``engine.budget``).
    """
    if isinstance(event, BudgetEntry):
        scope = subjects_.kind_filter("budget_entry", event.goal_id)
    else:
        scope = subjects_.task_events(event.goal_id, event.task_id)
    headers[subjects.H_EXPECTED_SUBJECT_SEQ] = str(expect)
    headers[subjects.H_EXPECTED_SUBJECT_SEQ_SUBJECT] = scope
    return scope


def batch_id(items: Sequence[tuple[Event, int | None]]) -> str:
    """Same events, same batch id: a re-sent batch is recognisable as one."""
    return codec.sha256("\n".join(e.event_id for e, _ in items).encode())[:32]


def stub_of(
    headers: dict[str, str] | None, data: bytes, subject: str, seq: int | None
) -> codec.BlobStub | None:
    """The blob stub a message carries instead of its event, if it does."""
    if headers and subjects.H_BLOB in headers:
        return codec.decode_stub(data, subject, seq)
    return None


def carries_stub(msg: StoredMessage) -> bool:
    """Whether a stored message's body is a blob stub rather than its event.

    A raw delivery (pull.py) answers from its header bytes without parsing
    them; a false "yes" costs only the event's encoding again.
    """
    has_header = getattr(msg, "has_header", None)
    if has_header is not None:
        return bool(has_header(_BLOB_HEADER))
    return subjects.H_BLOB in (msg.headers or {})


def check_blob(
    data: bytes, stub: codec.BlobStub, subject: str, seq: int | None
) -> None:
    """Raise MalformedEvent unless ``data`` is the blob the stub names."""
    if codec.sha256(data) != stub.blob_sha256:
        raise MalformedEvent(subject, seq, "blob digest mismatch")


def envelope(
    subjects_: Subjects, subject: str, data: bytes, seq: int | None
) -> Envelope:
    """Decode an event body; MalformedEvent if it is none or its kind is wrong."""
    event = codec.decode_event(data, subject, seq)
    _goal, _task, k = subjects_.parse_event(subject)
    if k != kind(event):
        raise MalformedEvent(subject, seq, f"body is {kind(event)}, subject {k}")
    return Envelope(seq or 0, subject, event)


def sourced(header: bytes | None) -> tuple[int, str]:
    """The events-stream sequence and subject a partitions-stream copy names.

    Its ``Nats-Stream-Source`` header reads ``<stream> <sequence> <filter>
    <transform> <subject> <hash>`` (what nats-server writes for a source with
    a subject transform). ValueError for anything else.
    """
    parts = header.split() if header is not None else []
    if len(parts) < 5 or not parts[1].isdigit():
        shown = header[:80] if header is not None else None
        msg = f"not a copy of an event (Nats-Stream-Source {shown!r})"
        raise ValueError(msg)
    return int(parts[1]), parts[4].decode()
