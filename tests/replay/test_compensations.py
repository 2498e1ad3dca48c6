"""A compensated goal in `bb replay` (text and JSON) and in the projection.

The goal is tests/tool_history.py's, cancelled with --compensate, then each
kind of compensation record on T1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from blackboard.engine.state import BoardState, evolve
from blackboard.log import events as ev
from blackboard.log.codec import Envelope
from projections.duckdb_view import DuckDBView
from projections.rows import Rows, add_event
from replay import render
from replay.trace import build_trace
from tests import tool_history as h

KEY = h.key("T1", "c9")


def compensated() -> list[Envelope]:
    def base(kind: str, ms: float, task: str | None = "T1") -> dict[str, Any]:
        return {
            "event_id": f"{kind}-{ms:g}",
            "goal_id": h.GOAL,
            "task_id": task,
            "at": h._at(ms),
            "actor": "compensate:ana",
        }

    common: dict[str, Any] = {"idempotency_key": KEY, "by": "ana"}
    tail: list[ev.AnyEvent] = [
        ev.GoalCancelled(**base("gc", 500, None), by="ana", compensate=True),
        ev.CompensationNeeded(
            **base("cn", 501),
            name="shell.run",
            effect="irreversible",
            arguments='{"command": "deploy"}',
            reason="an irreversible tool call: Blackboard has no undo for it",
            **common,
        ),
        ev.EffectCompensated(
            **base("ec", 502),
            name="workspace.write",
            result={"path": "b.py", "action": "restored"},
            **common,
        ),
        ev.CompensationFailed(
            **base("cf", 503),
            name="workspace.write",
            error="cannot undo the write of 'a.py': the file changed since",
            **common,
        ),
    ]
    return [Envelope(i, "s", e) for i, e in enumerate([*h.events(), *tail], 1)]


def test_replay_lists_the_steps_after_the_tree_in_stream_order():
    trace = build_trace(compensated())
    assert [(c.outcome, c.name, c.task_id) for c in trace.compensations] == [
        ("needs_human", "shell.run", "T1"),
        ("undone", "workspace.write", "T1"),
        ("failed", "workspace.write", "T1"),
    ]
    text = render.render_text(trace)
    assert "cancelled (compensate):  (by ana)" in text
    section = text.split("compensation (newest effect first)\n")[1].split("\n\n")[0]
    assert section.splitlines() == [
        '  needs a human shell.run (irreversible) {"command": "deploy"}: an'
        " irreversible tool call: Blackboard has no undo for it  (task T1, seq"
        f" {trace.compensations[0].seq})",
        '  undone        workspace.write  {"action": "restored", "path": "b.py"}'
        f"  (task T1, seq {trace.compensations[1].seq})",
        "  undo failed   workspace.write: cannot undo the write of 'a.py': the"
        f" file changed since  (task T1, seq {trace.compensations[2].seq})",
    ]
    doc = render.to_json(trace)
    assert [(c["outcome"], c["key"], c["by"]) for c in doc["compensations"]] == [
        ("needs_human", KEY, "ana"),
        ("undone", KEY, "ana"),
        ("failed", KEY, "ana"),
    ]
    assert doc["compensations"][1]["detail"] == {"path": "b.py", "action": "restored"}
    json.loads(render.render_json(trace))  # stays valid, sorted JSON
    # The page lists them under the goal, and each task's panel has its own.
    page = render.render_html(trace)
    listed = page.split('<h3 id="compensation">')[1].split("</pre>")[0]
    assert listed.count("workspace.write") == 2 and "needs a human shell.run" in listed
    assert "trace.compensations || []" in page


def test_a_page_never_compensated_has_no_section():
    envs = [Envelope(i, "s", e) for i, e in enumerate(h.events(), 1)]
    assert 'id="compensation"' not in render.render_html(build_trace(envs))


def test_a_goal_never_compensated_has_no_section_and_no_key():
    envs = [Envelope(i, "s", e) for i, e in enumerate(h.events(), 1)]
    trace = build_trace(envs)
    assert "compensation" not in render.render_text(trace)
    assert "compensations" not in render.to_json(trace)


def test_the_projection_has_a_row_per_step(tmp_path):
    state, rows = BoardState(), Rows()
    envs = compensated()
    for env in envs:
        evolve(state, env)
        add_event(rows, env)
    view = DuckDBView(tmp_path / "p.duckdb")
    try:
        view.apply(rows, state, envs[-1].seq)
        _, got = view.query(
            "SELECT outcome, name, origin, effect, detail, result->>'action', \"by\""
            " FROM compensations ORDER BY seq"
        )
    finally:
        view.close()
    assert got == [
        (
            "needs_human",
            "shell.run",
            "tool_call",
            "irreversible",
            "an irreversible tool call: Blackboard has no undo for it",
            None,
            "ana",
        ),
        ("undone", "workspace.write", "tool_call", None, None, "restored", "ana"),
        (
            "failed",
            "workspace.write",
            "tool_call",
            None,
            "cannot undo the write of 'a.py': the file changed since",
            None,
            "ana",
        ),
    ]
    # No task moved: compensation records are not outcomes.
    before = BoardState()
    for env in envs[: len(h.events())]:
        evolve(before, env)
    statuses = {t.task_id: t.status for t in state.goals[h.GOAL].tasks.values()}
    assert statuses == {
        t.task_id: t.status for t in before.goals[h.GOAL].tasks.values()
    }
    assert state.anomalies == []


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium")
def test_a_task_s_panel_shows_its_compensations_in_chromium(tmp_path):
    """The page's script runs in a real browser: a click on T1 (here, a call
    of the page's own show()) lists what was undone of it."""
    page = render.render_html(build_trace(compensated()))
    page = page.replace(
        "</script></body>", "show('T1');</script></body>"
    )  # what a click on the T1 box does
    path = tmp_path / "page.html"
    path.write_text(page)
    dom = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            path.as_uri(),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    panel = dom.split('<div id="side">')[1]
    assert "<h3>compensation</h3>" in panel
    assert "needs_human shell.run (irreversible) by ana" in panel
    assert "<p>undone workspace.write by ana</p>" in panel
    assert "<p>failed workspace.write by ana</p>" in panel
