"""What undoing a goal's effects takes, read from its log. Pure.

:func:`plan` folds a goal's envelopes into an :class:`UndoPlan`:

- the reversible effects to undo, **newest first** (reverse stream order): a
  later write to a file is undone before an earlier one, so each undo finds
  the file as the call it undoes left it. They are the tool calls of effect
  ``reversible`` that finished without error or refusal, and the ``execute``
  handler's artifact writes (side effects named ``write:<path>`` whose result
  records what the file held before);
- the effects a human has to look at: irreversible tool calls, side effects
  Blackboard has no undo for, and any call or side effect that started and
  never ended (the worker died, or the goal was cancelled while it ran):
  whether it happened, and what it did, is unknown, so nothing is undone on a
  guess;
- what was done before: effects already undone (``EffectCompensated``) are
  left out, and effects already reported (``CompensationNeeded``) are not
  reported again. So planning again after a compensation plans nothing twice,
  and one cut short (a crash) goes on from where it stopped. A failed undo
  (``CompensationFailed``) is planned again: the file may have been fixed.

``read`` calls, calls that failed or were refused (they did nothing the tool
reports) and side effects that raised are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from blackboard.log.events import (
    CompensationNeeded,
    EffectCompensated,
    SideEffectCompleted,
    SideEffectFailed,
    SideEffectStarted,
    ToolCallFinished,
    ToolCallStarted,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from blackboard.log.codec import Envelope

__all__ = [
    "ARTIFACT_EFFECT",
    "Needed",
    "Origin",
    "Recorded",
    "UndoPlan",
    "artifact_path",
    "plan",
    "summary",
]

Origin = Literal["tool_call", "side_effect"]

ARTIFACT_EFFECT: Final = "write:"
"""The prefix of the ``execute`` handler's artifact side effects
(``write:<path>``, under ``<data_dir>/artifacts/<goal>``)."""

SUMMARY_CHARS: Final = 300
"""Arguments are summarised to this many characters in what a human reads."""

UNKNOWN: Final = (
    "it started and its end was never recorded (its worker died, or the goal"
    " was cancelled while it ran): whether it happened is unknown"
)
IRREVERSIBLE: Final = "an irreversible tool call: Blackboard has no undo for it"
NO_UNDO: Final = "a handler's side effect: Blackboard has no undo for it"
OLD_ARTIFACT: Final = (
    "an artifact written before artifact writes recorded what they replaced"
)


@dataclass(frozen=True, slots=True)
class Recorded:
    """One effect the goal's log says happened, or may have."""

    origin: Origin
    name: str
    """The tool (``workspace.write``) or the side effect (``write:notes.md``)."""
    key: str
    """Its idempotency key."""
    task_id: str
    seq: int
    """The sequence of the event that recorded its end (its start, if none)."""
    effect: str
    """``reversible`` or ``irreversible`` as recorded (side effects: by kind)."""
    arguments: Any = None
    """The recorded (redacted) arguments; a side effect's request."""
    result: Any = None
    """The recorded result: what a compensator undoes from."""


@dataclass(frozen=True, slots=True)
class Needed:
    """An effect left to a human, and why."""

    recorded: Recorded
    reason: str


@dataclass(frozen=True, slots=True)
class UndoPlan:
    """What compensating a goal takes now, given what was done before."""

    undo: tuple[Recorded, ...] = ()
    """Reversible effects not yet undone, newest first."""
    needs_human: tuple[Needed, ...] = ()
    """Effects to report as needing a human (not reported before), newest first."""
    reported: tuple[Needed, ...] = ()
    """Effects reported as needing a human by an earlier compensation."""
    undone: tuple[str, ...] = ()
    """Keys of the effects an earlier compensation undid."""

    @property
    def empty(self) -> bool:
        """Nothing was ever reversible or left to a human."""
        return not (self.undo or self.needs_human or self.reported or self.undone)


@dataclass(slots=True)
class _Call:
    origin: Origin
    name: str
    key: str
    task_id: str
    seq: int
    effect: str
    arguments: Any
    ended: bool = False
    ok: bool = False
    result: Any = None


def plan(envelopes: Iterable[Envelope]) -> UndoPlan:
    """The undo plan of the goal whose envelopes (in stream order) are given."""
    calls: dict[str, _Call] = {}
    undone: dict[str, None] = {}
    reported: dict[str, str] = {}
    for env in envelopes:
        e = env.event
        if e.task_id is None:
            continue
        match e:
            case ToolCallStarted():
                # A resumed or redone call starts again under the same key.
                calls.setdefault(
                    e.idempotency_key,
                    _Call(
                        "tool_call",
                        e.tool,
                        e.idempotency_key,
                        e.task_id,
                        env.seq,
                        e.effect,
                        e.arguments,
                    ),
                )
            case ToolCallFinished():
                call = calls.setdefault(
                    e.idempotency_key,
                    _Call(
                        "tool_call",
                        e.tool,
                        e.idempotency_key,
                        e.task_id,
                        env.seq,
                        e.effect,
                        None,
                    ),
                )
                call.seq, call.ended, call.effect = env.seq, True, e.effect
                call.ok, call.result = e.error is None and not e.refused, e.result
            case SideEffectStarted():
                calls.setdefault(
                    e.idempotency_key,
                    _Call(
                        "side_effect",
                        e.name,
                        e.idempotency_key,
                        e.task_id,
                        env.seq,
                        "irreversible",
                        e.request,
                    ),
                )
            case SideEffectCompleted() | SideEffectFailed():
                call = calls.setdefault(
                    e.idempotency_key,
                    _Call(
                        "side_effect",
                        e.name,
                        e.idempotency_key,
                        e.task_id,
                        env.seq,
                        "irreversible",
                        None,
                    ),
                )
                call.seq, call.ended = env.seq, True
                if isinstance(e, SideEffectCompleted):
                    call.ok, call.result = True, e.result
                    if artifact_path(e.name, e.result) is not None:
                        call.effect = "reversible"
            case EffectCompensated():
                undone[e.idempotency_key] = None
            case CompensationNeeded():
                reported.setdefault(e.idempotency_key, e.reason)
            case _:
                pass
    undo: list[Recorded] = []
    needs: list[Needed] = []
    before: list[Needed] = []
    for call in sorted(calls.values(), key=lambda c: c.seq, reverse=True):
        if call.effect == "read" or (call.ended and not call.ok):
            continue  # it changed nothing, as far as anyone can tell
        if call.key in undone:
            continue
        recorded = Recorded(
            call.origin,
            call.name,
            call.key,
            call.task_id,
            call.seq,
            call.effect,
            call.arguments,
            call.result,
        )
        why = _why_human(call)
        if call.key in reported:
            before.append(Needed(recorded, reported[call.key]))
        elif why is not None:
            needs.append(Needed(recorded, why))
        else:
            undo.append(recorded)
    return UndoPlan(
        undo=tuple(undo),
        needs_human=tuple(needs),
        reported=tuple(before),
        undone=tuple(k for k in undone if k in calls),
    )


def _why_human(call: _Call) -> str | None:
    """Why a human must look at the call, or ``None`` when it can be undone."""
    if not call.ended:
        return UNKNOWN
    if call.effect == "reversible":
        return None
    if call.origin == "tool_call":
        return IRREVERSIBLE
    if call.name.startswith(ARTIFACT_EFFECT):
        return OLD_ARTIFACT
    return NO_UNDO


def artifact_path(name: str, result: Any) -> str | None:
    """The artifact an ``execute`` side effect wrote, if its undo is recorded.

    That is a ``write:<path>`` effect whose result says what the file held
    before (``previous``), as :mod:`agents.handlers` records since
    compensation exists; older results lack it, and cannot be undone.
    """
    if not name.startswith(ARTIFACT_EFFECT) or not isinstance(result, dict):
        return None
    if not isinstance(result.get("previous"), dict):
        return None
    return name[len(ARTIFACT_EFFECT) :] or None


def summary(value: Any, limit: int = SUMMARY_CHARS) -> str:
    """Arguments as one line of JSON a person can read, clipped to ``limit``."""
    if value is None:
        return ""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
