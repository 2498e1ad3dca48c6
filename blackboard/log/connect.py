"""Connecting to NATS: one deadline for the first connection, then for ever.

A server that cannot be reached, or that refuses us (credentials, TLS), is
reported in one line saying what to set, as ``NotConnected``.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Any

import nats
import nats.errors

from blackboard.errors import NotConnected

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient


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

    try:
        return await asyncio.wait_for(
            nats.connect(
                servers,
                name=name,
                connect_timeout=min(timeout, 2.0),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
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
