"""Process plumbing shared by the CLI commands: where NATS is, connecting.

A running ``bb up`` writes its URL to ``<data_dir>/nats.url`` so that other
commands on the same machine find it without ``BB_NATS_URL``; the variable
always wins, and with it set nothing embedded is ever started.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blackboard.errors import NotConnected
from blackboard.log.server import EmbeddedServer
from blackboard.log.store import JetStreamEventStore, connect
from blackboard.runtime import health
from blackboard.runtime.config import Settings, store_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from nats.aio.client import Client as NatsClient

URL_FILE = "nats.url"


def url_file(settings: Settings) -> Path:
    """Where ``bb up`` advertises its server's URL."""
    return Path(settings.data_dir) / URL_FILE


def resolve_url(settings: Settings) -> str | None:
    """The server to use: BB_NATS_URL / config, else a local ``bb up``'s."""
    if settings.nats.url:
        return settings.nats.url
    f = url_file(settings)
    if f.exists():
        return f.read_text().strip() or None
    return None


def connect_options(settings: Settings) -> dict[str, Any]:
    """nats-py connection options for credentials and TLS from settings."""
    n = settings.nats
    opts: dict[str, Any] = {}
    if n.user:
        opts["user"] = n.user
        opts["password"] = n.password or ""
    if n.token:
        opts["token"] = n.token
    if n.creds:
        opts["user_credentials"] = n.creds
    if n.nkey_seed:
        opts["nkeys_seed"] = n.nkey_seed
    if n.tls_ca or n.tls_cert:
        import ssl

        ctx = ssl.create_default_context(cafile=n.tls_ca)
        if n.tls_cert:
            ctx.load_cert_chain(n.tls_cert, n.tls_key)
        opts["tls"] = ctx
    return opts


async def _silent(_: Exception) -> None:
    """Connection errors are reported by the operation that fails, not spammed."""


async def open_client(settings: Settings, url: str, name: str = "bb") -> NatsClient:
    """Connect with the configured credentials."""
    return await connect(url, name=name, error_cb=_silent, **connect_options(settings))


@contextlib.asynccontextmanager
async def open_store(
    settings: Settings, url: str | None = None, name: str = "bb"
) -> AsyncIterator[JetStreamEventStore]:
    """Connect to NATS, make sure the streams exist, yield the store."""
    url = url or resolve_url(settings)
    if url is None:
        raise NotConnected(
            "no NATS server: run `bb up` in another terminal, "
            "or set BB_NATS_URL to a running server"
        )
    nc = await open_client(settings, url, name)
    try:
        store = JetStreamEventStore(nc, store_settings(settings))
        await store.ensure()
        health.STATE.client = nc  # ready: connected, streams in place
        yield store
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()


@contextlib.contextmanager
def server_for(settings: Settings, port: int = 0) -> Iterator[str]:
    """Yield the URL to use: the configured server, or a started embedded one.

    The embedded server keeps its data under ``data_dir`` and advertises its
    URL there while it runs.
    """
    if settings.nats.url:
        yield settings.nats.url
        return
    data = Path(settings.data_dir)
    server = EmbeddedServer(data / "nats", port=port)
    server.start()
    marker = url_file(settings)
    try:
        marker.write_text(server.url)
        yield server.url
    finally:
        marker.unlink(missing_ok=True)
        server.stop()
