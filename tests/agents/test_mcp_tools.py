"""MCP servers' tools against real server processes, over stdio and HTTP.

The shipped orders server (agents/mcp_orders) runs as a subprocess, over stdio
and over streamable HTTP on a free loopback port; mcp_annotated_server.py
beside this file gives tools of every annotation and every result shape.
Crashes are real: the server process is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agents.tools.mcp import McpServers
from agents.tools.registry import Invocation, Tool, ToolError, ToolRegistry
from blackboard.runtime.config import McpServerSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ANNOTATED = Path(__file__).with_name("mcp_annotated_server.py")
ORDERS_TOOLS = {
    "orders.describe_service",
    "orders.get_handler",
    "orders.list_endpoints",
}
ORDERS_COMMAND = (sys.executable, "-m", "agents.mcp_orders")
CALL = Invocation(goal_id="g1", task_id="t1", workspace=Path("workspace"))


def _plan_endpoints() -> dict[str, str]:
    """The demo plan's write endpoints, ``{task id: "METHOD /path"}``."""
    demo = json.loads((ROOT / "agents/scripts/demo.json").read_text())
    plan = json.loads(demo["rules"][0]["reply"])
    prefix = "add audit logging to "
    return {
        t["id"]: t["title"].removeprefix(prefix)
        for t in plan["tasks"]
        if t["title"].startswith(prefix)
    }


def _stdio(**kw: Any) -> McpServerSettings:
    return McpServerSettings(command="python", args=["-m", "agents.mcp_orders"], **kw)


def _children(marker: str) -> list[int]:
    """This process's child processes whose command line contains ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            # The parent pid is the 2nd field after the ")" closing the name.
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == os.getpid() and marker.encode() in cmdline:
            found.append(int(proc.name))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # dead; a zombie only waits to be reaped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class HttpOrders:
    """The orders server over streamable HTTP, as a process on a fixed port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it, and wait until it accepts connections."""
        self.proc = subprocess.Popen(
            [*ORDERS_COMMAND, "--transport", "http", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the HTTP server exited"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.1)
            else:
                return
        raise AssertionError("the HTTP server did not listen within 30 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def http_orders() -> Iterator[HttpOrders]:
    server = HttpOrders(_free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def orders_stdio() -> AsyncIterator[McpServers]:
    async with McpServers({"orders": _stdio()}) as servers:
        yield servers


def _by_name(servers: McpServers) -> dict[str, Tool]:
    return {t.name: t for t in servers.tools()}


async def _call(servers: McpServers, tool: str, /, **args: Any) -> Any:
    return await _by_name(servers)[tool].run(CALL, args)


# The shipped server over stdio.


async def test_stdio_tools_are_listed_as_read_tools(orders_stdio):
    assert orders_stdio.failures == {}
    assert orders_stdio.status() == {"orders": "up"}
    tools = _by_name(orders_stdio)
    assert set(tools) == ORDERS_TOOLS
    for tool in tools.values():
        assert tool.effect == "read"
        assert tool.source == "mcp:orders"
        assert tool.compensate is None
        assert tool.description
        assert tool.input_schema["type"] == "object"
    handler = tools["orders.get_handler"].input_schema
    assert set(handler["required"]) == {"path", "method"}
    assert "POST" in handler["properties"]["method"]["enum"]
    # What the registry makes of them.
    registry = ToolRegistry()
    registry.add(orders_stdio.tools())
    assert {t.name for t in registry.offered(["orders.*"])} == ORDERS_TOOLS
    listed = registry.get("orders.list_endpoints")
    assert listed is not None
    assert listed.describe()["effect"] == "read"


async def test_stdio_calls_return_the_data(orders_stdio):
    writes = await _call(orders_stdio, "orders.list_endpoints", writes=True)
    assert writes["count"] == 20
    assert {e["id"]: f"{e['method']} {e['path']}" for e in writes["endpoints"]} == (
        _plan_endpoints()
    )
    deletes = await _call(orders_stdio, "orders.list_endpoints", method="DELETE")
    assert {e["method"] for e in deletes["endpoints"]} == {"DELETE"}

    handler = await _call(
        orders_stdio, "orders.get_handler", path="/orders/{id}/status", method="PATCH"
    )
    assert handler["handler"] == "update_order_status"
    assert handler["writes"] is True

    service = await _call(orders_stdio, "orders.describe_service")
    assert service["name"] == "orders"
    assert service["write_endpoint_count"] == 20
    assert "request.state.tenant_id" in service["tenant"]["source"]
    assert any(f["field"] == "payments.card_number" for f in service["pii_fields"])


async def test_an_error_result_is_a_tool_error(orders_stdio):
    with pytest.raises(ToolError, match="no endpoint GET /nope"):
        await _call(orders_stdio, "orders.get_handler", path="/nope", method="GET")
    # Arguments the schema refuses: the server's validation, as a ToolError.
    with pytest.raises(ToolError, match="method"):
        await _call(orders_stdio, "orders.get_handler", path="/orders", method="FETCH")
    # Neither is a crash: the server carries on.
    assert orders_stdio.status() == {"orders": "up"}
    assert (await _call(orders_stdio, "orders.describe_service"))["name"] == "orders"


async def test_a_killed_stdio_server_fails_one_call_then_is_restarted(orders_stdio):
    (pid,) = _children("agents.mcp_orders")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not _gone(pid):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)

    with pytest.raises(ToolError, match=r"'orders' failed .*being restarted"):
        await _call(orders_stdio, "orders.describe_service")
    # The next call waits for the restart under way and succeeds.
    assert (await _call(orders_stdio, "orders.describe_service"))["name"] == "orders"
    assert orders_stdio.status() == {"orders": "up"}
    assert orders_stdio.failures == {}  # a crash is no startup failure
    (new_pid,) = _children("agents.mcp_orders")
    assert new_pid != pid


async def test_a_server_that_cannot_start_is_reported_not_raised(caplog):
    servers = McpServers(
        {
            "ghost": McpServerSettings(command="no-such-mcp-server-xyz"),
            "orders": _stdio(),
            "refused": McpServerSettings(url=f"http://127.0.0.1:{_free_port()}/mcp"),
        }
    )
    async with servers:
        assert set(servers.failures) == {"ghost", "refused"}
        ghost = servers.failures["ghost"]
        assert "\n" not in ghost
        assert "'ghost' (no-such-mcp-server-xyz) did not start" in ghost
        assert "No such file or directory" in ghost
        assert "ConnectError" in servers.failures["refused"]
        assert servers.status() == {
            "ghost": "failed",
            "orders": "up",
            "refused": "failed",
        }
        # Its tools are just absent; the other server works.
        assert {t.name for t in servers.tools()} == ORDERS_TOOLS
        assert (await _call(servers, "orders.describe_service"))["name"] == "orders"
    assert "ghost (no-such-mcp-server-xyz) did not start" in caplog.text


async def test_closing_stops_the_stdio_processes():
    async with McpServers({"a": _stdio(), "b": _stdio()}) as servers:
        assert len(_children("agents.mcp_orders")) == 2
    assert servers.status() == {"a": "closed", "b": "closed"}
    assert _children("agents.mcp_orders") == []
    with pytest.raises(ToolError, match="not running"):
        await servers.tools()[0].run(CALL, {})


# The shipped server over streamable HTTP.


async def test_http_tools_and_calls(http_orders):
    async with McpServers({"orders": McpServerSettings(url=http_orders.url)}) as s:
        assert s.failures == {}
        tools = _by_name(s)
        assert set(tools) == ORDERS_TOOLS
        assert {t.effect for t in tools.values()} == {"read"}
        assert tools["orders.list_endpoints"].input_schema["type"] == "object"
        reads = await _call(s, "orders.list_endpoints", writes=False)
        assert reads["count"] > 0
        assert not any(e["writes"] for e in reads["endpoints"])
        with pytest.raises(ToolError, match="has no PUT handler"):
            await _call(s, "orders.get_handler", path="/refunds", method="PUT")


async def test_http_server_restarted_between_calls(http_orders):
    """The server forgot our session: the call fails, the client starts anew."""
    async with McpServers({"orders": McpServerSettings(url=http_orders.url)}) as s:
        assert (await _call(s, "orders.describe_service"))["name"] == "orders"
        http_orders.kill()
        http_orders.start()
        with pytest.raises(ToolError, match=r"'orders' failed .*being restarted"):
            await _call(s, "orders.describe_service")
        assert (await _call(s, "orders.describe_service"))["name"] == "orders"


async def test_http_server_down_then_back(http_orders):
    async with McpServers({"orders": McpServerSettings(url=http_orders.url)}) as s:
        http_orders.kill()
        with pytest.raises(ToolError, match=r"'orders' failed .*being restarted"):
            await _call(s, "orders.describe_service")
        http_orders.start()
        # Reconnections back off while they fail; calls meanwhile fail fast.
        deadline = time.monotonic() + 30
        errors = []
        while True:
            try:
                answer = await _call(s, "orders.describe_service")
            except ToolError as e:
                errors.append(str(e))
                assert time.monotonic() < deadline, s.status()
                await asyncio.sleep(0.2)
            else:
                break
        assert all("being restarted" in e for e in errors), errors
        assert answer["name"] == "orders"
        assert s.status() == {"orders": "up"}


# Annotations and result shapes, from a server made for it.


@pytest.fixture
async def annotated() -> AsyncIterator[McpServers]:
    settings = McpServerSettings(
        command="python",
        args=[str(ANNOTATED)],
        env={"MCP_TEST_VARIABLE": "set by the settings"},
        cwd=str(ANNOTATED.parent),
        timeout_s=2,
    )
    async with McpServers({"t": settings}) as servers:
        assert servers.failures == {}
        yield servers


async def test_effects_follow_the_annotations(annotated):
    effects = {t.name: t.effect for t in annotated.tools()}
    assert effects == {
        "t.look": "read",  # readOnlyHint true
        "t.fail": "read",
        "t.slow": "read",
        "t.environment": "read",
        "t.drop": "irreversible",  # destructiveHint true
        "t.upsert": "irreversible",  # additive and idempotent: still not undoable
        "t.titled": "irreversible",  # annotations without hints
        "t.plain": "irreversible",  # no annotations
        "t.picture": "irreversible",
    }


async def test_result_shapes(annotated):
    assert await _call(annotated, "t.look") == {"seen": True}
    assert await _call(annotated, "t.upsert", key="k", value="v") == {"k": "v"}
    assert await _call(annotated, "t.plain", words=["one", "two"]) == "one\ntwo"
    text, image = await _call(annotated, "t.picture")
    assert text == {"type": "text", "text": "a red dot"}
    assert image["type"] == "image"
    assert image["mimeType"] == "image/png"
    json.dumps(await _call(annotated, "t.picture"))  # JSON-able
    with pytest.raises(ToolError, match="boom"):
        await _call(annotated, "t.fail", message="boom")


async def test_a_call_past_its_timeout_fails_and_the_server_stays(annotated):
    with pytest.raises(ToolError, match=r"t\.slow gave no answer within 2 s"):
        await _call(annotated, "t.slow", seconds=30)
    assert annotated.status() == {"t": "up"}
    # A str answer comes back structured, as the server's SDK wraps it.
    assert await _call(annotated, "t.slow", seconds=0) == {"result": "slept"}


async def test_stdio_environment_and_directory(annotated):
    seen = await _call(annotated, "t.environment", name="MCP_TEST_VARIABLE")
    assert seen == {"value": "set by the settings", "cwd": str(ANNOTATED.parent)}
    # The worker's own environment is inherited too.
    path = await _call(annotated, "t.environment", name="PATH")
    assert path["value"] == os.environ["PATH"]
