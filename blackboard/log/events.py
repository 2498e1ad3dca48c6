"""The event catalogue: every fact Blackboard records, as one tagged union.

Events are frozen msgspec structs tagged by a ``type`` field whose value is the
class name in snake_case (``TaskCreated`` -> ``task_created``); the same token
is the last part of the event's subject, so ``bb.evt.*.*.task_failed`` selects
one kind. Evolution is additive: a new field always has a default, a field never
changes type, and unknown fields are ignored when decoding.

Pure: no clock, no ids, no I/O. Times and ids are passed in by the writer.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Annotated, Any, Final

import msgspec

SCHEMA_VERSION: Final = 1
"""Bumped only for a breaking change, which also gets a new tag or an upcaster."""

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")

TIMESTAMP_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$"
)
"""An RFC 3339 timestamp with its offset, as msgspec writes an aware datetime.

The schema says so with a ``pattern``, not ``format: date-time``: every
validator enforces a pattern, while ajv's strict mode refuses a schema whose
format it does not know (``date-time`` needs the ajv-formats plugin).
"""

Timestamp = Annotated[
    datetime,
    msgspec.Meta(
        extra_json_schema={
            "pattern": TIMESTAMP_PATTERN,
            "description": "RFC 3339 timestamp with offset (UTC: Z).",
        }
    ),
]


@functools.cache
def kind_of(cls_name: str) -> str:
    """Return the snake_case tag for an event class name (``TaskCreated``)."""
    return _CAMEL.sub("_", cls_name).lower()


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Guardrails of one goal. ``None`` means unlimited."""

    max_depth: int | None = None
    max_tasks: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    max_turns: int | None = None
    """Model turns one task's conversation may take (its agent loop)."""
    deadline: Timestamp | None = None
    """When the goal must be done by: past it, the scheduler halts the goal
    (or fails it: ``[engine] on_deadline``); ready work of goals with a
    deadline goes earliest-deadline-first within a priority level."""


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A task as a client or a handler asks for it, before it is created."""

    task_id: str
    type: str
    lane: str
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    priority: int = 0
    dedupe_key: str | None = None
    requires_approval: bool = False
    max_attempts: int | None = None


class Event(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag_field="type",
    tag=kind_of,
):
    """Fields every event carries."""

    event_id: str
    goal_id: str
    task_id: str | None = None
    at: Timestamp
    actor: str


# --- goal -----------------------------------------------------------------


class GoalSubmitted(Event, frozen=True, kw_only=True):
    """A goal entered the system.

    With no ``tasks`` the scheduler creates one ``plan`` task for it; with
    ``tasks`` the DAG is given up front and validated as a whole.
    """

    text: str
    limits: Limits = Limits()
    tenant: str = "default"
    priority: int = 0
    submitted_by: str = "anonymous"
    tasks: tuple[TaskSpec, ...] = ()


class GoalCompleted(Event, frozen=True, kw_only=True):
    """Every task of the goal is done."""

    summary: str = ""


class GoalFailed(Event, frozen=True, kw_only=True):
    """The goal cannot finish: a task failed for good, or the DAG was invalid."""

    reason: str


class GoalCancelled(Event, frozen=True, kw_only=True):
    """Somebody cancelled the goal; its open tasks are cancelled with it."""

    reason: str = ""
    by: str = ""
    compensate: bool = False
    """The canceller asked for the goal's reversible effects to be undone
    (``bb cancel --compensate``); the undo steps are events of their own."""


class GoalHalted(Event, frozen=True, kw_only=True):
    """A guardrail was breached; work stops but nothing is dropped."""

    guardrail: str
    limit: float
    observed: float


class GoalResumed(Event, frozen=True, kw_only=True):
    """The goal's limits were raised; held tasks are admitted again."""

    limits: Limits
    by: str = ""


class GoalThrottled(Event, frozen=True, kw_only=True):
    """The goal's tenant is at a rate quota: its ready work waits until ``until``.

    Written by the scheduler once per wait (its id names the quota and the
    end of the wait); the work goes out by itself when the quota has room.
    """

    tenant: str
    quota: str
    """``tokens_per_minute`` or ``usd_per_day`` (``[tenants.<name>]``)."""
    used: float
    limit: float
    until: Timestamp
    reason: str = ""


# --- task -----------------------------------------------------------------


class TaskCreated(Event, frozen=True, kw_only=True):
    """A task exists. ``depends_on`` names tasks created earlier in the log.

    The task's type is ``task_type`` because ``type`` is the event's own tag.
    """

    task_type: str
    lane: str
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    parent_id: str | None = None
    parent_attempt: int = 0
    """The parent's attempt that spawned this task (0: not spawned)."""
    parent_dispatch: int = 1
    """The dispatch of that attempt (attempts restart at 1 in each dispatch)."""
    depth: int = 0
    priority: int = 0
    dedupe_key: str | None = None
    requires_approval: bool = False
    max_attempts: int = 3


class TaskReady(Event, frozen=True, kw_only=True):
    """The scheduler dispatched the task; ``dispatch`` counts dispatches."""

    dispatch: int = 1


class TaskClaimed(Event, frozen=True, kw_only=True):
    """A worker took the task; ``attempt`` counts claims.

    ``work_seq`` is the stream sequence of the work message the claim came
    from: after a lease expires, only a later delivery of that same message
    may take the task over, never a duplicate of it nor an older copy.
    """

    worker: str
    attempt: int
    work_seq: int = 0
    delivery: int = 0
    """Which delivery of that work message made the claim (1 = the first)."""


class TaskCompleted(Event, frozen=True, kw_only=True):
    """The task's handler finished with a result.

    With ``duplicate_of`` the task never ran: the scheduler found an earlier
    task of the goal with the same ``dedupe_key`` done, and this is its result.
    """

    result: Any = None
    attempt: int = 1
    duplicate_of: str | None = None


class TaskFailed(Event, frozen=True, kw_only=True):
    """An attempt failed; ``retryable`` says whether another will follow."""

    error: str
    retryable: bool = False
    attempt: int = 1
    transient: bool = False
    """The log or the server was unavailable, not the task at fault: the
    attempt does not count against ``max_attempts``."""


class TaskNeedsFollowup(Event, frozen=True, kw_only=True):
    """The task spawned children and waits for them before running again."""

    waiting_on: tuple[str, ...]
    attempt: int = 1
    reason: str = ""


class TaskCancelled(Event, frozen=True, kw_only=True):
    """The task will not run (goal cancelled, dependency failed, denied)."""

    reason: str = ""


class TaskPreempted(Event, frozen=True, kw_only=True):
    """A dispatched, not yet claimed task gave its slot to higher-priority work.

    Written by the scheduler with ``[engine] preempt = "requeue"``, guarded on
    the task's ``TaskReady``: a task a worker claimed first is never touched.
    The task waits again, with the rank it had; its work message, when a
    worker gets it, finds the task moved on and is dropped.
    """

    reason: str
    by_goal: str
    by_task: str


class TaskHeld(Event, frozen=True, kw_only=True):
    """Admission was refused by a guardrail; the task is kept, not dropped."""

    guardrail: str
    reason: str = ""


# --- approval -------------------------------------------------------------


class ApprovalRequested(Event, frozen=True, kw_only=True):
    """A human must approve before the task runs (again).

    ``key`` names what is to be approved inside a run (``tool:<call key>`` for
    one tool call, ``model:<task>`` for a cost gate); empty for the task as a
    whole. ``on_deny`` says what a denial does: ``cancel`` the task, or
    ``resume`` it (a denied tool call is returned to the model as an error).
    """

    reason: str = ""
    policy: str = ""
    key: str = ""
    on_deny: str = "cancel"


class ApprovalGranted(Event, frozen=True, kw_only=True):
    """A human approved the task (``key``: what the request named)."""

    by: str = ""
    note: str = ""
    key: str = ""


class ApprovalDenied(Event, frozen=True, kw_only=True):
    """A human refused (``key``: what the request named).

    The task is cancelled, or, when the request said ``on_deny = "resume"``,
    runs on without what was asked for.
    """

    by: str = ""
    note: str = ""
    key: str = ""


# --- governance -----------------------------------------------------------


class PolicyDecided(Event, frozen=True, kw_only=True):
    """The policy said something other than a plain allow.

    ``point`` is what was decided on: ``task`` (admission, by the scheduler),
    ``model`` or ``tool`` (a call, by the worker). ``rule`` names the rule that
    matched (``default`` when none did) and ``policy_hash`` the policy's
    content, so an audit can tell which version was consulted.
    """

    point: str
    subject: str
    """The lane, model or tool decided on."""
    decision: str
    """``deny``, ``require_approval`` or ``allow_with``."""
    rule: str
    policy_hash: str
    constraints: dict[str, Any] = msgspec.field(default_factory=dict)
    """What an ``allow_with`` imposed: ``lane``, ``models``, ``max_tokens``."""
    reason: str = ""
    key: str = ""
    """The call or approval the decision is about (one record per key)."""


class BudgetHold(msgspec.Struct, frozen=True, kw_only=True):
    """One reservation not yet settled."""

    task_id: str
    dispatch: int = 1
    attempt: int = 1
    tokens: int = 0
    cost_usd: float = 0.0


class BudgetEntry(Event, frozen=True, kw_only=True):
    """One step of a goal's budget ledger: a reservation, or its settlement.

    Before a model call a worker reserves the call's worst case; after it, the
    reservation is settled with what the call used (or released when no call
    was made). Every entry of a goal is written guarded on the last entry of
    the goal (the subject ``<prefix>.evt.<goal>.*.budget_entry``), so
    concurrent workers take turns, and each entry carries the running totals:
    the last entry alone says what is spent and what is held.
    """

    op: str
    """``reserve``, ``settle``, ``release`` (no call was made) or ``forfeit``
    (a run died holding it with no call recorded: its worst case is spent)."""
    reservation: str
    tokens: int = 0
    """Reserve and forfeit: the worst case; settle: what the call used."""
    cost_usd: float = 0.0
    model: str = ""
    spent_tokens: int = 0
    """Totals after this entry: settled usage..."""
    spent_usd: float = 0.0
    held: dict[str, BudgetHold] = msgspec.field(default_factory=dict)
    """...and the reservations still open, by id."""
    max_tokens: int | None = None
    """The goal's limits this entry was checked against."""
    max_cost_usd: float | None = None


# --- reasoning ------------------------------------------------------------


class Price(msgspec.Struct, frozen=True, kw_only=True):
    """USD per million tokens used to cost one call."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    cached_per_mtok: float = 0.0


class ModelCalled(Event, frozen=True, kw_only=True):
    """One model call, recorded as soon as it returned, in full."""

    provider: str
    model: str
    lane: str
    request: dict[str, Any]
    response: dict[str, Any]
    text: str = ""
    """The answer's text, as the handler saw it (also inside ``response``)."""
    stop_reason: str | None = None
    tool_calls: tuple[dict[str, Any], ...] = ()
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    cost_usd: float = 0.0
    price: Price = Price()
    latency_ms: float = 0.0
    call_index: int = 0
    attempt: int = 1
    dispatch: int = 1
    """The task's dispatch the call belongs to (``TaskReady.dispatch``).

    Attempts restart at 1 in each dispatch, so ``(dispatch, attempt)`` names one
    run of the task and ``(dispatch, attempt, call_index)`` one call. Logs
    written before this field existed read as 1.
    """
    request_hash: str = ""
    prompt_version: str = ""
    error: str | None = None
    scripted: bool = False
    reservation: str = ""
    """The budget reservation this call was made under (``BudgetEntry``)."""


class BreakerChanged(Event, frozen=True, kw_only=True):
    """A model's circuit breaker moved (agents/breaker.py).

    Written by the worker whose call made the move, on that call's task:
    ``closed`` to ``open`` after ``failures`` retryable failures in a row
    (across the fleet), ``open`` to ``half_open`` when the cool-down was over
    and this call won the probe, ``half_open`` to ``closed`` when it
    succeeded or back to ``open`` when it failed. While open, the model's
    calls go straight to the next model of the chain.
    """

    provider: str
    model: str
    lane: str = ""
    from_state: str
    to_state: str
    failures: int = 0
    reason: str = ""


# --- side effects ---------------------------------------------------------


class SideEffectStarted(Event, frozen=True, kw_only=True):
    """A side effect is about to be performed."""

    name: str
    idempotency_key: str
    request: Any = None
    idempotent: bool = False


class SideEffectCompleted(Event, frozen=True, kw_only=True):
    """A side effect was performed; its result is what replay returns."""

    name: str
    idempotency_key: str
    result: Any = None


class SideEffectFailed(Event, frozen=True, kw_only=True):
    """A side effect raised; the error is recorded."""

    name: str
    idempotency_key: str
    error: str


# --- tool calls -----------------------------------------------------------


class ToolCallStarted(Event, frozen=True, kw_only=True):
    """A tool a model asked for is about to run.

    ``idempotency_key`` is ``goal:task:dispatch.attempt:call_id`` of the run
    whose model answer asked for the call: an attempt that reuses that answer
    (a resumed conversation) finds the call by the same key.
    """

    tool: str
    """The tool's name as offered to the model (``workspace.write``)."""
    call_id: str
    """The provider's id of the call."""
    idempotency_key: str
    arguments: Any = None
    """The arguments, redacted."""
    effect: str = "irreversible"
    """``read``, ``reversible`` or ``irreversible``."""
    source: str = ""
    """Where the tool comes from: ``workspace``, ``mcp:<server>``, ``python``."""
    model_call: str = ""
    """The event id of the ``ModelCalled`` whose answer asked for the call."""
    attempt: int = 1
    dispatch: int = 1
    idempotent: bool = False
    """The tool says a second run leaves what one run does: a call cut short
    by a dead worker is redone without asking a human."""


class ToolCallFinished(Event, frozen=True, kw_only=True):
    """A tool call ended: its result, or the error the model was shown.

    A call refused before it ran (a path out of the workspace, arguments that
    do not fit the schema, an unknown tool) ends here too, with ``refused``.
    """

    tool: str
    call_id: str
    idempotency_key: str
    result: Any = None
    """What the tool returned, redacted (``None`` on error)."""
    error: str | None = None
    """Why the call failed or was refused; ``None`` when it succeeded."""
    refused: bool = False
    """True when the call never ran (its arguments or target were refused)."""
    effect: str = "irreversible"
    duration_ms: float = 0.0
    attempt: int = 1
    dispatch: int = 1


# --- compensation ---------------------------------------------------------
#
# Undoing what a cancelled or failed goal did (agents/compensate.py). Each is
# written on the subject of the task whose call it is about, after that task
# ended; ``idempotency_key`` names the call (``ToolCallStarted``) or the side
# effect (``SideEffectStarted``), and ``origin`` says which of the two.


class EffectCompensated(Event, frozen=True, kw_only=True):
    """A recorded effect was undone by its compensator."""

    name: str
    """The tool (``workspace.write``) or the side effect (``write:notes.md``)."""
    idempotency_key: str
    origin: str = "tool_call"
    """``tool_call`` or ``side_effect``."""
    result: Any = None
    """What the compensator returned (``{"path": ..., "action": "restored"}``)."""
    by: str = ""
    """Who asked for the compensation."""


class CompensationFailed(Event, frozen=True, kw_only=True):
    """An undo was tried and failed; a later compensation tries it again."""

    name: str
    idempotency_key: str
    origin: str = "tool_call"
    error: str
    by: str = ""


class CompensationNeeded(Event, frozen=True, kw_only=True):
    """An effect Blackboard cannot undo: a human has to look at it.

    An irreversible call, a side effect with no compensator, a call whose end
    was never recorded (its outcome is unknown), or an undo made impossible
    (its recorded result was redacted).
    """

    name: str
    idempotency_key: str
    origin: str = "tool_call"
    effect: str = "irreversible"
    """The call's effect class as recorded (side effects: ``irreversible``)."""
    arguments: str = ""
    """The recorded (redacted) arguments, as clipped JSON text."""
    reason: str
    by: str = ""


AnyEvent = (
    GoalSubmitted
    | GoalCompleted
    | GoalFailed
    | GoalCancelled
    | GoalHalted
    | GoalResumed
    | GoalThrottled
    | TaskCreated
    | TaskReady
    | TaskClaimed
    | TaskCompleted
    | TaskFailed
    | TaskNeedsFollowup
    | TaskCancelled
    | TaskHeld
    | TaskPreempted
    | ApprovalRequested
    | ApprovalGranted
    | ApprovalDenied
    | PolicyDecided
    | BudgetEntry
    | ModelCalled
    | BreakerChanged
    | SideEffectStarted
    | SideEffectCompleted
    | SideEffectFailed
    | ToolCallStarted
    | ToolCallFinished
    | EffectCompensated
    | CompensationFailed
    | CompensationNeeded
)
"""The union of every event; the decoder of the ``BB_EVENTS`` stream."""

EVENT_TYPES: Final[tuple[type[Event], ...]] = AnyEvent.__args__
KINDS: Final[frozenset[str]] = frozenset(kind_of(t.__name__) for t in EVENT_TYPES)


def kind(event: Event) -> str:
    """Return the event's tag, which is also the last token of its subject."""
    return kind_of(type(event).__name__)


def json_schema() -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) of the whole catalogue.

    msgspec adds OpenAPI's ``discriminator`` to a tagged union; it is not a
    JSON Schema keyword, and strict validators (ajv) refuse it. Without it the
    ``anyOf`` says the same thing: each branch admits one ``type`` value.
    """
    schema: dict[str, Any] = msgspec.json.schema(AnyEvent)
    schema.pop("discriminator", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": f"Blackboard events, schema version {SCHEMA_VERSION}",
        **schema,
    }
