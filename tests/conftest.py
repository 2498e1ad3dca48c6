"""Shared fixtures: a real nats-server (or cluster) per test, on loopback, in
tmp_path; the in-memory twins of the log; both, for tests written once.

Tests that need a nats-server, a cluster, a subprocess or a browser are marked
``integration``; ``pytest -m "not integration"`` is the fast subset. A test
that uses the server fixtures is marked here even if its module forgot.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import nats
import pytest

from blackboard.log.memory import MemoryEventStore
from blackboard.log.server import EmbeddedCluster, EmbeddedServer
from blackboard.log.store import JetStreamEventStore, StoreSettings, connect

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from blackboard.log.ports import EventStore

ROOT = Path(__file__).resolve().parents[1]

# Where tools and the suite's own reports write on purpose (all ignored by git).
_EXPECTED = (
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
    ".import_linter_cache",
    ".venv",
    "build/",
    ".egg-info",
)


def _tree() -> set[str] | None:
    """The checkout's untracked and ignored paths, less the expected ones."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--ignored"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None  # not a git checkout: nothing to compare
    return {
        line[3:]
        for line in out.stdout.splitlines()
        if line[:2] in ("??", "!!") and not any(e in line for e in _EXPECTED)
    }


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _tree()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite leaves the user's tree as it found it, or the run fails."""
    before = session.config.stash.get(_BEFORE, None)
    after = _tree()
    if before is None or after is None:
        return
    new = sorted(after - before)
    if new:
        sys.stderr.write(
            "\nthe test suite left files in the checkout: " + ", ".join(new) + "\n"
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[set[str] | None]()


@pytest.fixture(autouse=True)
def _own_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in a directory of its own.

    A setting left at its default (``data_dir = ".bb"``) then lands there,
    never in the checkout: ``./run.sh test`` leaves the user's tree as it was
    (tests/test_tree_clean.py checks it).
    """
    monkeypatch.chdir(tmp_path)


_SERVER_FIXTURES = frozenset(
    {"nats_server", "nats_cluster", "jetstream_store", "cli_env", "bb_exe"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``integration`` every test that starts a server or a `bb` process."""
    for item in items:
        if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A real nats-server with JetStream and a temporary store."""
    server = EmbeddedServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A real 3-node JetStream cluster on loopback, formed, with a meta leader."""
    cluster = EmbeddedCluster(tmp_path / "nats-cluster")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def nats_url(nats_server: EmbeddedServer) -> str:
    return nats_server.url


@pytest.fixture
async def jetstream_store(nats_url: str) -> AsyncIterator[JetStreamEventStore]:
    """The JetStream store on the test server, streams created."""
    nc = await connect(nats_url, name="test")
    s = JetStreamEventStore(nc, StoreSettings())
    await s.ensure()
    try:
        yield s
    finally:
        await nc.drain()


@pytest.fixture
def store(jetstream_store: JetStreamEventStore) -> JetStreamEventStore:
    """The event store of most tests: JetStream (tests/engine: either)."""
    return jetstream_store


@pytest.fixture
def memory_store() -> MemoryEventStore:
    """The in-memory twin of the event store (with its work queue and lease)."""
    return MemoryEventStore(StoreSettings())


@pytest.fixture(
    params=[pytest.param("jetstream", marks=pytest.mark.integration), "memory"]
)
def any_store(request: pytest.FixtureRequest) -> EventStore:
    """Each adapter of the EventStore port in turn: JetStream, then the twin."""
    if request.param == "memory":
        return MemoryEventStore(StoreSettings())
    store: JetStreamEventStore = request.getfixturevalue("jetstream_store")
    return store


@pytest.fixture
def raw_publish(
    request: pytest.FixtureRequest, any_store: EventStore
) -> Callable[[str, bytes], Awaitable[None]]:
    """Publish any bytes on a writer's subject, as a stray client would."""
    if isinstance(any_store, MemoryEventStore):
        twin = any_store

        async def publish_twin(subject: str, data: bytes) -> None:
            await twin.publish_raw(subject, data)

        return publish_twin
    url: str = request.getfixturevalue("nats_url")

    async def publish_nats(subject: str, data: bytes) -> None:
        other = await nats.connect(url)  # not our code: any client can do this
        try:
            await other.jetstream().publish(subject, data)
        finally:
            await other.close()

    return publish_nats


@pytest.fixture
def cli_env(nats_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for running `bb` as a subprocess against the test server."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BB_", "ANTHROPIC_", "OPENAI_", "OTEL_"))
    }
    env.update(
        BB_NATS_URL=nats_url,
        BB_DATA_DIR=str(tmp_path / "bbdata"),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def bb_exe() -> list[str]:
    """The command that runs the CLI of the installed package."""
    return [sys.executable, "-m", "blackboard.cli"]
