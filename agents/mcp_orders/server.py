"""The orders service's description as MCP tools, built with the SDK's server.

Every tool only reads ``orders_service.json`` and says so (``readOnlyHint``),
so a client may run any call again after a failure. A question the data cannot
answer (an unknown path) is a tool error whose message helps the model ask a
better one, not a protocol error.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
from importlib import resources
from typing import Annotated, Any, Final, Literal

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

__all__ = [
    "READ_ONLY",
    "build_server",
    "describe_service",
    "get_handler",
    "list_endpoints",
]

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]

READ_ONLY: Final = ToolAnnotations(
    read_only_hint=True,
    destructive_hint=False,
    idempotent_hint=True,
    open_world_hint=False,
)
"""What every tool here declares: it reads a fixed document and nothing else."""

_SUMMARY_FIELDS: Final = ("id", "method", "path", "handler", "module", "writes")


@functools.cache
def _service() -> dict[str, Any]:
    """The description, read once from the package's data."""
    text = (
        resources.files("agents.mcp_orders")
        .joinpath("orders_service.json")
        .read_text(encoding="utf-8")
    )
    data: dict[str, Any] = json.loads(text)
    return data


def describe_service() -> dict[str, Any]:
    """Describe the orders service and its conventions.

    Its stack and layout, how it logs today, where a request's actor and tenant
    come from, and which fields are PII or secret. Endpoints are listed by
    list_endpoints and detailed by get_handler.
    """
    service = {k: v for k, v in _service().items() if k != "endpoints"}
    endpoints = _service()["endpoints"]
    service["endpoint_count"] = len(endpoints)
    service["write_endpoint_count"] = sum(1 for e in endpoints if e["writes"])
    return copy.deepcopy(service)


def list_endpoints(
    method: Annotated[
        Method | None, Field(description="Only endpoints of this HTTP method.")
    ] = None,
    writes: Annotated[
        bool | None,
        Field(description="true: only endpoints that write; false: only reads."),
    ] = None,
) -> dict[str, Any]:
    """List the orders service's HTTP endpoints.

    Each with its method, path, handler function, module, and whether it
    writes. A write endpoint's id names it in the plan (post-orders); read
    endpoints have none.
    """
    found = [
        {k: e[k] for k in _SUMMARY_FIELDS}
        for e in _service()["endpoints"]
        if (method is None or e["method"] == method)
        and (writes is None or e["writes"] == writes)
    ]
    return {"service": _service()["name"], "count": len(found), "endpoints": found}


def get_handler(
    path: Annotated[
        str,
        Field(description="The route as listed, e.g. /orders/{id}/status."),
    ],
    method: Annotated[Method, Field(description="The HTTP method.")],
) -> dict[str, Any]:
    """Detail the handler of one endpoint.

    Its file and line, signature, auth guard, the tables it writes, its
    transaction block, what it logs today, the sensitive fields of its payload,
    and notes that matter for an audit event.
    """
    wanted = path.strip().rstrip("/") or "/"
    for endpoint in _service()["endpoints"]:
        if endpoint["path"] == wanted and endpoint["method"] == method:
            return copy.deepcopy(endpoint)
    same_path = sorted(
        e["method"] for e in _service()["endpoints"] if e["path"] == wanted
    )
    if same_path:
        raise ToolError(
            f"{wanted} has no {method} handler; its methods are {', '.join(same_path)}"
        )
    raise ToolError(
        f"the orders service has no endpoint {method} {wanted}; list_endpoints"
        " lists them (paths are written like /orders/{id})"
    )


def build_server() -> MCPServer:
    """The server with its three tools, every one declared read-only."""
    server = MCPServer(
        "orders",
        version="1.0.0",
        instructions=(
            "Read-only facts about the orders service: describe_service for its"
            " conventions, list_endpoints and get_handler for its routes."
        ),
        # Stdio servers write their log to the client's stderr: only problems.
        log_level="WARNING",
    )
    for fn in (describe_service, list_endpoints, get_handler):
        server.add_tool(fn, description=inspect.getdoc(fn), annotations=READ_ONLY)
    return server
