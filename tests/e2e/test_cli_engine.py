"""`bb status`, `approve`, `resume` and `cancel` as a user runs them, against a
`bb up` that runs the scheduler and the workers in another process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.test_cli_basics import bb
from tests.waiting import bb_status_until, until

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def deployment(cli_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """`bb up` on the test server, with the engine tests' handlers."""
    env = dict(cli_env, BB_LEASE_SECONDS="2", PYTHONPATH=str(ROOT))
    log = tmp_path / "up.log"
    with log.open("w") as out:  # a file, not a pipe: a full pipe would block it
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "blackboard.cli",
                "up",
                "--handlers",
                "tests.engine_handlers:HANDLERS",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    until(lambda: "ready" in log.read_text(), what="bb up ready")
    try:
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log.read_text()


def submit(
    env: dict[str, str], tmp_path: Path, tasks: list[dict[str, Any]], *extra: str
) -> str:
    dag = tmp_path / "dag.json"
    dag.write_text(json.dumps({"tasks": tasks}))
    r = bb(["submit", "e2e goal", "--dag", str(dag), "--json", *extra], env)
    assert r.returncode == 0, r.stderr
    goal_id: str = json.loads(r.stdout)["goal_id"]
    return goal_id


def status(env: dict[str, str], goal_id: str) -> dict[str, Any]:
    r = bb(["status", goal_id, "--json"], env)
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def task(doc: dict[str, Any], task_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [t for t in doc["tasks"] if t["task_id"] == task_id]
    assert len(found) == 1, f"{task_id} not in status"
    return found[0]


def test_approval_gate_waits_for_bb_approve(deployment, tmp_path):
    goal_id = submit(
        deployment,
        tmp_path,
        [
            {"task_id": "check", "type": "echo", "lane": "local"},
            {
                "task_id": "deploy",
                "type": "gated",
                "lane": "local",
                "depends_on": ["check"],
            },
        ],
    )
    doc = bb_status_until(
        deployment,
        goal_id,
        lambda d: task(d, "deploy")["status"] == "awaiting_approval",
    )
    assert task(doc, "deploy")["status"] == "awaiting_approval"
    assert task(doc, "check")["status"] == "done"
    time.sleep(1.0)  # still waiting: nothing moves without a human
    assert status(deployment, goal_id)["status"] == "running"

    r = bb(["approve", "deploy", "--note", "looked fine", "--by", "ana"], deployment)
    assert r.returncode == 0, r.stderr
    assert f"approved deploy (gated on local) of goal {goal_id}" in r.stdout
    doc = bb_status_until(deployment, goal_id, lambda d: d["status"] != "running")
    assert doc["status"] == "done"
    assert task(doc, "deploy")["result"] == {"approved": True}
    # A second approval is refused: the task no longer waits.
    again = bb(["approve", "deploy"], deployment)
    assert again.returncode == 1 and "not awaiting approval" in again.stderr
    text = bb(["status", goal_id], deployment).stdout
    assert "done" in text and "deploy gated@local" in text


def test_breach_halts_then_bb_resume_finishes(deployment, tmp_path):
    goal_id = submit(
        deployment,
        tmp_path,
        [{"task_id": f"t{i}", "type": "echo", "lane": "local"} for i in range(4)],
        "--max-tasks",
        "2",
    )
    doc = bb_status_until(deployment, goal_id, lambda d: d["status"] != "running")
    assert doc["status"] == "halted"
    assert doc["by_status"].get("held", 0) >= 1
    r = bb(["resume", goal_id], deployment)
    assert r.returncode == 2 and "say which limit" in r.stderr
    r = bb(["resume", goal_id, "--max-tasks", "10", "--json"], deployment)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["released"]
    doc = bb_status_until(deployment, goal_id, lambda d: d["status"] != "running")
    assert doc["status"] == "done"
    assert doc["by_status"] == {"done": 4}


def test_cancel_stops_running_work(deployment, tmp_path):
    goal_id = submit(
        deployment,
        tmp_path,
        [
            {
                "task_id": "long",
                "type": "slow",
                "lane": "local",
                "payload": {"seconds": 60},
            },
            {
                "task_id": "after",
                "type": "echo",
                "lane": "local",
                "depends_on": ["long"],
            },
        ],
    )
    bb_status_until(
        deployment, goal_id, lambda d: task(d, "long")["status"] == "claimed"
    )
    r = bb(["cancel", goal_id, "--reason", "wrong goal"], deployment)
    assert r.returncode == 0, r.stderr
    doc = bb_status_until(
        deployment,
        goal_id,
        lambda d: d["open_tasks"] == 0 and d["status"] == "cancelled",
    )
    assert doc["status"] == "cancelled"
    assert {t["status"] for t in doc["tasks"]} == {"cancelled"}
    r = bb(["cancel", goal_id], deployment)
    assert r.returncode == 1 and "already cancelled" in r.stderr


def test_unknown_goal_and_task_are_one_line_errors(deployment):
    r = bb(["status", "NOSUCHGOAL"], deployment)
    assert r.returncode == 1 and "no goal 'NOSUCHGOAL'" in r.stderr
    r = bb(["approve", "nosuchtask"], deployment)
    assert r.returncode == 1 and "no task 'nosuchtask'" in r.stderr
    assert "Traceback" not in r.stderr
