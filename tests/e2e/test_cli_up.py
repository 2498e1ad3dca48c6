"""One embedded server per data dir: a second `bb up` is refused or joins."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_cli_basics import bb

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def up(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "blackboard.cli", "up", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def wait_text(log: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"{text!r} not in {log.read_text()}"
        time.sleep(0.1)


@pytest.fixture
def env(cli_env, tmp_path):
    """No BB_NATS_URL: `bb up` starts its own server in the data dir."""
    e = {k: v for k, v in cli_env.items() if k != "BB_NATS_URL"}
    e.update(BB_SCRIPTED="1", BB_DATA_DIR=str(tmp_path / "data"))
    return e


def test_second_up_is_refused_and_the_first_stays_findable(env, tmp_path):
    first = up(env, tmp_path / "first.log")
    try:
        wait_text(tmp_path / "first.log", "ready")
        url = (tmp_path / "data" / "nats.url").read_text()
        r = subprocess.run(
            [sys.executable, "-m", "blackboard.cli", "up"],
            env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
        )
        assert r.returncode != 0
        assert f"pid {first.pid}" in r.stderr and url in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        # The first is untouched: still advertised, still answering.
        assert (tmp_path / "data" / "nats.url").read_text() == url
        assert bb(["status"], env).returncode == 0
        joined = up(env, tmp_path / "join.log", "--join", "--lanes", "local")
        try:
            wait_text(tmp_path / "join.log", "joining")
            wait_text(tmp_path / "join.log", "ready")
            assert "Filestore" not in (tmp_path / "first.log").read_text()
        finally:
            joined.terminate()
            joined.wait(timeout=30)
        assert first.poll() is None  # the joiner's exit left the first alone
        assert (tmp_path / "data" / "nats.url").read_text() == url
    finally:
        first.terminate()
        first.wait(timeout=30)


def test_a_crashed_up_leaves_no_lock_behind(env, tmp_path):
    first = up(env, tmp_path / "first.log")
    wait_text(tmp_path / "first.log", "ready")
    # Kill it and its server (own process group) at once, as a crash would.
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    server = subprocess.run(["pgrep", "-f", str(tmp_path / "data" / "nats")],
                            capture_output=True, text=True)
    for pid in server.stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    second = up(env, tmp_path / "second.log")
    try:
        wait_text(tmp_path / "second.log", "ready")
        assert bb(["status"], env).returncode == 0
    finally:
        second.terminate()
        second.wait(timeout=30)


def test_up_without_a_model_key_says_what_is_missing(cli_env, tmp_path):
    env = {k: v for k, v in cli_env.items()
           if k not in ("BB_NATS_URL", "ANTHROPIC_API_KEY", "BB_SCRIPTED")}
    env["BB_DATA_DIR"] = str(tmp_path / "data")
    log = tmp_path / "up.log"
    proc = up(env, log)
    try:
        wait_text(log, "ready")
        text = log.read_text()
        assert "set ANTHROPIC_API_KEY" in text and "BB_SCRIPTED=1" in text
        r = bb(["submit", "a goal that will wait for a key", "--json"], env)
        assert r.returncode == 0, r.stderr
        wait_text(log, "arrived: a goal that will wait for a key")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_run_piped_says_which_task_waits_and_how_to_approve(env, tmp_path):
    """`bb run` against a running deployment, its output a pipe."""
    cfg = tmp_path / "bb.toml"
    cfg.write_text('[approvals]\ntask_types = ["aggregate"]\n')
    env = dict(env, BB_CONFIG=str(cfg))
    log = tmp_path / "up.log"
    proc = up(env, log)
    try:
        wait_text(log, "ready")
        run = subprocess.Popen(
            [sys.executable, "-m", "blackboard.cli", "run",
             "add structured audit logging to every write endpoint"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=ROOT,
        )
        assert run.stderr is not None
        seen: list[str] = []
        deadline = time.monotonic() + 90
        while not any("approve it:" in line for line in seen):
            assert time.monotonic() < deadline, "".join(seen)
            seen.append(run.stderr.readline())
        waits = next(line for line in seen if "waits for approval" in line)
        task_id = waits.split()[1]
        progress = [line for line in seen if " done  " in line]
        assert len(progress) >= 2  # a line per change, the last one included
        status = bb(["status"], env)
        assert "awaiting_approval" in status.stdout
        approve = next(line for line in seen if "approve it:" in line)
        assert f"approve {task_id}" in approve
        assert bb(["approve", task_id], env).returncode == 0
        out, err = run.communicate(timeout=90)
        assert run.returncode == 0, err
        assert "done" in out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_demo_uses_the_running_deployment(env, tmp_path):
    log = tmp_path / "up.log"
    proc = up(env, log)  # BB_SCRIPTED=1 (the env fixture)
    try:
        wait_text(log, "ready")
        r = bb(["demo", "--json"], env, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "failed" not in r.stderr
        goal = json.loads(r.stdout)["goal_id"]
        assert json.loads(r.stdout)["status"] == "done"
        # Answered by the deployment's own projector (it holds the file).
        wait_text(log, f"goal {goal} done")
        q = bb(["sql", f"SELECT status FROM goals WHERE goal_id = '{goal}'",
                "--json"], env)
        assert q.returncode == 0, q.stderr
        assert json.loads(q.stdout) == [{"status": "done"}]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_demo_refuses_a_deployment_on_real_models(env, tmp_path):
    real = {k: v for k, v in env.items() if k != "BB_SCRIPTED"}
    log = tmp_path / "up.log"
    proc = up(real, log)
    try:
        wait_text(log, "ready")
        r = bb(["demo"], real, timeout=60)
        assert r.returncode != 0
        assert "BB_SCRIPTED=1" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_ctrl_c_on_run_says_the_goal_goes_on_and_how_to_follow(env, tmp_path):
    cfg = tmp_path / "bb.toml"
    cfg.write_text('[approvals]\ntask_types = ["aggregate"]\n')
    env = dict(env, BB_CONFIG=str(cfg))
    log = tmp_path / "up.log"
    proc = up(env, log)
    try:
        wait_text(log, "ready")
        run = subprocess.Popen(
            [sys.executable, "-m", "blackboard.cli", "run", "a goal to leave"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=ROOT,
        )
        assert run.stderr is not None
        first = run.stderr.readline()
        goal = first.split()[1]
        seen = [first]
        while not any("approve it:" in line for line in seen):
            seen.append(run.stderr.readline())
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=30)
        assert run.returncode == 130
        assert f"stopped following goal {goal}" in err
        assert "keeps running in the deployment" in err
        assert f"status {goal} --watch" in err and "Traceback" not in err
        status = bb(["status", goal, "--json"], env)
        assert json.loads(status.stdout)["status"] == "running"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
