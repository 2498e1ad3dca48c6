"""Tools agents act through: the registry and its three sources.

- :mod:`agents.tools.registry`: :class:`Tool`, effect classes, the registry.
- :mod:`agents.tools.workspace`: read, write, list and search files in the
  goal's workspace, confined to it.
- :mod:`agents.tools.python`: the user's Python functions, schema from their
  signature.
- :mod:`agents.tools.mcp`: MCP servers' tools, through the official SDK.
"""

from agents.tools.python import python_tool, python_tools, tool
from agents.tools.registry import (
    EFFECTS,
    Effect,
    Invocation,
    Tool,
    ToolError,
    ToolRefused,
    ToolRegistry,
)
from agents.tools.workspace import workspace_tools

__all__ = [
    "EFFECTS",
    "Effect",
    "Invocation",
    "Tool",
    "ToolError",
    "ToolRefused",
    "ToolRegistry",
    "python_tool",
    "python_tools",
    "tool",
    "workspace_tools",
]
