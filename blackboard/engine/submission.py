"""A new goal: DAG files, the configured limits and redaction, ids and time.

The edge around ``commands.SubmitGoal``; ``resolve_limits`` is re-exported.
"""

from __future__ import annotations

import getpass
import json
from typing import TYPE_CHECKING, Any

import msgspec

from blackboard import ids
from blackboard.engine import dag
from blackboard.engine.commands import SubmitGoal, decide_command, resolve_limits
from blackboard.engine.state import BoardState
from blackboard.errors import ConfigError
from blackboard.log.events import GoalSubmitted, TaskSpec
from blackboard.log.redact import Redactor
from blackboard.log.subjects import partition_of

__all__ = ["goal_submitted", "load_dag", "resolve_limits"]

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from datetime import datetime
    from pathlib import Path

    from blackboard.runtime.config import Settings


class _DagFile(msgspec.Struct, forbid_unknown_fields=True):
    tasks: list[TaskSpec]


def load_dag(path: Path) -> tuple[TaskSpec, ...]:
    """Read a DAG file (``{"tasks": [...]}`` or a bare list) and validate it."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"DAG file {path} not found") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"DAG file {path} is not JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"DAG file {path} is not text: {e.reason}") from e
    except OSError as e:
        raise ConfigError(f"cannot read DAG file {path}: {e.strerror or e}") from e
    if isinstance(raw, list):
        raw = {"tasks": raw}
    try:
        specs = msgspec.convert(raw, _DagFile).tasks
    except msgspec.ValidationError as e:
        raise ConfigError(f"DAG file {path}: {e}") from e
    return tuple(dag.order(specs))


def goal_id_in(
    partition: int, count: int, new_id: Callable[[], str] = ids.new_id
) -> str:
    """A fresh goal id whose goal belongs to ``partition`` of ``count``.

    For benches and tests that need a goal in each scheduler partition; a
    goal's partition is a function of its id (subjects.partition_of).
    """
    while True:
        goal_id = new_id()
        if partition_of(goal_id, count) == partition:
            return goal_id


def goal_submitted(
    settings: Settings,
    text: str,
    *,
    specs: Sequence[TaskSpec] = (),
    overrides: Mapping[str, Any] | None = None,
    tenant: str = "default",
    priority: int = 0,
    submitted_by: str | None = None,
    goal_id: str | None = None,
    now: Callable[[], datetime] = ids.utcnow,
    new_id: Callable[[], str] = ids.new_id,
) -> GoalSubmitted:
    """Build the GoalSubmitted event for a new goal.

    The edge's part: the configured limits and redaction, who submits, the
    clock and ids. What the command means is ``commands.decide_command``.
    """
    try:
        redactor = Redactor(settings.redact)
    except ValueError as e:
        raise ConfigError(f"redact: {e}") from e
    cmd = SubmitGoal(
        text=redactor.text(text),
        limits=resolve_limits(settings.limits, dict(overrides or {})),
        tasks=tuple(
            msgspec.structs.replace(s, payload=redactor.apply(s.payload)) for s in specs
        ),
        tenant=tenant,
        priority=priority,
        goal_id=goal_id,
        by=submitted_by or _whoami(),
    )
    ((event, _),) = decide_command(BoardState(), cmd, now=now(), new_id=new_id)
    assert isinstance(event, GoalSubmitted)
    return event


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "anonymous"
