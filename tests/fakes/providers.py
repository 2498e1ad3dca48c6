"""A fake model provider over real HTTP, for driving the real SDKs in tests.

:class:`FakeProviderServer` listens on 127.0.0.1 (a free port) and speaks just
enough of two APIs for the official SDKs to parse its answers:

* Anthropic Messages: ``POST /v1/messages``
* OpenAI Chat Completions: ``POST /v1/chat/completions``

Responses come from a FIFO queue (:meth:`FakeProviderServer.enqueue`,
:meth:`FakeProviderServer.enqueue_tool_calls`); with the queue empty, every
request succeeds with the configured text and usage. An error queued without a
body gets one in the shape of the API that was called. A ``responder`` may
answer instead of the queue, as a function of what the request contains (a
conversation that is replayed after a crash must get the same answers, whatever
order the calls come in). Every request is recorded (path, headers, JSON body)
and when it came, for assertions.

Tool calls are answered in each API's own shape: ``tool_use`` blocks with
``stop_reason: "tool_use"`` (Anthropic), ``message.tool_calls`` with
``finish_reason: "tool_calls"`` (OpenAI).

Use it as a context manager::

    with FakeProviderServer(text="hi") as fake:
        client = AnthropicModel(api_key="k", base_url=fake.anthropic_base_url)
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, NamedTuple, Self, TypeAlias

from agents.tool_names import is_wire_name, wire_name

if TYPE_CHECKING:
    from collections.abc import Iterable

ANTHROPIC_PATH = "/v1/messages"
OPENAI_PATH = "/v1/chat/completions"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class Usage:
    """Usage the fake reports, in one convention for both APIs.

    ``input_tokens`` are uncached. The Anthropic body reports them as is, with
    ``cache_read_input_tokens=cached_tokens``; the OpenAI body reports
    ``prompt_tokens = input_tokens + cached_tokens``, as OpenAI does.
    """

    input_tokens: int = 10
    output_tokens: int = 5
    cached_tokens: int = 0


class FakeToolCall(NamedTuple):
    """One tool call the fake answers with; a plain 3-tuple does as well."""

    id: str
    name: str
    """The wire name (``workspace__write``), or the dotted one: see
    :meth:`FakeProviderServer.enqueue_tool_calls`."""
    arguments: Any
    """A dict, or a string sent as it is (OpenAI's arguments are a JSON string
    a model may get wrong)."""


@dataclass(frozen=True)
class Canned:
    """One answer. ``body=None`` means a generated one."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    message: str = "fake provider error"
    text: str | None = None
    """The answer's text; ``None`` means the server's."""
    usage: Usage | None = None
    tool_calls: tuple[tuple[str, str, Any], ...] = ()
    """``(id, name, arguments)`` of each tool call, in order (see
    :class:`FakeToolCall`); with any, the answer stops for tool use."""


Responder: TypeAlias = Callable[[str, dict[str, Any]], Canned | None]
"""Answers a request from its path and JSON body; ``None`` leaves it to the
queue."""


@dataclass(frozen=True)
class Recorded:
    """One request the fake received."""

    path: str
    headers: dict[str, str]
    """Header names in lower case."""
    body: Any
    at: float = 0.0
    """When it arrived (``time.monotonic()``)."""


def anthropic_success(
    model: str,
    text: str,
    usage: Usage,
    tool_calls: Iterable[tuple[str, str, Any]] = (),
) -> dict[str, Any]:
    """Return an Anthropic Messages success body.

    With tool calls, the text block comes first (only if ``text`` is not
    empty), then one ``tool_use`` block per call; a string of arguments that is
    JSON is sent decoded, any other is sent as it is.
    """
    blocks = [
        {"type": "tool_use", "id": id_, "name": name, "input": _decoded(args)}
        for id_, name, args in tool_calls
    ]
    content = [{"type": "text", "text": text}] if text or not blocks else []
    return {
        "id": "msg_fake_0001",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content + blocks,
        "stop_reason": "tool_use" if blocks else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": usage.cached_tokens,
        },
    }


def openai_success(
    model: str,
    text: str,
    usage: Usage,
    tool_calls: Iterable[tuple[str, str, Any]] = (),
) -> dict[str, Any]:
    """Return an OpenAI Chat Completions success body.

    With tool calls, ``content`` is ``None`` when ``text`` is empty and the
    arguments go out as a JSON string (a string is sent as it is, so a test
    can send arguments that are not JSON).
    """
    prompt = usage.input_tokens + usage.cached_tokens
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    calls = [
        {
            "id": id_,
            "type": "function",
            "function": {
                "name": name,
                "arguments": args if isinstance(args, str) else json.dumps(args),
            },
        }
        for id_, name, args in tool_calls
    ]
    if calls:
        message["content"] = text or None
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-fake0001",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if calls else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": usage.output_tokens,
            "total_tokens": prompt + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        },
    }


def _decoded(arguments: Any) -> Any:
    """Arguments as an object where they can be (Anthropic's ``input``)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def _offered_wire_names(body: dict[str, Any]) -> set[str]:
    """The tool names a request offers, in either API's shape."""
    names: set[str] = set()
    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            function = tool.get("function")
            holder = function if isinstance(function, dict) else tool
            if isinstance(holder.get("name"), str):
                names.add(holder["name"])
    return names


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """Return an Anthropic error body."""
    kind = _ERROR_TYPES.get(status, "api_error")
    return {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": "req_fake_0001",
    }


def openai_error(status: int, message: str) -> dict[str, Any]:
    """Return an OpenAI error body."""
    kind = _ERROR_TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class FakeProviderServer:
    """An HTTP server that plays Anthropic and OpenAI from a script of answers.

    Args:
        text: The text of generated success bodies.
        usage: The usage of generated success bodies.
        responder: Asked first for every request whose body is a JSON object,
            with its path and body; what it returns is the answer, and ``None``
            leaves the request to the queue. Settable later as ``responder``.
    """

    def __init__(
        self,
        *,
        text: str = "ok",
        usage: Usage | None = None,
        responder: Responder | None = None,
    ) -> None:
        self.text = text
        self.usage = usage or Usage()
        self.responder = responder
        self.requests: list[Recorded] = []
        self._queue: deque[Canned] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- scripting -------------------------------------------------------

    def enqueue(
        self,
        status: int = 200,
        *,
        headers: dict[str, str] | None = None,
        body: Any = None,
        message: str = "fake provider error",
        text: str | None = None,
        usage: Usage | None = None,
    ) -> None:
        """Queue the answer to the next request.

        Args:
            status: The HTTP status.
            headers: Extra response headers (e.g. ``retry-after``).
            body: The JSON body; ``None`` generates a success or an error body
                in the shape of the API that is called.
            message: The message of a generated error body.
            text: The text of a generated success body (default: the server's).
            usage: The usage of a generated success body (default: the server's).
        """
        with self._lock:
            self._queue.append(
                Canned(status, dict(headers or {}), body, message, text, usage)
            )

    def enqueue_tool_calls(
        self,
        calls: Iterable[tuple[str, str, Any]],
        *,
        text: str = "",
        usage: Usage | None = None,
    ) -> None:
        """Queue an answer that calls tools, in the shape of the API called.

        A name that is not valid on the wire (``workspace.write``) is sent as
        its plain wire form (``workspace__write``) when the request offers a
        tool of that name, as a model would call it; any other name is sent as
        given (a model inventing a tool).

        Args:
            calls: ``(id, name, arguments)`` of each call, in order; arguments
                are a dict, or a string sent as it is.
            text: The text before the calls; empty sends none.
            usage: The usage (default: the server's).
        """
        with self._lock:
            self._queue.append(
                Canned(text=text, usage=usage, tool_calls=tuple(map(tuple, calls)))
            )

    def paths(self) -> list[str]:
        """Return the paths of every request received, in order."""
        return [r.path for r in self.requests]

    def models(self) -> list[str]:
        """Return the ``model`` of every request received, in order."""
        return [r.body.get("model", "") for r in self.requests]

    # --- lifecycle -------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens on."""
        assert self._server is not None, "the server is not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def anthropic_base_url(self) -> str:
        """The ``base_url`` to give the Anthropic SDK."""
        return self.base_url

    @property
    def openai_base_url(self) -> str:
        """The ``base_url`` to give the OpenAI SDK."""
        return self.base_url + "/v1"

    def start(self) -> Self:
        """Listen on a free port and serve from a daemon thread."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-provider",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- serving ---------------------------------------------------------

    def _answer(
        self, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, dict[str, str], Any]:
        with self._lock:
            self.requests.append(Recorded(path, headers, body, time.monotonic()))
            responder = self.responder
        # Called outside the lock: a responder may enqueue, or read requests.
        canned = responder(path, body) if responder and isinstance(body, dict) else None
        if canned is None:
            with self._lock:
                canned = self._queue.popleft() if self._queue else Canned()
        if path not in (ANTHROPIC_PATH, OPENAI_PATH):
            return 404, {}, {"error": {"message": f"no route {path}"}}
        is_anthropic = path == ANTHROPIC_PATH
        if canned.body is not None:
            return canned.status, canned.headers, canned.body
        if canned.status >= 400:
            make_error = anthropic_error if is_anthropic else openai_error
            return (
                canned.status,
                canned.headers,
                make_error(canned.status, canned.message),
            )
        model = body.get("model", "") if isinstance(body, dict) else ""
        text = canned.text if canned.text is not None else self.text
        usage = canned.usage or self.usage
        offered = _offered_wire_names(body) if isinstance(body, dict) else set()
        calls = [
            (id_, _as_called(name, offered), args)
            for id_, name, args in canned.tool_calls
        ]
        make_success = anthropic_success if is_anthropic else openai_success
        return canned.status, canned.headers, make_success(model, text, usage, calls)


def _as_called(name: str, offered: set[str]) -> str:
    """The name a model would call: the offered wire form of a dotted name."""
    if is_wire_name(name) or wire_name(name) not in offered:
        return name
    return wire_name(name)


def _handler_for(fake: FakeProviderServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 lets the SDKs reuse connections, as they do in production.
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, payload = fake._answer(self.path, headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

    return Handler
