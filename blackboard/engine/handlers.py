"""The handler API: what a task type's code receives and may return.

A handler is ``async def handler(ctx: TaskContext) -> object``. What it returns
is the task's result, unless it is a :class:`Followup` (made by
``ctx.wait_for``): then the children are created and the task runs again
after them. Raising :class:`RetryableError` (or a subclass, such as the model
clients' retryable errors) fails the attempt with backoff while attempts
remain; raising :class:`GuardrailBreached` holds the task and halts its goal
(``bb resume`` with a higher limit runs it again); raising anything else fails
the task for good, with the error recorded.

::

    HandlerError
    ├── RetryableError        try again later (retry_after honoured)
    ├── NeedsApproval         stop; a human must approve before the next run
    └── GuardrailBreached     stop; the goal halts until its limit is raised
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blackboard.errors import BlackboardError, ConfigError

if TYPE_CHECKING:
    from blackboard.engine.context import TaskContext
    from blackboard.log.events import TaskSpec

Handler = Callable[["TaskContext"], Coroutine[Any, Any, object]]


class HandlerError(BlackboardError):
    """Base of the exceptions a handler raises to steer its task."""


class RetryableError(HandlerError):
    """The attempt failed for a reason that may pass (a 429, a timeout)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NeedsApproval(HandlerError):
    """The handler wants a human to approve before it goes on."""

    def __init__(
        self,
        reason: str,
        policy: str = "handler",
        *,
        key: str = "",
        on_deny: str = "cancel",
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.policy = policy
        self.key = key
        """What inside the run is to be approved (empty: the task)."""
        self.on_deny = on_deny
        """``cancel`` the task on a denial, or ``resume`` it without it."""


class GuardrailBreached(HandlerError):
    """A limit the handler enforces itself (a conversation's turns) is reached.

    The task is held, its work intact, and the goal halts, as for the
    scheduler's own guardrails; ``bb resume --max-turns N`` admits it again.
    """

    def __init__(
        self, guardrail: str, limit: float, observed: float, detail: str = ""
    ) -> None:
        super().__init__(
            detail or f"{guardrail} {observed:g} reaches its limit {limit:g}"
        )
        self.guardrail = guardrail
        self.limit = limit
        self.observed = observed


@dataclass(frozen=True, slots=True)
class Followup:
    """Spawn these children and run the task again once they are done."""

    children: Sequence[TaskSpec]
    reason: str = ""


async def noop(ctx: TaskContext) -> object:
    """Do nothing, at once: the engine's own cost per task, for benchmarks."""
    return None


BUILTIN: Mapping[str, Handler] = {"noop": noop}
"""Handlers every worker has, whatever else is registered."""


def load(spec: str) -> dict[str, Handler]:
    """Load a mapping of handlers from ``module:attribute``.

    This is how a deployment plugs in its own task types:
    ``bb worker --lane local --handlers mypkg.tasks:HANDLERS``.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"handlers must be given as module:attribute, not {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import handlers module {module_name!r}: {e}") from e
    found: Any = getattr(module, attr, None)
    if not isinstance(found, Mapping):
        raise ConfigError(f"{spec} is not a mapping of task type to handler")
    return dict(found)
