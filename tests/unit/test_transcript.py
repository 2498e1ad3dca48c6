"""The conversation's checkpoint: what a resumed run may reuse, and must ask."""

from __future__ import annotations

import dataclasses

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


def test_an_idempotent_call_that_may_have_run_is_redone_without_asking() -> None:
    started = started_event()
    t = transcript([env(1, started)])
    again = dataclasses.replace(
        call(started.idempotency_key, "reversible"), idempotent=True
    )
    check_unfinished(t, again, approved=False)


def test_workspace_write_is_idempotent_and_mcp_hints_say_so() -> None:
    from mcp import types as mcp_types

    from agents.tools.mcp import _tool
    from agents.tools.workspace import workspace_tools

    by_name = {t.name: t for t in workspace_tools()}
    assert by_name["workspace.write"].idempotent
    assert by_name["workspace.write"].describe()["idempotent"] is True

    class Server:
        name = "orders"

    def listed(**hints: bool) -> mcp_types.Tool:
        return mcp_types.Tool(
            name="t",
            input_schema={"type": "object"},
            annotations=mcp_types.ToolAnnotations(**hints),  # type: ignore[arg-type]
        )

    assert _tool(Server(), listed(idempotent_hint=True)).idempotent  # type: ignore[arg-type]
    assert not _tool(Server(), listed(destructive_hint=True)).idempotent  # type: ignore[arg-type]
