"""What a tool is, and the one registry every source of tools feeds.

A :class:`Tool` has a namespaced name (``workspace.write``, ``orders.describe``,
``python.lookup``), a JSON Schema of its arguments, an effect class and a
``run`` coroutine. Three sources build them: the built-in workspace tools
(:mod:`agents.tools.workspace`), the user's Python functions
(:mod:`agents.tools.python`) and MCP servers (:mod:`agents.tools.mcp`).
:class:`ToolRegistry` holds them and says which a lane offers.

The effect class decides what happens when a worker dies mid-call: a ``read``
call is simply run again, and so is an ``idempotent`` one (running it twice
leaves what running it once does); any other waits for a human (see
:meth:`blackboard.engine.context.LiveTaskContext.tool_call`).

::

    BlackboardError
    └── ToolError          the call failed; its message is shown to the model
        └── ToolRefused    the call was refused before it ran (bad arguments,
                           a path out of the workspace, an unknown tool)
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from agents.models import ToolSpec
from blackboard.errors import BlackboardError, ConfigError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence
    from pathlib import Path

__all__ = [
    "EFFECTS",
    "Effect",
    "Invocation",
    "Tool",
    "ToolError",
    "ToolRefused",
    "ToolRegistry",
]

Effect = Literal["read", "reversible", "irreversible"]
"""``read``: no side effect; ``reversible``: has a compensator; else
``irreversible``."""

EFFECTS: Final[tuple[str, ...]] = get_args(Effect)


class ToolError(BlackboardError):
    """A tool call failed; the message is what the model is shown."""


class ToolRefused(ToolError):
    """A tool call was refused before it ran; the message says why."""


@dataclass(frozen=True, slots=True)
class Invocation:
    """Who calls a tool, and where: what every ``run`` gets besides arguments."""

    goal_id: str
    task_id: str
    workspace: Path
    """The goal's workspace directory (it may not exist yet)."""


@dataclass(frozen=True, slots=True)
class Tool:
    """One tool an agent may call."""

    name: str
    """Namespaced: ``<source>.<tool>`` (``workspace.read``, ``orders.search``)."""
    description: str
    input_schema: dict[str, Any]
    """A JSON Schema object of the arguments."""
    effect: Effect
    source: str
    """``workspace``, ``python:<module>`` or ``mcp:<server>``."""
    run: Callable[[Invocation, dict[str, Any]], Awaitable[Any]] = field(repr=False)
    """Perform the call; raises :class:`ToolError` for an error the model sees.
    What it returns must be JSON-able."""
    compensate: Callable[[Invocation, dict[str, Any], Any], Awaitable[Any]] | None = (
        field(default=None, repr=False)
    )
    """Undo a completed call, given its arguments and its recorded result
    (``reversible`` tools have one)."""
    idempotent: bool = False
    """Running a call again with the same arguments leaves what running it once
    did: a call a dead worker cut short is redone without asking a human."""

    def spec(self) -> ToolSpec:
        """The tool as a model is offered it."""
        return ToolSpec(
            name=self.name, description=self.description, input_schema=self.input_schema
        )

    def describe(self) -> dict[str, Any]:
        """The tool as ``bb tools --json`` lists it."""
        return {
            "name": self.name,
            "source": self.source,
            "effect": self.effect,
            "description": self.description,
            "input_schema": self.input_schema,
            "compensator": self.compensate is not None,
            "idempotent": self.idempotent,
        }


class ToolRegistry:
    """Every tool of one process, by name.

    Args:
        tools: The tools; two with one name is a configuration error.
    """

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self.add(tools)

    def add(self, tools: Iterable[Tool]) -> None:
        """Register more tools (an MCP server's, once it has started)."""
        for tool in tools:
            if tool.effect not in EFFECTS:
                raise ConfigError(
                    f"tool {tool.name}: effect {tool.effect!r} is not one of"
                    f" {', '.join(EFFECTS)}"
                )
            if tool.name in self._tools:
                first = self._tools[tool.name].source
                raise ConfigError(
                    f"two tools are named {tool.name!r} ({first} and {tool.source})"
                )
            self._tools[tool.name] = tool

    def remove_source(self, source: str) -> None:
        """Forget a source's tools (an MCP server that is restarting)."""
        self._tools = {n: t for n, t in self._tools.items() if t.source != source}

    def get(self, name: str) -> Tool | None:
        """The tool of that name, or ``None``."""
        return self._tools.get(name)

    def all(self) -> list[Tool]:
        """Every tool, by name."""
        return [self._tools[n] for n in sorted(self._tools)]

    def offered(self, patterns: Sequence[str]) -> list[Tool]:
        """The tools whose names match one of the glob ``patterns``, by name."""
        return [
            t
            for t in self.all()
            if any(fnmatch.fnmatchcase(t.name, p) for p in patterns)
        ]
