"""Subject and header names: the public API other services subscribe to.

``<prefix>.evt.<goal>.<task>.<kind>`` carries events (``_`` as the task token for
goal-level events); ``<prefix>.work.<lane>`` carries dispatched tasks. Pure.

Writers never publish on ``<prefix>.evt.>`` themselves: they publish on
``<prefix>.in.evt.<goal>.<task>.<kind>``, the events stream stores the message
under ``<prefix>.evt...`` (a subject transform) and re-publishes what it stored
there. So a core NATS subscriber on ``<prefix>.evt.>`` sees exactly the events
in the log, never a write that JetStream refused (a stale worker's completion,
a lost race).
"""

from __future__ import annotations

import re
from typing import Final

GOAL_TOKEN: Final = "_"
EVENTS_STREAM: Final = "BB_EVENTS"
WORK_STREAM: Final = "BB_WORK"
BLOB_BUCKET: Final = "bb_blobs"
LOCK_BUCKET: Final = "bb_locks"
LIMITS_BUCKET: Final = "bb_limits"
SNAPSHOT_BUCKET: Final = "bb_snapshots"

H_MSG_ID: Final = "Nats-Msg-Id"
H_SCHEMA: Final = "Bb-Schema"
H_BLOB: Final = "Bb-Blob"
H_TRACEPARENT: Final = "traceparent"
H_EXPECTED_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
H_EXPECTED_SUBJECT_SEQ_SUBJECT: Final = "Nats-Expected-Last-Subject-Sequence-Subject"
H_STREAM_SOURCE: Final = "Nats-Stream-Source"
H_BATCH_ID: Final = "Nats-Batch-Id"
H_BATCH_SEQ: Final = "Nats-Batch-Sequence"
H_BATCH_COMMIT: Final = "Nats-Batch-Commit"

MAX_ID_LEN: Final = 64
"""Longest goal id, task id or lane name: they become subject tokens and parts
of message ids, and a subject longer than the server's control line (4 KiB)
makes it close the connection of whoever publishes it."""

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_KEY_SAFE = re.compile(r"[A-Za-z0-9_-]")


def check_token(value: str, what: str, *, id_like: bool = True) -> str:
    """Return ``value`` if it is a legal subject token, else raise ValueError.

    Ids become subject tokens, so dots, spaces and wildcards are refused here
    rather than silently publishing to the wrong subject; so is anything
    longer than ``MAX_ID_LEN`` and, for ids, the reserved goal-level token
    ``_``, which would put a task's events on its goal's subjects.
    """
    if not isinstance(value, str) or not _TOKEN.match(value):
        shown = value if len(str(value)) <= 40 else f"{str(value)[:40]}..."
        msg = f"invalid {what} {shown!r}: use letters, digits, '-' or '_'"
        raise ValueError(msg)
    if len(value) > MAX_ID_LEN:
        msg = (
            f"invalid {what} {value[:20]}... ({len(value)} characters): "
            f"at most {MAX_ID_LEN}"
        )
        raise ValueError(msg)
    if id_like and value == GOAL_TOKEN:
        msg = f"invalid {what} {value!r}: '{GOAL_TOKEN}' is reserved for goal events"
        raise ValueError(msg)
    return value


class Subjects:
    """Subject builders for one deployment prefix (``BB_PREFIX``)."""

    def __init__(self, prefix: str = "bb") -> None:
        for part in prefix.split("."):
            check_token(part, "prefix", id_like=False)
        self.prefix = prefix
        self._depth = len(prefix.split("."))

    @property
    def events_all(self) -> str:
        """Every event subject."""
        return f"{self.prefix}.evt.>"

    @property
    def events_in_all(self) -> str:
        """Every subject writers publish events on (the stream's subjects)."""
        return f"{self.prefix}.in.evt.>"

    @property
    def work_all(self) -> str:
        """Every lane's work subject."""
        return f"{self.prefix}.work.*"

    @property
    def api_query(self) -> str:
        """Request/reply subject of the projector's SQL endpoint."""
        return f"{self.prefix}.api.query"

    def event(self, goal_id: str, task_id: str | None, kind: str) -> str:
        """Subject of one event."""
        return f"{self.prefix}.evt.{goal_id}.{task_id or GOAL_TOKEN}.{kind}"

    def event_in(self, goal_id: str, task_id: str | None, kind: str) -> str:
        """Subject a writer publishes one event on; stored as ``event()``."""
        return f"{self.prefix}.in.evt.{goal_id}.{task_id or GOAL_TOKEN}.{kind}"

    def goal_events(self, goal_id: str) -> str:
        """Every event of one goal, in a filter."""
        return f"{self.prefix}.evt.{goal_id}.>"

    def task_events(self, goal_id: str, task_id: str | None) -> str:
        """Every event of one task: the scope of the concurrency guard."""
        return f"{self.prefix}.evt.{goal_id}.{task_id or GOAL_TOKEN}.*"

    def kind_filter(self, kind: str, goal_id: str | None = None) -> str:
        """Every event of one kind, of one goal or of all."""
        return f"{self.prefix}.evt.{goal_id or '*'}.*.{kind}"

    def task_anywhere(self, task_id: str, kind: str) -> str:
        """Events of one kind of a task whose goal is not known."""
        return f"{self.prefix}.evt.*.{task_id}.{kind}"

    def partitioned(self, count: int) -> str:
        """Where the partitions stream of ``count`` puts each event (a transform).

        ``<prefix>.part.<partition>.<goal>.<task>.<kind>``: the server computes
        the partition from the goal token, as ``partition_of`` does.
        """
        return (
            f"{self.prefix}.part.{{{{partition({count},1)}}}}"
            ".{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}"
        )

    @property
    def events_each(self) -> str:
        """Every event subject, token by token (a transform's source)."""
        return f"{self.prefix}.evt.*.*.*"

    def partition(self, index: int) -> str:
        """Every event of one partition, in the partitions stream."""
        return f"{self.prefix}.part.{index}.>"

    def work(self, lane: str) -> str:
        """The work subject of one lane."""
        return f"{self.prefix}.work.{lane}"

    def parse_event(self, subject: str) -> tuple[str, str | None, str]:
        """Split an event subject into (goal, task or None, kind)."""
        parts = subject.split(".")
        n = self._depth
        if len(parts) != n + 4 or parts[n] != "evt":
            msg = f"not an event subject: {subject!r}"
            raise ValueError(msg)
        goal, task, kind = parts[n + 1], parts[n + 2], parts[n + 3]
        return goal, (None if task == GOAL_TOKEN else task), kind


def matches(filter_subject: str, subject: str) -> bool:
    """Whether ``subject`` is on ``filter_subject``, as NATS matches them.

    ``*`` stands for exactly one token, ``>`` (last) for one or more.
    """
    want = filter_subject.split(".")
    have = subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(have) == len(want)


def partition_of(goal_id: str, count: int) -> int:
    """The scheduler partition a goal belongs to, of ``count``.

    FNV-1a (32 bits) of the goal id, modulo ``count``: what nats-server's
    ``{{partition(count,1)}}`` transform computes from the goal's subject
    token, so a goal's partition is a stable function of its id alone, the
    same here and in the server.
    """
    h = 0x811C9DC5
    for b in goal_id.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % count


def state_key(kind: str, provider: str, model: str) -> str:
    """The key of one model's fleet-wide state in the limits bucket.

    ``<kind>.<provider>.<model>``, the kind being ``rate`` or ``breaker``.

    KV keys allow ``[-/_=.a-zA-Z0-9]``, and a dot separates subject tokens, so
    each part keeps ``[-_a-zA-Z0-9]`` and writes every other character as
    ``=`` and its hex code (``gpt-4.1`` is ``gpt-4=2e1``): two names never
    share a key, and no part is empty.
    """

    def part(value: str) -> str:
        out = "".join(
            c if _KEY_SAFE.fullmatch(c) else "".join(f"={b:02x}" for b in c.encode())
            for c in value
        )
        return out or "="

    return ".".join(part(p) for p in (kind, provider, model))
