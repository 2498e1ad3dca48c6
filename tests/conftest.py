"""Shared fixtures: a real nats-server (or cluster) per test, on loopback, in
tmp_path; the in-memory twins of the log; both, for tests written once.

Tests that need a nats-server, a cluster, a subprocess or a browser are marked
``integration``; ``pytest -m "not integration"`` is the fast subset. A test
that uses the server fixtures is marked here even if its module forgot.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import nats
import pytest

from blackboard.log.memory import MemoryEventStore
from blackboard.log.server import EmbeddedCluster, EmbeddedServer
from blackboard.log.store import JetStreamEventStore, StoreSettings, connect

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from pathlib import Path

    from blackboard.log.ports import EventStore

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
