"""Reading a goal's events: from NATS, or from an NDJSON export (no server).

An export line is ``{"seq": N, "subject": "...", "event": {...}}``: exactly
what :func:`replay.export.export_lines` writes, so a goal read back from its
file folds to the same trace as from the stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from blackboard.errors import ConfigError
from blackboard.log.codec import Envelope
from blackboard.log.events import AnyEvent

if TYPE_CHECKING:
    from pathlib import Path

    from blackboard.log.ports import EventStore

__all__ = ["ExportLine", "from_file", "from_store"]


class ExportLine(msgspec.Struct, frozen=True):
    """One line of an NDJSON export."""

    seq: int
    subject: str
    event: AnyEvent


_DECODER = msgspec.json.Decoder(ExportLine)


def from_file(path: Path) -> list[Envelope]:
    """Envelopes of an export file, in its order; ConfigError names a bad line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e
    out: list[Envelope] = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = _DECODER.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ConfigError(f"{path}, line {n}: not an exported event: {e}") from e
        out.append(Envelope(item.seq, item.subject, item.event))
    if not out:
        raise ConfigError(f"{path} holds no events")
    return out


async def from_store(store: EventStore, goal_id: str) -> list[Envelope]:
    """A goal's events from the stream, in order; ConfigError if there are none."""
    envs = [env async for env in store.read_goal(goal_id)]
    if not envs:
        raise ConfigError(f"no goal {goal_id!r} in the log")
    return envs
