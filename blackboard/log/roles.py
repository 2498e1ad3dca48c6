"""Who writes what: the event kinds each NATS role may publish. Pure.

The chart's NATS users (``nats.config.merge.authorization`` in
helm/blackboard/values.yaml) give each role one publish permission per kind it
writes, ``<prefix>.in.evt.*.*.<kind>``. The kind is an event subject's last
token, and a reader refuses a body whose kind is not its subject's (wire.py),
so a role cannot pass one kind off as another. The chart is what is deployed;
this table is what its test (tests/deploy/test_chart.py) and the README's
roles table are checked against.

Who writes each kind today:

- the scheduler (engine/decide.py, engine/scheduler.py) materialises and
  dispatches tasks, settles duplicates and bad dependencies, holds tasks and
  halts goals at admission, asks for approval by policy, ends goals;
- a worker (engine/runs.py, attempts.py, context.py, agents/) claims and
  finishes its task, spawns children, records model calls (and the moves of
  a model's circuit breaker they caused), tool calls and side effects, asks
  for approval from inside a run, and holds its task and halts the goal when
  a handler's guardrail breaks;
- an operator (`bb submit`, `approve`, `resume`, `cancel`: engine/commands.py)
  submits, approves or denies, resumes, and cancels (the goal and a fence on
  each open task);
- a submitter only submits: a service that starts goals must not be able to
  approve what they do.

The worker also writes the policy's decisions on its calls and the goal's
budget entries (reservations before a call, settlements after); the scheduler
the policy's decisions at admission; the operator (and the scheduler, for a
policy that compensates a failed goal) the compensation events.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Mapping

SCHEDULER: Final = frozenset(
    {
        "task_created",
        "task_ready",
        "task_completed",
        "task_failed",
        "task_cancelled",
        "task_held",
        "task_preempted",
        "approval_requested",
        "goal_halted",
        "goal_completed",
        "goal_failed",
        "goal_throttled",
        "policy_decided",
        # A policy may compensate a failed goal from the scheduler's process.
        "compensation_needed",
        "effect_compensated",
        "compensation_failed",
    }
)

WORKER: Final = frozenset(
    {
        "task_claimed",
        "task_completed",
        "task_failed",
        "task_needs_followup",
        "task_created",
        "task_held",
        "goal_halted",
        "approval_requested",
        "model_called",
        "breaker_changed",
        "side_effect_started",
        "side_effect_completed",
        "side_effect_failed",
        "tool_call_started",
        "tool_call_finished",
        "policy_decided",
        "budget_entry",
    }
)

OPERATOR: Final = frozenset(
    {
        "goal_submitted",
        "approval_granted",
        "approval_denied",
        "goal_resumed",
        "goal_cancelled",
        "task_cancelled",
        "compensation_needed",
        "effect_compensated",
        "compensation_failed",
    }
)

SUBMITTER: Final = frozenset({"goal_submitted"})

WRITES: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "scheduler": SCHEDULER,
        "worker": WORKER,
        "operator": OPERATOR,
        "submitter": SUBMITTER,
        "projector": frozenset(),
        "reader": frozenset(),
    }
)
"""Every role of the chart and the event kinds it may publish."""


def event_subjects(role: str, prefix: str = "bb") -> frozenset[str]:
    """The publish permissions that let ``role`` write its kinds."""
    return frozenset(f"{prefix}.in.evt.*.*.{kind}" for kind in WRITES[role])


def writers(kind: str) -> frozenset[str]:
    """The roles that may write events of ``kind``."""
    return frozenset(role for role, kinds in WRITES.items() if kind in kinds)
