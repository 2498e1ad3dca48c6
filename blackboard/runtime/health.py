"""Liveness and readiness over HTTP, for Kubernetes probes.

Every long-running ``bb`` process (``up``, ``scheduler``, ``worker``,
``projector``) serves them when ``BB_HEALTH_PORT`` is set:

- ``GET /healthz``: 200 while the process's event loop answers (liveness);
- ``GET /readyz``: 200 once it is connected to NATS and its streams exist,
  503 while it is not (readiness).

Standard library only; an HTTP/1.0 answer per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client as NatsClient

__all__ = ["STATE", "serving"]


@dataclass
class _State:
    """What readiness depends on, set by the process as it starts."""

    client: NatsClient | None = None

    @property
    def ready(self) -> bool:
        return self.client is not None and bool(self.client.is_connected)


STATE = _State()


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        parts = line.decode(errors="replace").split()
        path = parts[1] if len(parts) > 1 else "/"
        if path == "/healthz":
            status, body = "200 OK", "ok"
        elif path == "/readyz":
            ok = STATE.ready
            status = "200 OK" if ok else "503 Service Unavailable"
            body = "ready" if ok else "not connected to NATS"
        else:
            status, body = "404 Not Found", "try /healthz or /readyz"
        writer.write(
            f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        await writer.drain()
    except (TimeoutError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(port: int | None = None) -> AsyncIterator[int | None]:
    """Serve the probes on ``port`` (default ``$BB_HEALTH_PORT``; none: off)."""
    if port is None:
        value = os.environ.get("BB_HEALTH_PORT", "")
        port = int(value) if value.isdigit() else None
    if port is None:
        yield None
        return
    server = await asyncio.start_server(_answer, "0.0.0.0", port)
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()
