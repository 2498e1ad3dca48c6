"""Process plumbing shared by the CLI commands: where NATS is, connecting.

A running ``bb up`` writes its URL to ``<data_dir>/nats.url`` so that other
commands on the same machine find it without ``BB_NATS_URL``; the variable
always wins, and with it set nothing embedded is ever started.

One embedded server per data dir: ``bb up`` holds an exclusive ``flock`` on
``<data_dir>/bb-up.lock`` (with its pid and URL in it) for as long as its
server runs. A second ``bb up`` on the same dir is refused with that pid and
URL, or joins it with ``--join``. The kernel drops the lock when its holder
dies, however it dies, so a crashed one never blocks the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from blackboard.errors import ConfigError, NotConnected
from blackboard.log.server import EmbeddedServer
from blackboard.log.store import JetStreamEventStore, connect
from blackboard.runtime import health
from blackboard.runtime.config import Settings, store_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from nats.aio.client import Client as NatsClient

URL_FILE = "nats.url"
LOCK_FILE = "bb-up.lock"


class AlreadyRunning(ConfigError):
    """Another ``bb up`` serves this data dir."""

    def __init__(self, data_dir: Path, pid: str, url: str) -> None:
        super().__init__(
            f"a bb up already serves {data_dir} (pid {pid or '?'}, {url or 'no URL'}); "
            "stop it, use it (other commands find it), or add workers to it with "
            "`bb up --join`"
        )
        self.pid = pid
        self.url = url


class Here(NamedTuple):
    """The ``bb up`` that serves a data dir."""

    pid: str
    url: str
    scripted: bool
    """Whether its lanes run on scripted models (BB_SCRIPTED)."""


def running_here(settings: Settings) -> Here | None:
    """The ``bb up`` holding this data dir's lock, if one does."""
    lock = Path(settings.data_dir) / LOCK_FILE
    if not lock.exists():
        return None
    with lock.open("r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, url, mode = ([*f.read().split(), "", "", ""])[:3]
            return Here(pid, url, mode == "scripted")
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


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


def nats_user(settings: Settings) -> str | None:
    """The named NATS user this process authenticates as, if it is one.

    The same choice nats-py makes with ``connect_options``: credentials or an
    nkey seed sign with a key (no name to give), then ``BB_NATS_USER``, then a
    token, then a user in the URL (``nats://name:password@host``; a name with
    no password is a token).
    """
    n = settings.nats
    if n.creds or n.nkey_seed:
        return None
    if n.user:
        return n.user
    if n.token:
        return None
    for url in (n.url or "").split(","):
        parts = urllib.parse.urlsplit(url.strip())
        if parts.username and parts.password is not None:
            return parts.username
    return None


async def _silent(_: Exception) -> None:
    """Connection errors are reported by the operation that fails, not spammed."""


async def open_client(settings: Settings, url: str, name: str = "bb") -> NatsClient:
    """Connect with the configured credentials.

    A server that cannot be reached is explained by where its URL came from:
    ``BB_NATS_URL`` (is it running?) or a ``bb up`` that has gone away.
    """
    try:
        return await connect(
            url, name=name, error_cb=_silent, **connect_options(settings)
        )
    except NotConnected as e:
        if "refused the connection" in str(e):
            raise
        if settings.nats.url:
            why = (
                f"cannot reach NATS at {url} (BB_NATS_URL): is it running? "
                "Unset BB_NATS_URL to use the embedded server of the data dir"
            )
        else:
            why = (
                f"cannot reach NATS at {url}, which {url_file(settings)} names: "
                "the bb up that wrote it has stopped; start it again with `bb up`"
            )
        raise NotConnected(why) from e


def _nothing_here(settings: Settings) -> NotConnected:
    data = Path(settings.data_dir).resolve()
    return NotConnected(
        f"no NATS server and no log in {data}: run `bb up` there, point "
        "BB_DATA_DIR (or --config) at the data dir you used, or set BB_NATS_URL"
    )


@contextlib.contextmanager
def log_server(settings: Settings) -> Iterator[str]:
    """The server that holds the log, started just to read it if need be.

    The configured or running server; else the embedded server's store left
    by `bb up` or `bb demo` in the data dir, served for the command's length.
    So every read command works the same offline.
    """
    url = resolve_url(settings)
    if url is not None:
        yield url
        return
    if not (Path(settings.data_dir) / "nats" / "jetstream").exists():
        raise _nothing_here(settings)
    with server_for(settings, port=0) as started:
        yield started


@contextlib.asynccontextmanager
async def open_store(
    settings: Settings, url: str | None = None, name: str = "bb"
) -> AsyncIterator[JetStreamEventStore]:
    """Connect to NATS, make sure the streams exist, yield the store."""
    url = url or resolve_url(settings)
    if url is None:
        raise _nothing_here(settings)
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
    data.mkdir(parents=True, exist_ok=True)
    with (data / LOCK_FILE).open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            pid, url = ([*lock.read().split(), "", ""])[:2]
            raise AlreadyRunning(data.resolve(), pid, url) from None
        # Ours now (a crashed holder's lock went with it): say who we are.
        server = EmbeddedServer(
            data / "nats", port=port, sync_interval=settings.nats.sync_interval
        )
        server.start()
        lock.seek(0)
        lock.truncate()
        mode = "scripted" if settings.scripted else "models"
        lock.write(f"{os.getpid()} {server.url} {mode}")
        lock.flush()
        marker = url_file(settings)
        try:
            marker.write_text(server.url)
            yield server.url
        finally:
            marker.unlink(missing_ok=True)
            server.stop()
