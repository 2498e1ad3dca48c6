"""Turning a user's request into events: the edge that supplies ids and time."""

from __future__ import annotations

import getpass
import json
from typing import TYPE_CHECKING, Any

import msgspec

from blackboard import ids
from blackboard.engine import dag
from blackboard.errors import ConfigError
from blackboard.log.events import GoalSubmitted, Limits, TaskSpec
from blackboard.log.redact import Redactor
from blackboard.log.subjects import check_token

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
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


def resolve_limits(
    defaults: Limits, overrides: Mapping[str, Any] | None = None
) -> Limits:
    """The goal's limits: the configured defaults with the given overrides.

    The effective limits are written into GoalSubmitted, so the fold never
    depends on the configuration of whoever reads the log later.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for name, value in given.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    return msgspec.structs.replace(defaults, **given)


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
) -> GoalSubmitted:
    """Build the GoalSubmitted event for a new goal."""
    if not text.strip():
        raise ConfigError("the goal text is empty")
    if goal_id is not None:
        try:
            check_token(goal_id, "goal id")
        except ValueError as e:
            raise ConfigError(str(e)) from e
    ordered = tuple(dag.order(specs)) if specs else ()
    try:
        redactor = Redactor(settings.redact)
    except ValueError as e:
        raise ConfigError(f"redact: {e}") from e
    text = redactor.text(text)
    ordered = tuple(
        msgspec.structs.replace(s, payload=redactor.apply(s.payload)) for s in ordered
    )
    who = submitted_by or _whoami()
    return GoalSubmitted(
        event_id=ids.new_id(),
        goal_id=goal_id or ids.new_id(),
        at=ids.utcnow(),
        actor=f"cli:{who}",
        text=text,
        limits=resolve_limits(settings.limits, overrides),
        tenant=tenant,
        priority=priority,
        submitted_by=who,
        tasks=ordered,
    )


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "anonymous"
