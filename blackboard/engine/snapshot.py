"""A snapshot of the scheduler's fold, as bytes and back. Pure.

A scheduler that takes the lead folds the log before it decides anything; at
100,000 tasks that is 400,000 events, seconds of a failover spent reading. So
the leader saves its fold now and then (``BoardState`` and the tenants' recent
usage, with the sequence they are as of) and a new leader starts from the
latest snapshot and reads only the log after it.

A snapshot is used only if it is provably the fold of this log:

- its ``fingerprint`` is this code's: the fold's version (``FOLD_VERSION``,
  raised whenever ``evolve`` changes what it makes of an event) and the shape
  of every class the snapshot holds (a field added, removed or retyped
  changes it without anyone remembering to);
- the log still holds, at the snapshot's ``last_seq``, the event it was taken
  after (``last_event_id``): a stream deleted and recreated, or another log
  under the same prefix, has something else there.

Otherwise the scheduler folds the whole log, as it always could. The fold is
deterministic, so whichever scheduler wrote a snapshot (a leader that has
since lost its lease included), it is the same state a fresh fold reaches at
that sequence.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
from collections import deque
from typing import Any, Final

import msgspec

from blackboard.engine import quota, state
from blackboard.engine.quota import TenantUsage
from blackboard.engine.state import BoardState
from blackboard.errors import BlackboardError
from blackboard.log import events

__all__ = ["FINGERPRINT", "Snapshot", "SnapshotRefused", "decode", "encode"]

FOLD_VERSION: Final = 2
"""Raise when ``evolve`` gives an event a different meaning, or a snapshot
holds something else (2: the reading's position): older snapshots are then
refused and the log folded afresh."""


def _shape(cls: type) -> str:
    if dataclasses.is_dataclass(cls):
        fields = [(f.name, str(f.type)) for f in dataclasses.fields(cls)]
    else:
        info = msgspec.structs.fields(cls)
        fields = [(f.name, str(f.type)) for f in info]
    return f"{cls.__qualname__}{fields}"


_HELD: Final = (
    state.BoardState,
    state.GoalState,
    state.TaskState,
    state.Approval,
    state.Anomaly,
    quota.TenantUsage,
    quota._Usage,
    events.GoalSubmitted,
    events.GoalThrottled,
    events.Limits,
    events.TaskSpec,
)

_SHAPES: Final = "\n".join([f"fold {FOLD_VERSION}", *(_shape(c) for c in _HELD)])
FINGERPRINT: Final = hashlib.sha256(_SHAPES.encode()).hexdigest()[:16]
"""This code's snapshots: older or newer ones are refused (module doc)."""


class Snapshot(msgspec.Struct, kw_only=True):
    """The fold as of ``last_seq``, the event there, and the usage counts."""

    fingerprint: str
    last_seq: int
    last_event_id: str
    position: int
    """Where the scheduler's reading of its share of the log got to (the
    partitions stream's sequence for a partition; ``last_seq`` otherwise)."""
    state: BoardState
    usage: TenantUsage


class _Head(msgspec.Struct):
    """What is read first: the rest is decoded only for this code's own."""

    fingerprint: str = ""


class SnapshotRefused(BlackboardError, ValueError):
    """Bytes that are not a snapshot this code can use (the message says why)."""


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, deque):
        return list(obj)
    raise NotImplementedError(f"cannot snapshot {type(obj).__name__}")


def _dec_hook(kind: type, obj: Any) -> Any:
    # The one deque held: a tenant's (POSIX seconds, tokens) of the last minute.
    if (getattr(kind, "__origin__", None) or kind) is deque:
        return deque((float(ts), int(n)) for ts, n in obj)
    raise NotImplementedError(f"cannot restore {kind}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.msgpack.Decoder(Snapshot, dec_hook=_dec_hook)
_peek = msgspec.msgpack.Decoder(_Head)


def encode(
    board: BoardState, usage: TenantUsage, last_event_id: str, position: int
) -> bytes:
    """The snapshot of ``board`` (as of its ``last_seq``) as bytes."""
    return _encoder.encode(
        Snapshot(
            fingerprint=FINGERPRINT,
            last_seq=board.last_seq,
            last_event_id=last_event_id,
            position=position,
            state=board,
            usage=usage,
        )
    )


def decode(data: bytes) -> Snapshot:
    """A snapshot back; SnapshotRefused if it is not one of this code's."""
    try:
        head = _peek.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise SnapshotRefused(f"not a snapshot: {e}") from e
    if head.fingerprint != FINGERPRINT:
        raise SnapshotRefused(
            f"written by other code (fingerprint {head.fingerprint!r},"
            f" this code's {FINGERPRINT!r})"
        )
    # The decoder makes millions of objects, none of them garbage; with the
    # collector on, its passes over them took 4/5 of a 100k-task decode.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise SnapshotRefused(f"not a snapshot: {e}") from e
    finally:
        if collecting:
            gc.enable()
