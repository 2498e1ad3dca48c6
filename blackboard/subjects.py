"""Subject and header names: the public API other services subscribe to.

``<prefix>.evt.<goal>.<task>.<kind>`` carries events (``_`` as the task token for
goal-level events); ``<prefix>.work.<lane>`` carries dispatched tasks. Pure.
"""

from __future__ import annotations

import re
from typing import Final

GOAL_TOKEN: Final = "_"
EVENTS_STREAM: Final = "BB_EVENTS"
WORK_STREAM: Final = "BB_WORK"
BLOB_BUCKET: Final = "bb_blobs"
LOCK_BUCKET: Final = "bb_locks"

H_MSG_ID: Final = "Nats-Msg-Id"
H_SCHEMA: Final = "Bb-Schema"
H_BLOB: Final = "Bb-Blob"
H_TRACEPARENT: Final = "traceparent"
H_EXPECTED_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
H_EXPECTED_SUBJECT_SEQ_SUBJECT: Final = "Nats-Expected-Last-Subject-Sequence-Subject"
H_BATCH_ID: Final = "Nats-Batch-Id"
H_BATCH_SEQ: Final = "Nats-Batch-Sequence"
H_BATCH_COMMIT: Final = "Nats-Batch-Commit"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def check_token(value: str, what: str) -> str:
    """Return ``value`` if it is a legal subject token, else raise ValueError.

    Ids become subject tokens, so dots, spaces and wildcards are refused here
    rather than silently publishing to the wrong subject.
    """
    if not _TOKEN.match(value):
        msg = f"invalid {what} {value!r}: use letters, digits, '-' or '_'"
        raise ValueError(msg)
    return value


class Subjects:
    """Subject builders for one deployment prefix (``BB_PREFIX``)."""

    def __init__(self, prefix: str = "bb") -> None:
        for part in prefix.split("."):
            check_token(part, "prefix")
        self.prefix = prefix

    @property
    def events_all(self) -> str:
        """Every event subject."""
        return f"{self.prefix}.evt.>"

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

    def work(self, lane: str) -> str:
        """The work subject of one lane."""
        return f"{self.prefix}.work.{lane}"

    def parse_event(self, subject: str) -> tuple[str, str | None, str]:
        """Split an event subject into (goal, task or None, kind)."""
        parts = subject.split(".")
        n = len(self.prefix.split("."))
        if len(parts) != n + 4 or parts[n] != "evt":
            msg = f"not an event subject: {subject!r}"
            raise ValueError(msg)
        goal, task, kind = parts[n + 1], parts[n + 2], parts[n + 3]
        return goal, (None if task == GOAL_TOKEN else task), kind
