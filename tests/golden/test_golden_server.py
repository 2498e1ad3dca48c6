"""The golden traces are what `bb replay` prints for the goal read from a server.

Each history was recorded on a fresh server (sequences 1..N), so its events
appended in order to an empty stream get their recorded sequences back.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from blackboard.cli import app
from blackboard.log.store import JetStreamEventStore, StoreSettings, connect
from replay import reader
from tests.golden.test_golden import HISTORIES

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration


async def _load(url: str, history: Path) -> str:
    envs = reader.from_file(history)
    nc = await connect(url, name="golden")
    try:
        store = JetStreamEventStore(nc, StoreSettings())
        await store.ensure()
        for env in envs:
            assert await store.append(env.event) == env.seq
    finally:
        await nc.drain()
    return envs[0].event.goal_id


@pytest.mark.parametrize("history", HISTORIES, ids=lambda p: p.stem)
def test_replay_from_a_server_prints_the_golden_trace(
    history: Path, nats_url: str, tmp_path: Path
):
    goal_id = asyncio.run(_load(nats_url, history))
    env = {"BB_NATS_URL": nats_url, "BB_DATA_DIR": str(tmp_path / "bb")}
    for args, kind in (([], "trace.txt"), (["--json"], "trace.json")):
        result = CliRunner().invoke(app, ["replay", goal_id, *args], env=env)
        assert result.exit_code == 0, result.output
        assert result.stdout_bytes == history.with_suffix(f".{kind}").read_bytes()
