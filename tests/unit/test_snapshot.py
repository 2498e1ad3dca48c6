"""The scheduler's snapshot: its fold, as bytes and back, then the same fold.

A snapshot taken anywhere in a log, restored and folded on with the rest of
the log, must be the state the whole log folds to; bytes from other code (a
fold of another shape or version) or not a snapshot at all are refused.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blackboard.engine import snapshot
from blackboard.engine.quota import TenantUsage
from blackboard.engine.state import BoardState, evolve, fold
from blackboard.log.codec import Envelope
from tests.factories import at
from tests.samples import all_samples
from tests.unit.test_state_fold import build, steps


def _usage() -> TenantUsage:
    usage = TenantUsage()
    for i in range(5):
        usage.record("acme", at(i), 100 * (i + 1), 0.25)
    usage.record("beta", at(0) + timedelta(days=1), 7, 1.5)
    return usage


@settings(max_examples=200)
@given(steps, st.integers(0, 60))
def test_a_snapshot_folded_on_is_the_whole_fold(script, cut):
    envs = build(script)
    cut = min(cut, len(envs))
    head = fold(envs[:cut])
    last_id = envs[cut - 1].event.event_id if cut else ""
    data = snapshot.encode(head, _usage(), last_id, head.last_seq)
    restored = snapshot.decode(data)
    assert restored.last_seq == head.last_seq
    assert restored.position == head.last_seq
    assert restored.state == head
    assert restored.usage == _usage()
    for env in envs[cut:]:
        evolve(restored.state, env)
    assert restored.state == fold(envs)


def test_every_kind_of_event_survives_a_snapshot():
    envs = [
        Envelope(i + 1, f"bb.evt.G1.{e.task_id or '_'}.x", e)
        for i, e in enumerate(all_samples())
    ]
    state = BoardState()
    for env in envs:
        evolve(state, env)
    back = snapshot.decode(snapshot.encode(state, TenantUsage(), "last", 7))
    assert back.state == state
    assert back.last_event_id == "last"
    assert back.position == 7
    assert back.state.goals["G1"].submitted == state.goals["G1"].submitted


def test_other_codes_snapshots_and_garbage_are_refused():
    data = snapshot.encode(BoardState(), TenantUsage(), "e", 0)
    other = msgspec.msgpack.encode({"fingerprint": "0" * 16, "last_seq": 1})
    with pytest.raises(snapshot.SnapshotRefused, match="written by other code"):
        snapshot.decode(other)
    with pytest.raises(snapshot.SnapshotRefused, match="not a snapshot"):
        snapshot.decode(b"\x00garbage")
    with pytest.raises(snapshot.SnapshotRefused, match="not a snapshot"):
        snapshot.decode(data[: len(data) // 2])
    assert snapshot.decode(data).state == BoardState()
