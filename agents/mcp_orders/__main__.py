"""Run the orders MCP server: ``python -m agents.mcp_orders [--transport http]``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from agents.mcp_orders.server import build_server

if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """Serve over stdio (default), or streamable HTTP at ``/mcp`` on loopback."""
    parser = argparse.ArgumentParser(
        prog="python -m agents.mcp_orders", description=main.__doc__
    )
    parser.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    server = build_server()
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run(
            "streamable-http",
            host=args.host,
            port=args.port,
            streamable_http_path="/mcp",
        )


if __name__ == "__main__":
    main()
