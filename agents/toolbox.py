"""The tools of one process: built from the settings, started on first use.

Workspace tools and the user's Python functions are ready at once; MCP
servers are started (and then supervised) the first time an agent needs its
tools, so a process that never converses never spawns one. A server that
cannot start is logged and left out: its tools are absent, and a model that
calls one is told so (recorded as a refused call), never the worker's end.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from agents.tools.registry import Tool, ToolRegistry
from blackboard.errors import ConfigError
from blackboard.runtime.config import McpServerSettings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agents.tools.mcp import McpServers
    from blackboard.runtime.config import Settings

__all__ = ["DEMO_MCP", "Toolbox", "artifacts_of", "with_demo_tools", "workspace_of"]

log = logging.getLogger("blackboard.tools")

DEMO_MCP = "orders"
"""The MCP server that ships with the project (the demo's orders service)."""


def with_demo_tools(settings: Settings) -> Settings:
    """Scripted settings get the demo's MCP server, unless one has its name.

    The bundled script's schema task consults it; a deployment with real
    models configures its own servers and gets nothing added. A scripted lane
    among real ones (``bb demo --real-local``) counts as scripted.
    """
    scripted = settings.scripted or any(
        lane.provider == "scripted" for lane in settings.lanes.values()
    )
    if not scripted or DEMO_MCP in settings.tools.mcp:
        return settings
    server = McpServerSettings(command="python", args=["-m", "agents.mcp_orders"])
    tools = msgspec.structs.replace(
        settings.tools, mcp={**settings.tools.mcp, DEMO_MCP: server}
    )
    return msgspec.structs.replace(settings, tools=tools)


class Toolbox:
    """Every tool the process offers, and where each goal's workspace is.

    Args:
        settings: The process settings (``[tools]``, the data dir).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = ToolRegistry()
        self.failures: dict[str, str] = {}
        """Tool sources that could not start, with why (MCP servers)."""
        self._mcp: McpServers | None = None
        self._started = False
        self._lock = asyncio.Lock()
        self.registry.add(self._local_tools())

    def _local_tools(self) -> list[Tool]:
        tools: list[Tool] = []
        if self.settings.tools.workspace:
            from agents.tools.workspace import workspace_tools

            tools.extend(workspace_tools())
        if self.settings.tools.python:
            from agents.tools.python import python_tools

            tools.extend(python_tools(self.settings.tools.python))
        return tools

    def workspace(self, goal_id: str) -> Path:
        """The goal's workspace directory (created by the first write)."""
        return workspace_of(self.settings, goal_id)

    async def start(self) -> None:
        """Start the MCP servers (once); a server that fails is left out."""
        async with self._lock:
            if self._started:
                return
            self._started = True
            if not self.settings.tools.mcp:
                return
            # The SDK takes over a second to import: in a thread, so the
            # scheduler and the other tasks sharing this loop go on meanwhile.
            await asyncio.to_thread(importlib.import_module, "agents.tools.mcp")
            from agents.tools.mcp import McpServers  # imported: at once
            servers = {
                name: _resolved(server)
                for name, server in self.settings.tools.mcp.items()
            }
            self._mcp = McpServers(servers)
            await self._mcp.start()
            self.failures.update(self._mcp.failures)
            for name, why in self._mcp.failures.items():
                log.warning("MCP server %s is not available: %s", name, why)
            self.registry.add(self._mcp.tools())

    async def offered(self, patterns: Sequence[str]) -> list[Tool]:
        """The tools matching the lane's patterns, servers started first."""
        if not patterns:
            return []
        await self.start()
        return self.registry.offered(patterns)

    async def aclose(self) -> None:
        """Stop the MCP servers this process started."""
        if self._mcp is not None:
            await self._mcp.aclose()
            self._mcp = None


def known_effects(settings: Settings) -> dict[str, str]:
    """Effect classes of the tools known without starting a server, by name."""
    return {t.name: t.effect for t in Toolbox(settings).registry.all()}


def workspace_of(settings: Settings, goal_id: str) -> Path:
    """A goal's workspace: ``[tools] workspace_dir`` (or the data dir's) / goal."""
    configured = settings.tools.workspace_dir
    root = Path(configured) if configured else Path(settings.data_dir) / "workspaces"
    return root / goal_id


def artifacts_of(settings: Settings, goal_id: str) -> Path:
    """Where the ``execute`` handler writes a goal's artifacts.

    It writes them when its agent cannot (the lane offers no ``workspace.write``).
    """
    return Path(settings.data_dir) / "artifacts" / goal_id


def _resolved(server: McpServerSettings) -> McpServerSettings:
    """``python`` as a server's command means this interpreter."""
    if server.command == "python":
        return msgspec.structs.replace(server, command=sys.executable)
    if server.command is not None and not server.command.strip():
        raise ConfigError("an MCP server's command is empty")
    return server
