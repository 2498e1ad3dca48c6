"""A fake model provider over real HTTP, for driving the real SDKs in tests.

:class:`FakeProviderServer` listens on 127.0.0.1 (a free port) and speaks just
enough of two APIs for the official SDKs to parse its answers:

* Anthropic Messages: ``POST /v1/messages``
* OpenAI Chat Completions: ``POST /v1/chat/completions``

Responses come from a FIFO queue (:meth:`FakeProviderServer.enqueue`); with the
queue empty, every request succeeds with the configured text and usage. An
error queued without a body gets one in the shape of the API that was called.
Every request is recorded (path, headers, JSON body) for assertions.

Use it as a context manager::

    with FakeProviderServer(text="hi") as fake:
        client = AnthropicModel(api_key="k", base_url=fake.anthropic_base_url)
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

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


@dataclass(frozen=True)
class Canned:
    """One queued response. ``body=None`` means a generated one."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    message: str = "fake provider error"
    text: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class Recorded:
    """One request the fake received."""

    path: str
    headers: dict[str, str]
    """Header names in lower case."""
    body: Any


def anthropic_success(model: str, text: str, usage: Usage) -> dict[str, Any]:
    """Return an Anthropic Messages success body."""
    return {
        "id": "msg_fake_0001",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": usage.cached_tokens,
        },
    }


def openai_success(model: str, text: str, usage: Usage) -> dict[str, Any]:
    """Return an OpenAI Chat Completions success body."""
    prompt = usage.input_tokens + usage.cached_tokens
    return {
        "id": "chatcmpl-fake0001",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": usage.output_tokens,
            "total_tokens": prompt + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        },
    }


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
    """

    def __init__(self, *, text: str = "ok", usage: Usage | None = None) -> None:
        self.text = text
        self.usage = usage or Usage()
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
            self.requests.append(Recorded(path, headers, body))
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
        make_success = anthropic_success if is_anthropic else openai_success
        return canned.status, canned.headers, make_success(model, text, usage)


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
