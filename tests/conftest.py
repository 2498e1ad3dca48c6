"""Shared fixtures: a real nats-server (or cluster) per test, on loopback, in tmp_path."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import pytest

from blackboard.log.server import EmbeddedCluster, EmbeddedServer
from blackboard.log.store import JetStreamEventStore, StoreSettings, connect

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path


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
async def store(nats_url: str) -> AsyncIterator[JetStreamEventStore]:
    """The JetStream store on the test server, streams created."""
    nc = await connect(nats_url, name="test")
    s = JetStreamEventStore(nc, StoreSettings())
    await s.ensure()
    try:
        yield s
    finally:
        await nc.drain()


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
