"""The MCP pieces that need no server process: effects from annotations, what a
call result becomes, settings checks, and the orders server's data and tools
called in-process."""

from __future__ import annotations

import json
from pathlib import Path

import mcp.types as mcp_types
import pytest
from mcp.server.mcpserver.exceptions import ToolError as ServerToolError

from agents.mcp_orders import build_server
from agents.mcp_orders.server import describe_service, get_handler, list_endpoints
from agents.tools.mcp import McpServers, _result, effect_of
from agents.tools.registry import ToolError
from blackboard.errors import ConfigError
from blackboard.runtime.config import McpServerSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("annotations", "effect"),
    [
        (None, "irreversible"),
        (mcp_types.ToolAnnotations(), "irreversible"),
        (mcp_types.ToolAnnotations(title="no hints"), "irreversible"),
        (mcp_types.ToolAnnotations(read_only_hint=True), "read"),
        (
            mcp_types.ToolAnnotations(read_only_hint=True, destructive_hint=True),
            "read",  # destructiveHint means nothing when read-only
        ),
        (mcp_types.ToolAnnotations(read_only_hint=False), "irreversible"),
        (mcp_types.ToolAnnotations(destructive_hint=True), "irreversible"),
        (
            mcp_types.ToolAnnotations(destructive_hint=False, idempotent_hint=True),
            "irreversible",  # safe to repeat is not undoable
        ),
        (mcp_types.ToolAnnotations(open_world_hint=False), "irreversible"),
    ],
)
def test_effect_of(annotations, effect):
    assert effect_of(annotations) == effect


def _text(text: str) -> mcp_types.TextContent:
    return mcp_types.TextContent(type="text", text=text)


def test_result_shapes():
    structured = mcp_types.CallToolResult(
        content=[_text("{}")], structured_content={"a": 1}
    )
    assert _result("s.t", structured) == {"a": 1}
    text = mcp_types.CallToolResult(content=[_text("one"), _text("two")])
    assert _result("s.t", text) == "one\ntwo"
    image = mcp_types.ImageContent(type="image", data="AAAA", mime_type="image/png")
    mixed = mcp_types.CallToolResult(content=[_text("see"), image])
    assert _result("s.t", mixed) == [
        {"type": "text", "text": "see"},
        {"type": "image", "data": "AAAA", "mimeType": "image/png"},
    ]
    assert _result("s.t", mcp_types.CallToolResult(content=[])) == ""


def test_an_error_result_raises_its_text():
    error = mcp_types.CallToolResult(
        content=[_text("no such order")], structured_content={"x": 1}, is_error=True
    )
    with pytest.raises(ToolError, match=r"^no such order$"):
        _result("s.t", error)
    with pytest.raises(ToolError, match=r"s\.t failed \(the server gave no text\)"):
        _result("s.t", mcp_types.CallToolResult(content=[], is_error=True))


@pytest.mark.parametrize(
    "settings",
    [McpServerSettings(), McpServerSettings(command="x", url="http://h/mcp")],
)
def test_a_server_needs_a_command_or_a_url(settings):
    with pytest.raises(ConfigError, match=r"\[tools.mcp.bad\]"):
        McpServers({"bad": settings})


def test_nothing_started_has_no_tools():
    servers = McpServers({"a": McpServerSettings(command="python")})
    assert servers.tools() == []
    assert servers.failures == {}
    assert servers.status() == {"a": "idle"}


# The shipped orders server, called in-process.


def test_the_write_endpoints_are_the_demo_plans():
    demo = json.loads((ROOT / "agents/scripts/demo.json").read_text())
    plan = json.loads(demo["rules"][0]["reply"])
    prefix = "add audit logging to "
    planned = {
        t["id"]: t["title"].removeprefix(prefix)
        for t in plan["tasks"]
        if t["title"].startswith(prefix)
    }
    writes = list_endpoints(writes=True)
    assert writes["count"] == len(planned) == 20
    assert {e["id"]: f"{e['method']} {e['path']}" for e in writes["endpoints"]} == (
        planned
    )
    reads = list_endpoints(writes=False)["endpoints"]
    assert reads
    assert all(e["id"] is None and e["method"] == "GET" for e in reads)
    # Every endpoint is detailed, by its own method and path.
    for e in list_endpoints()["endpoints"]:
        assert get_handler(e["path"], e["method"])["handler"] == e["handler"]


def test_describe_service():
    service = describe_service()
    assert service["name"] == "orders"
    assert service["write_endpoint_count"] == 20
    assert "endpoints" not in service
    for key in ("framework", "logging", "actor", "tenant", "pii_fields"):
        assert service[key]
    # The answer is a copy: a caller cannot change the next one.
    service["actor"]["helper"] = "changed"
    assert describe_service()["actor"]["helper"] != "changed"


def test_get_handler_errors_help_the_model():
    assert get_handler("/orders/{id}/", "PUT")["handler"] == "replace_order"
    with pytest.raises(ServerToolError, match="methods are DELETE, GET, PUT"):
        get_handler("/orders/{id}", "POST")
    with pytest.raises(ServerToolError, match="no endpoint GET /nope; list_endpoints"):
        get_handler("/nope", "GET")


async def test_every_shipped_tool_is_read_only():
    tools = await build_server().list_tools()
    assert {t.name for t in tools} == {
        "describe_service",
        "get_handler",
        "list_endpoints",
    }
    for tool in tools:
        assert tool.annotations is not None
        assert tool.annotations.read_only_hint is True
        assert effect_of(tool.annotations) == "read"
        assert tool.description
        assert "Args:" not in tool.description
