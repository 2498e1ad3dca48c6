"""A tiny MCP server for test_mcp_tools.py, run as a stdio process.

Its tools carry each kind of annotation, and answer in each shape a result can
take (structured, text only, an image, an error), slowly when asked to.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Image
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer("annotated", log_level="WARNING")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def look() -> dict[str, Any]:
    """Read-only."""
    return {"seen": True}


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
def drop(name: str) -> str:
    """Destructive."""
    return f"dropped {name}"


@server.tool(
    annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=True
    )
)
def upsert(key: str, value: str) -> dict[str, str]:
    """Additive and idempotent, but not undoable."""
    return {key: value}


@server.tool(annotations=ToolAnnotations(title="Titled only"))
def titled() -> str:
    """Annotated, with no hints."""
    return "titled"


@server.tool(structured_output=False)
def plain(words: list[str]) -> list[str]:
    """No annotations; text content only."""
    return words


@server.tool(structured_output=False)
def picture() -> list[Any]:
    """Text and an image."""
    return ["a red dot", Image(data=b"\x89PNG\r\n\x1a\n", format="png")]


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def fail(message: str) -> str:
    """Always an error result."""
    raise ToolError(message)


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
async def slow(seconds: float) -> str:
    """Answers after a while."""
    await asyncio.sleep(seconds)
    return "slept"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def environment(name: str) -> dict[str, Any]:
    """A variable of the process's environment, and its working directory."""
    return {"value": os.environ.get(name), "cwd": os.getcwd()}


if __name__ == "__main__":
    server.run("stdio")
