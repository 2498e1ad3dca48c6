"""Blackboard: an event-sourced control plane for fleets of AI agents.

The package is laid out along the data flow, each package saying in its
docstring what lives there and what it may import (checked by import-linter):

- ``blackboard.log``: events, subjects, codec, redaction, the ports (event
  store, work queue, leader lock) with their JetStream adapters and in-memory
  twins, and the embedded nats-server: where facts are kept.
- ``blackboard.engine``: commands and submission (requests -> events), the
  fold (events -> state), the scheduler's and the worker's pure decisions,
  the scheduler, the lane workers and the task context.
- ``blackboard.telemetry``: OpenTelemetry at the edges.
- ``blackboard.runtime``: settings, the connection, components in one process.
- ``blackboard.tools``: benchmarks.  ``blackboard.cli``: the ``bb`` command.

Above the core: ``projections`` (log -> DuckDB), ``agents`` (model lanes and
the built-in task handlers) and ``replay`` (log -> reasoning trace).

This module is the public facade for handler authors: ``from blackboard
import TaskContext, RetryableError``. Names are loaded on first use, so
importing a submodule does not pay for the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "AnyEvent": "blackboard.log.events",
    "BlackboardError": "blackboard.errors",
    "ConcurrencyConflict": "blackboard.errors",
    "ConfigError": "blackboard.errors",
    "Followup": "blackboard.engine.handlers",
    "Handler": "blackboard.engine.handlers",
    "HandlerError": "blackboard.engine.handlers",
    "LogUnavailable": "blackboard.errors",
    "NeedsApproval": "blackboard.engine.handlers",
    "RetryableError": "blackboard.engine.handlers",
    "TaskContext": "blackboard.engine.context",
    "TaskSpec": "blackboard.log.events",
}

__all__ = [  # noqa: RUF022 - kept sorted by a test, with __version__ first
    "__version__",
    "AnyEvent",
    "BlackboardError",
    "ConcurrencyConflict",
    "ConfigError",
    "Followup",
    "Handler",
    "HandlerError",
    "LogUnavailable",
    "NeedsApproval",
    "RetryableError",
    "TaskContext",
    "TaskSpec",
]

if TYPE_CHECKING:
    from blackboard.engine.context import TaskContext
    from blackboard.engine.handlers import (
        Followup,
        Handler,
        HandlerError,
        NeedsApproval,
        RetryableError,
    )
    from blackboard.errors import (
        BlackboardError,
        ConcurrencyConflict,
        ConfigError,
        LogUnavailable,
    )
    from blackboard.log.events import AnyEvent, TaskSpec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        msg = f"module 'blackboard' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
