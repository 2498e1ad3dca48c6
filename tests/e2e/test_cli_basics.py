"""`bb` as a user runs it: subprocesses against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import nats
import pytest

from blackboard.log.events import kind
from blackboard.log.store import JetStreamEventStore, connect

if TYPE_CHECKING:
    from pathlib import Path


pytestmark = pytest.mark.integration


def bb(args: list[str], env: dict[str, str], timeout: float = 30, **kw):
    return subprocess.run(
        [sys.executable, "-m", "blackboard.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def test_no_server_reachable_is_one_line_and_non_zero(cli_env, tmp_path):
    env = dict(cli_env, BB_NATS_URL="nats://127.0.0.1:9")
    r = bb(["submit", "x"], env)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1
    assert "cannot reach NATS at nats://127.0.0.1:9 (BB_NATS_URL)" in r.stderr
    assert "start one with" not in r.stderr  # BB_NATS_URL set: bb up would not help
    assert "Traceback" not in r.stderr
    r = bb(["up"], env)
    assert r.returncode == 1 and "start one with" not in r.stderr


def test_no_url_and_no_local_up_says_what_to_do(cli_env, tmp_path):
    env = {k: v for k, v in cli_env.items() if k != "BB_NATS_URL"}
    env["BB_DATA_DIR"] = str(tmp_path / "empty")
    r = bb(["tail", "--count", "1"], env)
    assert r.returncode == 1
    assert str(tmp_path / "empty") in r.stderr  # where it looked
    assert "bb up" in r.stderr and "BB_NATS_URL" in r.stderr and "BB_DATA_DIR" in r.stderr


def test_read_commands_work_offline_after_a_demo(cli_env, tmp_path):
    """No server running, the demo's data dir left: every read command reads it."""
    env = {k: v for k, v in cli_env.items() if k != "BB_NATS_URL"}
    env["BB_DATA_DIR"] = str(tmp_path / "data")
    r = bb(["demo", "--json"], env, timeout=120)
    assert r.returncode == 0, r.stderr
    goal_id = json.loads(r.stdout)["goal_id"]
    for args in (["status"], ["status", goal_id], ["tail", "--from-start",
                 "--count", "3"], ["replay", goal_id], ["cost", goal_id],
                 ["sql", "SELECT count(*) FROM goals"]):
        got = bb(args, env, timeout=60)
        assert got.returncode == 0, (args, got.stderr)
        assert "Traceback" not in got.stderr


def test_submit_then_tail_from_start(cli_env):
    r = bb(["submit", "add audit logging", "--max-tasks", "50", "--json"], cli_env)
    assert r.returncode == 0, r.stderr
    goal_id = json.loads(r.stdout)["goal_id"]
    t = bb(
        ["tail", "--from-start", "--count", "1", "--json", "--goal", goal_id], cli_env
    )
    assert t.returncode == 0, t.stderr
    event = json.loads(t.stdout)["event"]
    assert event["type"] == "goal_submitted"
    assert event["limits"]["max_tasks"] == 50
    human = bb(
        ["tail", "--from-start", "--count", "1", "--kind", "goal_submitted"], cli_env
    )
    assert goal_id in human.stdout and "add audit logging" in human.stdout


async def test_tail_skips_garbage_from_another_client(cli_env, nats_url):
    assert bb(["submit", "first"], cli_env).returncode == 0
    nc = await nats.connect(nats_url)
    await nc.jetstream().publish("bb.in.evt.X._.goal_submitted", b"garbage")
    await nc.close()
    assert bb(["submit", "second"], cli_env).returncode == 0
    r = bb(["tail", "--from-start", "--count", "2"], cli_env)
    assert r.returncode == 0
    assert "first" in r.stdout and "second" in r.stdout
    assert "skipped malformed message" in r.stderr and "seq 2" in r.stderr


def test_bad_input_is_refused_with_usage_errors(cli_env, tmp_path):
    assert "empty" in bb(["submit", "  "], cli_env).stderr
    r = bb(["submit", "x", "--max-tasks", "0"], cli_env)
    assert r.returncode == 2 and "max_tasks must be positive" in r.stderr
    dag = tmp_path / "dag.json"
    dag.write_text(
        json.dumps(
            {
                "tasks": [
                    {
                        "task_id": "a",
                        "type": "noop",
                        "lane": "local",
                        "depends_on": ["b"],
                    },
                    {
                        "task_id": "b",
                        "type": "noop",
                        "lane": "local",
                        "depends_on": ["a"],
                    },
                ]
            }
        )
    )
    r = bb(["submit", "x", "--dag", str(dag)], cli_env)
    assert r.returncode == 2
    assert "dependency cycle: a -> b -> a" in r.stderr
    r = bb(["tail", "--kind", "nope"], cli_env)
    assert r.returncode == 2 and "unknown kind" in r.stderr


def test_schema_lists_every_event():
    r = bb(["schema"], dict(os.environ))
    schema = json.loads(r.stdout)
    names = set(schema["$defs"])
    assert {"GoalSubmitted", "TaskCreated", "ModelCalled", "SideEffectFailed"} <= names


def test_up_serves_until_ctrl_c_and_keeps_data(tmp_path: Path, cli_env):
    env = {k: v for k, v in cli_env.items() if k != "BB_NATS_URL"}
    env["BB_DATA_DIR"] = str(tmp_path / "up")
    proc = subprocess.Popen(
        [sys.executable, "-m", "blackboard.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        url = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not url:
            line = proc.stdout.readline()
            if line.startswith("NATS at "):
                url = line.split()[2]
        assert url.startswith("nats://127.0.0.1:")
        while "ready" not in proc.stdout.readline():
            pass
        # Without BB_NATS_URL, other commands find the running `bb up`.
        submitted = bb(["submit", "kept"], env)
        assert submitted.returncode == 0
        goal_id = submitted.stdout.strip()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped; data kept" in out
    assert "Traceback" not in err
    assert not (tmp_path / "up" / "nats.url").exists()
    # The goal survived the stop: a fresh embedded server sees it.
    from blackboard.log.server import EmbeddedServer

    async def kinds(url: str) -> list[str]:
        nc = await connect(url)
        store = JetStreamEventStore(nc)
        found = [kind(env.event) async for env in store.read_goal(goal_id)]
        await nc.close()
        return found

    with EmbeddedServer(tmp_path / "up" / "nats") as server:
        found = asyncio.run(kinds(server.url))
    # Submitted once, and `bb up`'s own scheduler took it up (created its plan).
    assert found.count("goal_submitted") == 1
    assert "task_created" in found
