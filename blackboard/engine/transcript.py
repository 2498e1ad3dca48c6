"""A task's conversation so far, as the log recorded it: the semantic checkpoint.

A multi-turn task (model call, tool calls, model call...) that is interrupted
(its worker killed, its lease lost, a guardrail reached) is not started over:
the next attempt rebuilds the conversation from this. Each answer a model gave
is reused when the same request comes again (the agent compares request
hashes), and each tool call that finished returns its recorded result; a tool
call that started and never finished is the one open question, settled by its
effect class (:meth:`blackboard.engine.context.LiveTaskContext.tool_call`).

Pure: a fold over the task's envelopes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blackboard.log.events import ModelCalled, ToolCallFinished, ToolCallStarted

if TYPE_CHECKING:
    from collections.abc import Iterable

    from blackboard.log.codec import Envelope

__all__ = ["ToolCallRecord", "ToolOutcome", "Transcript", "transcript"]


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """What is recorded of a tool call before it runs."""

    tool: str
    call_id: str
    """The provider's id of the call."""
    key: str
    """The idempotency key: ``goal:task:dispatch.attempt:call_id`` of the run
    whose answer asked for the call."""
    arguments: Any
    """The arguments as recorded (redacted)."""
    effect: str
    source: str
    model_call: str
    """The event id of the ``ModelCalled`` that asked."""
    idempotent: bool = False
    """Whether running it twice leaves what running it once does."""


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """How one tool call ended, as the model is told."""

    result: Any = None
    error: str | None = None
    """Why it failed or was refused; ``None`` when it succeeded."""
    refused: bool = False
    replayed: bool = False
    """True when the result is the log's, from an earlier attempt: nothing ran."""

    @classmethod
    def recorded(cls, event: ToolCallFinished) -> ToolOutcome:
        """The outcome a finished call recorded."""
        return cls(event.result, event.error, event.refused, replayed=True)


@dataclass(slots=True)
class Transcript:
    """What the log holds of one task's conversations, across its runs."""

    answers: list[ModelCalled] = field(default_factory=list)
    """Every successful model call, oldest first (errors are never reused)."""
    finished: dict[str, ToolCallFinished] = field(default_factory=dict)
    """Finished tool calls by idempotency key."""
    started: dict[str, ToolCallStarted] = field(default_factory=dict)
    """Started tool calls by idempotency key (finished or not)."""
    used: set[str] = field(default_factory=set)
    """Answers (event ids) this attempt has used already: each is reused once."""

    def unfinished(self, key: str) -> ToolCallStarted | None:
        """The call's start, if it started and never finished."""
        if key in self.finished:
            return None
        return self.started.get(key)


def transcript(envs: Iterable[Envelope]) -> Transcript:
    """Fold one task's envelopes into its transcript."""
    out = Transcript()
    for env in envs:
        e = env.event
        if isinstance(e, ModelCalled):
            if e.error is None:
                out.answers.append(e)
        elif isinstance(e, ToolCallStarted):
            out.started[e.idempotency_key] = e
        elif isinstance(e, ToolCallFinished):
            out.finished[e.idempotency_key] = e
    return out
