"""`bb cancel --compensate` and `bb compensate` as a user runs them.

A `bb up` (scripted models, a real nats-server) runs a goal whose agent
writes to its workspace through the workspace tools (one file twice, one
once, one it creates) and calls an irreversible Python tool; the goal is then
cancelled with --compensate, in the CLI's own process. Every file is back to
its original bytes (the file written twice ends with its first content: only
undoing the newest write first gets there, since each undo refuses a file
that is not as its write left it), the irreversible call is reported in the
output and as a `compensation_needed` event, and compensating again does
nothing twice.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from blackboard.log import events as ev
from tests.e2e.test_cli_basics import bb
from tests.waiting import bb_status_until, until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from blackboard.log.store import JetStreamEventStore

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

ORIGINAL = {"a.txt": b"A as it was\n", "b.txt": b"B as it was\n"}

SCRIPT = [
    {
        "task_type": "execute",
        "turn": 0,
        "reply": "Writing the first drafts.",
        "tool_calls": [
            {
                "name": "workspace.write",
                "arguments": {"path": "a.txt", "content": "A1\n"},
            },
            {
                "name": "workspace.write",
                "arguments": {"path": "new.txt", "content": "made by the goal\n"},
            },
        ],
    },
    {
        "task_type": "execute",
        "turn": 1,
        "reply": "Revising, then recording the step.",
        "tool_calls": [
            {
                "name": "workspace.write",
                "arguments": {"path": "a.txt", "content": "A2\n"},
            },
            {
                "name": "workspace.write",
                "arguments": {"path": "b.txt", "content": "B1\n"},
            },
            {"name": "python.step", "arguments": {"n": 1}},
        ],
    },
    {
        "task_type": "execute",
        "turn": 2,
        "reply": "Rewrote a.txt twice and b.txt once, created new.txt, ran step one.",
    },
    {"reply": "ok"},
]


@pytest.fixture
def deployment(cli_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """`bb up` on scripted models, with an irreversible Python tool."""
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"rules": SCRIPT}))
    settings = tmp_path / "bb.toml"
    settings.write_text('[tools]\npython = ["tests.agents.ledger_tools:TOOLS"]\n')
    (tmp_path / "ledger").touch()
    env = dict(
        cli_env,
        BB_SCRIPTED="1",
        BB_SCRIPT=str(script),
        BB_CONFIG=str(settings),
        TOOL_LEDGER=str(tmp_path / "ledger"),
        PYTHONPATH=str(ROOT),
    )
    log = tmp_path / "up.log"
    with log.open("w") as out:  # a file, not a pipe: a full pipe would block it
        proc = subprocess.Popen(
            [sys.executable, "-m", "blackboard.cli", "up"],
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


def task(doc: dict[str, Any], task_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [t for t in doc["tasks"] if t["task_id"] == task_id]
    assert len(found) == 1, f"{task_id} not in status"
    return found[0]


def files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


async def test_cancel_compensate_restores_the_workspace_in_reverse_order(
    deployment: dict[str, str], tmp_path: Path, jetstream_store: JetStreamEventStore
):
    env = deployment
    work = {"title": "edit the files", "instruction": "revise a.txt and b.txt"}
    dag = tmp_path / "dag.json"
    dag.write_text(
        json.dumps(
            {
                "tasks": [
                    {
                        "task_id": "act",
                        "type": "execute",
                        "lane": "local",
                        "payload": work,
                        "requires_approval": True,
                    },
                    # Waits for a human after `act`: the goal is still open to cancel.
                    {
                        "task_id": "gate",
                        "type": "execute",
                        "lane": "local",
                        "payload": work,
                        "depends_on": ["act"],
                        "requires_approval": True,
                    },
                ]
            }
        )
    )
    r = bb(["submit", "edit then wait", "--dag", str(dag), "--json"], env)
    assert r.returncode == 0, r.stderr
    goal = json.loads(r.stdout)["goal_id"]
    bb_status_until(
        env, goal, lambda d: task(d, "act")["status"] == "awaiting_approval"
    )
    # The workspace as it was before the goal touched it.
    workspace = Path(env["BB_DATA_DIR"]) / "workspaces" / goal
    workspace.mkdir(parents=True)
    for name, data in ORIGINAL.items():
        (workspace / name).write_bytes(data)
    assert bb(["approve", "act", "--goal", goal], env).returncode == 0
    doc = bb_status_until(
        env, goal, lambda d: task(d, "gate")["status"] == "awaiting_approval"
    )
    assert task(doc, "act")["status"] == "done", task(doc, "act")["error"]
    assert files(workspace) == {
        "a.txt": b"A2\n",
        "b.txt": b"B1\n",
        "new.txt": b"made by the goal\n",
    }
    # Not before the goal is over: one line, nothing done.
    r = bb(["compensate", goal], env)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"bb: error: goal {goal} is running: cancel it first (bb cancel --compensate)"
    ]

    r = bb(["cancel", goal, "--compensate", "--by", "ana"], env, timeout=60)

    assert r.returncode == 3, r.stderr  # done, but a human has something to check
    assert "Traceback" not in r.stderr
    assert files(workspace) == ORIGINAL  # new.txt removed, a.txt's first bytes
    undone = [x for x in r.stdout.splitlines() if x.startswith("undone")]
    assert [x.split("  (task")[0] for x in undone] == [
        "undone  workspace.write b.txt: restored",
        "undone  workspace.write a.txt: restored",
        "undone  workspace.write new.txt: deleted",
        "undone  workspace.write a.txt: restored",
    ]
    assert "needs a human (1):" in r.stdout
    assert 'python.step (irreversible tool call) {"n": 1}  (task act)' in r.stdout
    assert "4 undone, 0 failed, 1 left to a human" in r.stdout
    assert (tmp_path / "ledger").read_text() == "step-1\n"  # not undone: reported

    events = [env_.event async for env_ in jetstream_store.read_goal(goal)]
    [cancelled] = [e for e in events if isinstance(e, ev.GoalCancelled)]
    assert cancelled.compensate and cancelled.by == "ana"
    steps = [
        e
        for e in events
        if isinstance(
            e, ev.EffectCompensated | ev.CompensationFailed | ev.CompensationNeeded
        )
    ]
    assert [type(e).__name__ for e in steps] == [
        "CompensationNeeded",
        *["EffectCompensated"] * 4,
    ]
    needed = steps[0]
    assert isinstance(needed, ev.CompensationNeeded)
    assert (needed.task_id, needed.name, needed.effect) == (
        "act",
        "python.step",
        "irreversible",
    )
    assert json.loads(needed.arguments) == {"n": 1}
    assert all(e.task_id == "act" and e.by == "ana" for e in steps)

    # Again: nothing is undone or recorded twice; the human's part is still due.
    r = bb(["compensate", goal, "--json"], env, timeout=60)
    assert r.returncode == 3, r.stderr
    out = json.loads(r.stdout)
    assert out["steps"] == [] and out["already_undone"] == 4 and not out["clean"]
    [human] = out["needs_human"]
    assert human["name"] == "python.step" and human["reported_before"]
    assert [e.event async for e in jetstream_store.read_goal(goal)] == events
    assert files(workspace) == ORIGINAL
    text = bb(["compensate", goal], env, timeout=60).stdout
    assert text.startswith(f"nothing left to undo for goal {goal}\n")
    r = bb(["cancel", goal, "--compensate"], env)
    assert r.returncode == 1
    assert f"already cancelled: `bb compensate {goal}` undoes" in r.stderr

    # The replay shows the compensation; the projection has it.
    r = bb(["replay", goal], env)
    assert r.returncode == 0, r.stderr
    section = r.stdout.split("compensation (newest effect first)\n")[1]
    lines = section.split("\n\n")[0].splitlines()
    assert [x.split()[0] for x in lines] == ["needs", *["undone"] * 4]
    assert "python.step (irreversible)" in lines[0]
    assert "cancelled (compensate)" in r.stdout
    # And the records after the task's end do not trouble re-running it.
    r = bb(["replay", goal, "--verify"], env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

    def projected() -> list[Any]:
        q = bb(
            ["sql", "SELECT outcome, name FROM compensations ORDER BY seq", "--json"],
            env,
        )
        return json.loads(q.stdout) if q.returncode == 0 else []

    until(lambda: len(projected()) == 5, what="compensations projected")
    assert [row["outcome"] for row in projected()] == ["needs_human", *["undone"] * 4]


def test_bb_run_compensates_a_goal_that_failed_when_configured(
    cli_env: dict[str, str], tmp_path: Path
):
    """`[policy] on_failure`: `bb run` running its own engine undoes."""
    plan = {
        "tasks": [
            {
                "id": "edit",
                "type": "execute",
                "lane": "local",
                "title": "edit",
                "instruction": "create new.txt",
                "depends_on": [],
            }
        ]
    }
    rules = [
        {"task_type": "plan", "reply": json.dumps(plan)},
        {
            "task_type": "execute",
            "turn": 0,
            "reply": "",
            "tool_calls": [
                {
                    "name": "workspace.write",
                    "arguments": {"path": "new.txt", "content": "made\n"},
                }
            ],
        },
        # Nothing usable, twice: the task fails, and the goal with it.
        {"task_type": "execute", "reply": ""},
        {"reply": "ok"},
    ]
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"rules": rules}))
    settings = tmp_path / "bb.toml"
    settings.write_text('[policy]\non_failure = "compensate"\n')
    env = dict(cli_env, BB_SCRIPTED="1", BB_SCRIPT=str(script), BB_CONFIG=str(settings))
    r = bb(["run", "make a file", "--with-workers", "--json"], env, timeout=120)
    assert r.returncode == 1, r.stderr  # the goal failed
    out = json.loads(r.stdout)
    assert out["status"] == "failed"
    [step] = out["compensation"]["steps"]
    assert (step["name"], step["outcome"], step["detail"]["action"]) == (
        "workspace.write",
        "undone",
        "deleted",
    )
    assert out["compensation"]["clean"]
    assert not (Path(out["workspace"]) / "new.txt").exists()
