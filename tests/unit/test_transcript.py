"""The conversation's checkpoint: what a resumed run may reuse, and must ask."""

from __future__ import annotations

import msgspec
import pytest

from blackboard.engine.context import check_unfinished
from blackboard.engine.handlers import NeedsApproval
from blackboard.engine.transcript import ToolCallRecord, ToolOutcome, transcript
from blackboard.log.codec import Envelope
from blackboard.log.events import (
    AnyEvent,
    ModelCalled,
    ToolCallFinished,
    ToolCallStarted,
)
from tests.samples import sample


def env(seq: int, event: AnyEvent) -> Envelope:
    return Envelope(seq=seq, subject="bb.evt.G1.T1.x", event=event)


def started_event() -> ToolCallStarted:
    e = sample(ToolCallStarted)
    assert isinstance(e, ToolCallStarted)
    return e


def call(key: str, effect: str) -> ToolCallRecord:
    return ToolCallRecord(
        tool="workspace.write",
        call_id="toolu_1",
        key=key,
        arguments={},
        effect=effect,
        source="workspace",
        model_call="M1",
    )


def test_only_successful_answers_and_finished_calls_are_kept() -> None:
    ok = sample(ModelCalled)
    failed = msgspec.structs.replace(sample(ModelCalled, i=1), error="429")
    started = started_event()
    finished = sample(ToolCallFinished)
    assert isinstance(finished, ToolCallFinished)
    t = transcript([env(1, ok), env(2, failed), env(3, started), env(4, finished)])
    assert [a.event_id for a in t.answers] == [ok.event_id]
    assert t.unfinished(started.idempotency_key) is None
    assert ToolOutcome.recorded(finished).replayed
    assert ToolOutcome.recorded(finished).result == finished.result


@pytest.mark.parametrize("effect", ["reversible", "irreversible"])
def test_a_call_that_may_have_run_waits_for_a_human(effect: str) -> None:
    started = started_event()
    t = transcript([env(1, started)])
    with pytest.raises(NeedsApproval) as caught:
        check_unfinished(t, call(started.idempotency_key, effect), approved=False)
    assert caught.value.policy == "tool_call"
    assert "approve to run it again or deny" in caught.value.reason
    # Approved: it runs again.
    check_unfinished(t, call(started.idempotency_key, effect), approved=True)


def test_a_read_call_that_may_have_run_simply_runs_again() -> None:
    started = started_event()
    t = transcript([env(1, started)])
    check_unfinished(t, call(started.idempotency_key, "read"), approved=False)
    # A call never started needs nobody.
    check_unfinished(t, call("another", "irreversible"), approved=False)
