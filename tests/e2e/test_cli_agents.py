"""`bb demo` and `bb run` as a user runs them, in fresh processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_cli_basics import bb
from tests.waiting import bb_status_until, until

pytestmark = pytest.mark.integration


ROOT = Path(__file__).resolve().parents[2]


def no_server_env(cli_env: dict[str, str]) -> dict[str, str]:
    """The environment of a fresh machine: no server configured, no keys."""
    return {k: v for k, v in cli_env.items() if k != "BB_NATS_URL"}


def test_bb_demo_runs_the_audit_logging_goal_end_to_end(cli_env, tmp_path):
    env = no_server_env(cli_env)
    r = bb(["demo", "--json"], env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "done"
    assert "20 write endpoints" in out["summary"]
    assert out["tasks"] >= 25
    lanes = {u["lane"] for u in out["usage"]}
    assert lanes == {"frontier", "local"}
    assert all(u["scripted"] for u in out["usage"])
    frontier = sum(u["cost_usd"] for u in out["usage"] if u["lane"] == "frontier")
    assert frontier > 0 and abs(frontier - out["cost_usd"]) < 1e-6
    # The local lane escalated (NEED) and one call was refused with a 429.
    local = [u for u in out["usage"] if u["lane"] == "local"]
    assert sum(u["failed_calls"] for u in local) == 1
    # The local agents wrote the patches and the migration themselves, through
    # the workspace tools; the schema task asked the shipped MCP server.
    workspace = Path(out["workspace"])
    assert workspace == Path(env["BB_DATA_DIR"]) / "workspaces" / out["goal_id"]
    patches = sorted(workspace.glob("patches/*.patch"))
    assert len(patches) == 20
    assert all("audit.emit(AuditEvent(" in p.read_text() for p in patches)
    assert (workspace / "migrations" / "0042_audit_log.sql").is_file()
    assert out["tool_calls"] == 23  # 21 writes, 2 MCP reads


def test_bb_demo_text_shows_progress_cost_split_and_replay_command(cli_env):
    r = bb(["demo"], no_server_env(cli_env), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "(scripted models)" in r.stdout
    assert "frontier" in r.stdout and "local" in r.stdout
    assert "total $" in r.stdout
    goal_id = r.stdout.split("replay it: ")[1].split(" replay ")[1].split()[0]
    assert len(goal_id) == 26
    assert "done" in r.stderr  # the progress line


def test_bb_run_without_models_says_what_to_set(cli_env):
    env = no_server_env(cli_env)
    env["BB_LOCAL_BASE_URL"] = "http://127.0.0.1:9/v1"  # nothing listens on port 9
    r = bb(["run", "audit the docs"], env)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "ANTHROPIC_API_KEY" in r.stderr
    assert "bb demo" in r.stderr


def test_bb_run_on_scripted_models_in_process(cli_env):
    env = dict(no_server_env(cli_env), BB_SCRIPTED="1")
    r = bb(["run", "write release notes for 2.0", "--json"], env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "done"
    assert out["tasks"] == 6  # plan, 4 planned tasks, aggregate


def test_bb_demo_detach_submits_to_a_running_deployment(cli_env, tmp_path):
    env = dict(cli_env, BB_SCRIPTED="1")
    log = tmp_path / "up.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "blackboard.cli", "up"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        until(lambda: "ready" in log.read_text(), what="bb up ready")
        r = bb(["demo", "--detach", "--json"], cli_env)
        assert r.returncode == 0, r.stderr
        goal_id = json.loads(r.stdout)["goal_id"]
        status = bb_status_until(cli_env, goal_id, timeout_s=60)
        assert status["status"] == "done", status.get("reason")
        assert status["by_lane"]["local:done"] >= 20
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log.read_text()


def test_bb_demo_against_an_external_server_with_a_fresh_data_dir(cli_env, tmp_path):
    """BB_NATS_URL set (cli_env points at the test's server), data dir not there."""
    import duckdb

    env = {**cli_env, "BB_DATA_DIR": str(tmp_path / "not" / "yet" / "there")}
    r = bb(["demo", "--json"], env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "component failed" not in r.stderr and "failed:" not in r.stderr
    goal_id = json.loads(r.stdout)["goal_id"]
    db = tmp_path / "not" / "yet" / "there" / "blackboard.duckdb"
    con = duckdb.connect(str(db), read_only=True)
    row = con.execute("SELECT status FROM goals WHERE goal_id = ?", [goal_id]).fetchone()
    assert row == ("done",)


def test_a_component_that_dies_fails_the_command_in_one_line(cli_env, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the data dir should be")
    env = {**cli_env, "BB_DATA_DIR": str(blocker / "data")}
    r = bb(["demo"], env, timeout=120)
    assert r.returncode != 0
    assert "projector failed: cannot open" in r.stderr
    assert "Traceback" not in r.stderr
    assert [line for line in r.stderr.splitlines() if "failed" in line] == [
        r.stderr.strip().splitlines()[-1]
    ]


def test_the_command_the_demo_suggests_runs_as_printed(cli_env):
    import shlex

    r = bb(["demo"], cli_env, timeout=120)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("replay it: "))
    argv = shlex.split(line.removeprefix("replay it: "))
    again = subprocess.run(argv, env=cli_env, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0, again.stderr
    assert "goal " in again.stdout
    via = dict(cli_env, BB_INVOKED_AS="./run.sh")
    r = bb(["demo"], via, timeout=120)
    assert "replay it: ./run.sh replay " in r.stdout
