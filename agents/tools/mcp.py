"""MCP servers' tools, through the official SDK (``mcp`` 2.x).

:class:`McpServers` starts (stdio) or connects to (streamable HTTP) every server
of ``[tools.mcp]``, lists its tools and offers each as a registry
:class:`~agents.tools.registry.Tool` named ``<server>.<tool>``, from source
``mcp:<server>``::

    async with McpServers(settings.tools.mcp) as servers:
        registry.add(servers.tools())
        for message in servers.failures.values():
            ...  # show or record it: those servers' tools are absent

Effects come from the tool's annotations, which MCP calls hints:

- ``readOnlyHint: true`` is ``read``: the call changes nothing, so a call cut
  short by a dying worker is simply made again.
- Anything else, annotated or not, is ``irreversible``. ``reversible`` means a
  compensator undoes the call, and MCP has no way to offer one;
  ``destructiveHint: false`` (additive only) and ``idempotentHint: true``
  (safe to repeat) say how a call changes the world, not how to take it back.

The hints are the server's word. A configured server is one the operator
chose, so its word is taken; a tool it wrongly calls read-only can be run twice.

One task per server (its supervisor) owns the server's transport and session:
the SDK's anyio cancel scopes must be entered and left in the same task, so no
caller ever enters or leaves them. Calls go through the session from any task.

What can go wrong, and what it becomes (nothing else leaves this module: a
call raises only :class:`~agents.tools.registry.ToolError`, the constructor
only :class:`~blackboard.errors.ConfigError`):

- A server that does not start (no such command, refused connection, no
  answer within :data:`START_TIMEOUT_S`) is logged in one line and kept in
  :attr:`McpServers.failures`; it is not retried and its tools are absent.
- A server that dies after it started (a stdio process killed, an HTTP
  connection refused or its session forgotten) fails the call that finds it
  with a ToolError saying so, which the caller records. (Nothing polls: a
  stdio server that dies between calls is found by the next call.) The
  supervisor reconnects at once; if that fails too, again after 0.5 s,
  doubling up to 30 s, for as long as the process runs. A call made while a
  reconnection is under way waits for it; one made during a backoff fails at
  once. The tools keep their names across restarts.
- A call with no answer within the server's ``timeout_s`` fails; the server is
  kept. A tool's own error (``isError``) fails the call with the tool's text.

Recording is the caller's: this module writes no events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import httpx2
import mcp.types as mcp_types
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from agents.tools.registry import Tool, ToolError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType
    from typing import Self, TextIO

    from agents.tools.registry import Effect, Invocation
    from blackboard.runtime.config import McpServerSettings

__all__ = [
    "BACKOFF_FIRST_S",
    "BACKOFF_MAX_S",
    "HEALTHY_S",
    "START_TIMEOUT_S",
    "McpServers",
    "effect_of",
]

log = logging.getLogger("blackboard.tools")

_CLIENT_INFO: Final = mcp_types.Implementation(name="blackboard", version="0.1.0")

BACKOFF_FIRST_S: Final = 0.5
"""The wait before the second reconnection in a row (the first is immediate)."""
BACKOFF_MAX_S: Final = 30.0
"""The longest wait between two reconnections."""
HEALTHY_S: Final = 10.0
"""A session that lived this long ends a run of failures: the next
reconnection is immediate again."""
START_TIMEOUT_S: Final = 30.0
"""Seconds a server has to start and answer ``initialize`` and ``tools/list``
(or its ``timeout_s``, if longer): an interpreter and an SDK take a while."""
_MAX_PAGES: Final = 100
"""Pages of ``tools/list`` read at most (a server that never stops paging)."""

# What a call raises when the transport under the session is gone: the SDK
# reports most of them as CONNECTION_CLOSED, these are the rest.
_CONNECTION_ERRORS: Final = (
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    OSError,
    httpx2.TransportError,
)

_State = Literal["idle", "connecting", "up", "backoff", "failed", "closed"]


def effect_of(annotations: mcp_types.ToolAnnotations | None) -> Effect:
    """The registry effect of an MCP tool with these annotations.

    ``read`` only for ``readOnlyHint: true``; everything else, missing
    annotations included, is ``irreversible`` (the module docstring says why).
    """
    if annotations is not None and annotations.read_only_hint is True:
        return "read"
    return "irreversible"


def _reason(exc: BaseException) -> str:
    """One line saying what went wrong, from an exception or a group of them."""
    if isinstance(exc, BaseExceptionGroup):
        parts = [
            _reason(e)
            for e in exc.exceptions
            if not isinstance(e, asyncio.CancelledError)
        ]
        return "; ".join(dict.fromkeys(parts)) or "cancelled"
    if isinstance(exc, MCPError):
        if exc.code == mcp_types.CONNECTION_CLOSED:
            return "the connection closed"
        return exc.message
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _result(tool: str, result: mcp_types.CallToolResult) -> Any:
    """What a call returns: structured content, else text, else content blocks.

    Raises:
        ToolError: The tool reported an error (``isError``); its text.
    """
    texts = [b.text for b in result.content if isinstance(b, mcp_types.TextContent)]
    if result.is_error:
        raise ToolError("\n".join(texts) or f"{tool} failed (the server gave no text)")
    if result.structured_content is not None:
        return result.structured_content
    if len(texts) == len(result.content):
        return "\n".join(texts)
    return [
        b.model_dump(mode="json", by_alias=True, exclude_none=True)
        for b in result.content
    ]


class _Server:
    """One configured server, its supervisor task and its current session."""

    def __init__(
        self, name: str, settings: McpServerSettings, errlog: TextIO | None
    ) -> None:
        self.name = name
        self.settings = settings
        self._errlog = errlog
        self.state: _State = "idle"
        self.session: ClientSession | None = None
        self.listing: list[mcp_types.Tool] = []
        self.failure: str | None = None
        """Why the server never started (it is then not retried)."""
        self.last_error: str | None = None
        """Why the server last went down."""
        self.listed = False
        """Whether the server ever came up (its tools are known)."""
        self.restarts = 0
        self._up_since: float | None = None
        self._settled = asyncio.Event()
        """Set while no connection attempt is under way."""
        self._broken = asyncio.Event()
        """Set by a call that found the session dead, or by :meth:`close`."""
        self._broken_reason: str | None = None
        self._stop = asyncio.Event()
        self._scope: anyio.CancelScope | None = None
        self._task: asyncio.Task[None] | None = None
        self._retry_at = 0.0

    @property
    def where(self) -> str:
        """The server as its settings name it, for messages."""
        if self.settings.url is not None:
            return self.settings.url
        return " ".join([self.settings.command or "", *self.settings.args])

    def _set_state(self, state: _State) -> None:
        self.state = state
        if state == "connecting":
            self._settled.clear()
        else:
            self._settled.set()

    # The supervisor: the only task that enters or leaves the SDK's contexts.

    def start(self) -> None:
        """Start the supervisor, which connects at once."""
        self._set_state("connecting")
        self._task = asyncio.create_task(
            self._supervise(), name=f"mcp server {self.name}"
        )

    async def started(self) -> None:
        """Wait until the first connection attempt has succeeded or failed."""
        await self._settled.wait()

    async def _supervise(self) -> None:
        """Connect, serve until the session dies, reconnect with a backoff."""
        try:
            await self._run()
        except Exception:  # a bug here: say so once, and keep the process
            log.exception("MCP server %s: its supervisor stopped", self.name)
        finally:
            self.session = None
            if self.state != "failed":
                self._set_state("closed")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        short_lived = 0  # sessions in a row that failed to come up or died young
        while not self._stop.is_set():
            self._broken.clear()
            self._broken_reason = None
            self._up_since = None
            try:
                await self._serve()
                reason = None
            except Exception as exc:  # whatever the transport raised
                reason = _reason(exc)
            finally:
                self.session = None
            if self._stop.is_set():
                return
            reason = reason or self._broken_reason or "the session ended"
            if not self.listed:
                self.failure = reason
                self._set_state("failed")
                log.warning(
                    "MCP server %s (%s) did not start: %s",
                    self.name,
                    self.where,
                    reason,
                )
                return
            self.last_error = reason
            lived = 0.0 if self._up_since is None else loop.time() - self._up_since
            short_lived = 0 if lived >= HEALTHY_S else short_lived + 1
            # The first reconnection in a row is immediate: a server that was
            # killed once is most likely fine when started again.
            delay = (
                0.0
                if short_lived <= 1
                else min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (short_lived - 2))
            )
            self.restarts += 1
            log.warning(
                "MCP server %s failed (%s); restarting it%s",
                self.name,
                reason,
                f" in {delay:g} s" if delay else "",
            )
            if delay:
                self._retry_at = loop.time() + delay
                self._set_state("backoff")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()  # close() cuts the wait short
            self._set_state("connecting")

    async def _serve(self) -> None:
        """Connect, list the tools, and hold the session until it is given up.

        Raises:
            Exception: Whatever connecting, initializing or listing raised, or
                what the transport raised while the session was up.
        """
        s = self.settings
        limit = max(s.timeout_s, START_TIMEOUT_S)
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._stop.is_set():
                    scope.cancel()
                # Entered and left in this task, inside this scope: the SDK's
                # scopes nest properly, and close() cancels them all at once.
                async with contextlib.AsyncExitStack() as stack:
                    if s.url is not None:
                        # The SDK's defaults; a server may hold a stream open long.
                        client = await stack.enter_async_context(
                            httpx2.AsyncClient(
                                headers=dict(s.headers),
                                timeout=httpx2.Timeout(30.0, read=300.0),
                            )
                        )
                        transport = streamable_http_client(s.url, http_client=client)
                    else:
                        transport = stdio_client(
                            self._stdio_parameters(), errlog=self._errlog or sys.stderr
                        )
                    read, write = await stack.enter_async_context(transport)
                    session = await stack.enter_async_context(
                        ClientSession(
                            read,
                            write,
                            read_timeout_seconds=limit,
                            client_info=_CLIENT_INFO,
                        )
                    )
                    try:
                        with anyio.fail_after(limit):
                            await session.initialize()
                            listing = await _list_tools(session)
                    except TimeoutError:
                        raise TimeoutError(f"no answer within {limit:g} s") from None
                    self._adopt(session, listing)
                    await self._broken.wait()
        finally:
            self._scope = None

    def _stdio_parameters(self) -> StdioServerParameters:
        s = self.settings
        command = sys.executable if s.command == "python" else s.command
        assert command is not None  # McpServers checked the settings
        return StdioServerParameters(
            command=command,
            args=list(s.args),
            # The settings promise the worker's environment plus these.
            env={**os.environ, **s.env},
            cwd=s.cwd,
        )

    def _adopt(self, session: ClientSession, listing: list[mcp_types.Tool]) -> None:
        """Serve calls through a new session."""
        if self.listing and {t.name for t in listing} != {t.name for t in self.listing}:
            log.warning(
                "MCP server %s offers other tools since its restart: %s",
                self.name,
                ", ".join(sorted(t.name for t in listing)),
            )
        self.session = session
        self.listing = listing
        self.listed = True
        self._up_since = asyncio.get_running_loop().time()
        self._set_state("up")
        if self.restarts:
            log.info("MCP server %s is back (restart %d)", self.name, self.restarts)

    # Calls, from any task.

    async def call(self, tool: str, args: dict[str, Any]) -> Any:
        """Call one of the server's tools; see the module docstring for failures.

        A reconnection under way is waited for (it has :data:`START_TIMEOUT_S`).
        """
        session = await self._session()
        timeout = self.settings.timeout_s
        try:
            result = await session.call_tool(tool, args, read_timeout_seconds=timeout)
        except MCPError as exc:
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                raise ToolError(
                    f"{self.name}.{tool} gave no answer within {timeout:g} s"
                ) from exc
            if exc.code == mcp_types.CONNECTION_CLOSED or _session_gone(exc):
                raise self._went_down(session, _reason(exc)) from exc
            raise ToolError(
                f"MCP server {self.name!r} refused the call: {exc.message}"
            ) from exc
        except _CONNECTION_ERRORS as exc:
            raise self._went_down(session, _reason(exc)) from exc
        except Exception as exc:  # the SDK's checks of the answer, and the rest
            raise ToolError(
                f"the call to {self.name}.{tool} failed: {_reason(exc)}"
            ) from exc
        return _result(f"{self.name}.{tool}", result)

    async def _session(self) -> ClientSession:
        """The live session, after waiting for a reconnection under way."""
        if self.state == "connecting":
            # An attempt ends within its own bound; this one is a safety net.
            limit = max(self.settings.timeout_s, START_TIMEOUT_S) + 5.0
            try:
                async with asyncio.timeout(limit):
                    await self._settled.wait()
            except TimeoutError:
                raise ToolError(
                    f"MCP server {self.name!r} is being restarted and was not back"
                    f" within {limit:g} s"
                ) from None
        if self.state == "up" and self.session is not None:
            return self.session
        if self.state == "backoff":
            wait = max(0.0, self._retry_at - asyncio.get_running_loop().time())
            raise ToolError(
                f"MCP server {self.name!r} is down ({self.last_error}); it is being"
                f" restarted (next attempt in {wait:.1f} s)"
            )
        if self.state == "failed":
            raise ToolError(f"MCP server {self.name!r} did not start: {self.failure}")
        raise ToolError(f"MCP server {self.name!r} is not running")

    def _went_down(self, session: ClientSession, reason: str) -> ToolError:
        """Have the supervisor restart a dead session; the error for the call."""
        if self._stop.is_set():
            return ToolError(f"MCP server {self.name!r} was shut down")
        if self.session is session and not self._broken.is_set():
            self._broken_reason = reason
            # Callers wait for the restart rather than fail on a dead session.
            self._set_state("connecting")
            self._broken.set()
        return ToolError(
            f"MCP server {self.name!r} failed ({reason}); it is being restarted"
        )

    async def close(self) -> None:
        """Stop the supervisor; a stdio server's process is stopped with it."""
        self._stop.set()
        self._broken.set()
        if self._scope is not None:
            self._scope.cancel()
        if self._task is not None:
            # The SDK bounds a stdio server's shutdown (about 6 s at worst).
            done, _ = await asyncio.wait({self._task}, timeout=15)
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task})
        if self.state != "failed":
            self._set_state("closed")


def _session_gone(exc: MCPError) -> bool:
    """Whether an HTTP server said it no longer knows our session.

    The spec answers a forgotten ``Mcp-Session-Id`` with HTTP 404, which the
    SDK hands over as an INVALID_REQUEST error ("Session not found" from the
    server's body, or its own "Session terminated"); the client must start a
    new session.
    """
    return exc.code == mcp_types.INVALID_REQUEST and "session" in exc.message.lower()


async def _list_tools(session: ClientSession) -> list[mcp_types.Tool]:
    """Every tool of the server, page after page."""
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        page = await session.list_tools(
            params=None
            if cursor is None
            else mcp_types.PaginatedRequestParams(cursor=cursor)
        )
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


class McpServers:
    """The MCP servers of one process, their tools and their failures.

    Args:
        servers: ``[tools.mcp]``: the settings of each server, by name.
        errlog: Where stdio servers' stderr goes (default ``sys.stderr``);
            it must have a file descriptor.

    Raises:
        ConfigError: A server names both or neither of ``command`` and ``url``.
    """

    def __init__(
        self,
        servers: Mapping[str, McpServerSettings],
        *,
        errlog: TextIO | None = None,
    ) -> None:
        for name, settings in servers.items():
            settings.check(name)
        self._servers = {n: _Server(n, s, errlog) for n, s in servers.items()}
        self._started = False

    async def start(self) -> None:
        """Start or connect every server, and wait until each is up or failed.

        Never raises for a server that fails: see :attr:`failures`.
        """
        if self._started:
            return
        self._started = True
        for server in self._servers.values():
            server.start()
        await asyncio.gather(*(s.started() for s in self._servers.values()))

    async def aclose(self) -> None:
        """Disconnect from every server and stop the stdio ones."""
        await asyncio.gather(*(s.close() for s in self._servers.values()))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def tools(self) -> list[Tool]:
        """The tools of every server that started, as ``<server>.<tool>``.

        A server that restarts keeps its tools: each call goes to the session
        of the moment, by the tool's name.
        """
        return [
            _tool(server, listed)
            for server in self._servers.values()
            for listed in server.listing
        ]

    @property
    def failures(self) -> dict[str, str]:
        """Why each server that did not start failed, one line each, by name."""
        return {
            n: f"MCP server {n!r} ({s.where}) did not start: {s.failure}"
            for n, s in self._servers.items()
            if s.failure is not None
        }

    def status(self) -> dict[str, str]:
        """Each server's state, by name.

        ``up``, ``connecting``, ``backoff`` (between two reconnections),
        ``failed`` (never started), ``closed`` or ``idle`` (not started yet).
        """
        return {n: s.state for n, s in self._servers.items()}


def _tool(server: _Server, listed: mcp_types.Tool) -> Tool:
    """The registry tool calling ``listed`` on ``server``."""

    async def run(invocation: Invocation, args: dict[str, Any]) -> Any:
        return await server.call(listed.name, args)

    return Tool(
        name=f"{server.name}.{listed.name}",
        description=listed.description or listed.title or "",
        input_schema=dict(listed.input_schema),
        effect=effect_of(listed.annotations),
        source=f"mcp:{server.name}",
        run=run,
        idempotent=bool(
            listed.annotations is not None and listed.annotations.idempotent_hint
        ),
    )
