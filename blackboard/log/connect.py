"""Connecting to NATS: one deadline for the first connection, then for ever.

A server that cannot be reached, or that refuses us (credentials, TLS), is
reported in one line saying what to set, as ``NotConnected``.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.client import Client as NatsClient

from blackboard.errors import NotConnected
from blackboard.log.parser import FastParser

if TYPE_CHECKING:
    from collections.abc import Callable

_SPACE = re.compile(rb"\s")


class Client(NatsClient):
    """nats-py's client with a faster parser of message headers.

    Every stored event carries headers (its id, its schema), so every
    message read pays nats-py's header parse, which tests each character of
    each name with a Python generator: at 100,000 events a second that was
    half a reader's time. This parses the same way (``Name: Value`` lines,
    names without whitespace or non-ASCII skipped, values decoded with
    ``errors="replace"``), a regular expression doing the per-character
    test; tests/contract/test_pull.py checks it against nats-py's own.

    It also lets a subscription take its messages raw (``sinks``): a bulk
    reader (log/pull.py) gets each message as bytes from the parser, with no
    header dict, ``Msg`` object or queue in between, at several times the
    rate; every other subscription is served by nats-py as before. Its
    protocol parser (log/parser.py) reads the message lines without regular
    expressions and hands raw messages to their sink with a plain call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sinks: dict[int, Callable[[bytes, bytes, bytes, bytes | None], None]] = {}
        self._ps = FastParser(self)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        sink = self.sinks.get(sid)
        if sink is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        sink(subject, reply, data, headers or None)

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            name = name.strip()
            if not name.isascii() or _SPACE.search(name):
                continue
            out[name.decode("ascii")] = value.strip().decode("utf-8", "replace")
        return out


async def connect(
    url: str,
    *,
    name: str = "bb",
    timeout: float = 3.0,
    **options: Any,
) -> NatsClient:
    """Connect to NATS, or raise NotConnected with what to do about it.

    ``url`` may list several servers separated by commas (the nodes of a
    cluster); nats-py takes them as its server pool and fails over between
    them. Once connected, reconnection never gives up (a restarted server is
    picked up again). nats-py would also retry the first connection forever
    with that setting, so the first connection gets a deadline and a CLI can
    fail in one line.
    """
    servers = [u.strip() for u in url.split(",") if u.strip()]
    seen: list[Exception] = []
    given_cb = options.pop("error_cb", None)

    async def remember(e: Exception) -> None:
        # nats-py retries a refused first connection too: keep the reason,
        # so an authorization or TLS refusal is not reported as "unreachable".
        seen.append(e)
        if given_cb is not None:
            await given_cb(e)

    nc = Client()
    try:
        await asyncio.wait_for(
            nc.connect(
                servers,
                name=name,
                connect_timeout=min(timeout, 2.0),  # type: ignore[arg-type]
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]
                # A server that hangs (a paused node, a frozen VM) keeps its
                # socket open: only missed pings reveal it, and nats-py's default
                # (2 min x 2) would stall every reader that long. ~15 s here.
                ping_interval=5,
                max_outstanding_pings=3,
                error_cb=remember,
                **options,
            ),
            timeout,
        )
    except (nats.errors.Error, OSError, TimeoutError) as e:
        refused = _refusal(e, seen)
        if refused is not None:
            raise NotConnected(
                f"NATS at {url} refused the connection: {refused}"
            ) from e
        raise NotConnected(
            f"cannot reach NATS at {url}: start one with `bb up`, "
            "or set BB_NATS_URL to a running server"
        ) from e
    return nc


def _refusal(error: Exception, seen: list[Exception]) -> str | None:
    """What to do about a server that answered but refused us, if it did."""
    for e in [error, *reversed(seen)]:
        text = str(e).lower()
        if "authorization" in text or "authentication" in text:
            return (
                f"{e}; set BB_NATS_USER and BB_NATS_PASSWORD (or BB_NATS_TOKEN, "
                "BB_NATS_CREDS, BB_NATS_NKEY_SEED)"
            )
        if isinstance(e, ssl.SSLError) or "certificate" in text or "tls" in text:
            return f"TLS: {e}; set BB_NATS_TLS_CA (and BB_NATS_TLS_CERT/KEY)"
    return None
