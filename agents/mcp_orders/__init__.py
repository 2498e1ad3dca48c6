"""An MCP server describing the demo's orders service, read-only.

The demo goal adds structured audit logging to every write endpoint of an
"orders service" that exists only as data: ``orders_service.json`` beside this
module lists its endpoints (the 20 writes are exactly those the demo plan
names) and how it logs, authenticates and handles PII. This package serves
that description over MCP, so agents can look it up through a real tool
server instead of having it pasted into their prompts::

    python -m agents.mcp_orders                      # stdio
    python -m agents.mcp_orders --transport http --port 8765   # /mcp on 127.0.0.1

and in ``bb.toml``::

    [tools.mcp.orders]
    command = "python"
    args = ["-m", "agents.mcp_orders"]
"""

from agents.mcp_orders.server import build_server

__all__ = ["build_server"]
