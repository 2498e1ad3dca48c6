"""Writing a goal's events as NDJSON, one event per line, in stream order."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from replay.reader import ExportLine

if TYPE_CHECKING:
    from collections.abc import Iterable

    from blackboard.log.codec import Envelope

__all__ = ["export_lines"]

_ENCODER = msgspec.json.Encoder(order="deterministic")


def export_lines(envelopes: Iterable[Envelope]) -> bytes:
    """The export of these envelopes: byte-identical for the same events."""
    return b"".join(
        _ENCODER.encode(ExportLine(env.seq, env.subject, env.event)) + b"\n"
        for env in envelopes
    )
