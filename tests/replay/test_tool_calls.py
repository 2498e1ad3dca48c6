"""Tool calls in `bb replay`: under the model call that asked for them, in the
text tree, the JSON and the HTML page, from the log or from its export.

The log is the in-memory store twin's: tests/tool_history.py appended to it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

from blackboard.cli import app
from blackboard.log.events import ModelCalled, ToolCallFinished, ToolCallStarted
from blackboard.log.memory import MemoryEventStore
from replay import reader, render
from replay.export import export_lines
from replay.trace import build_trace
from tests import tool_history as h

if TYPE_CHECKING:
    from pathlib import Path

    from blackboard.log.codec import Envelope


async def logged() -> list[Envelope]:
    store = MemoryEventStore()
    for e in h.events():
        await store.append(e)
    return await reader.from_store(store, h.GOAL)


def replay_cli(export: Path, *args: str) -> str:
    result = CliRunner().invoke(
        app,
        ["replay", "--from-file", str(export), *args],
        env={"BB_DATA_DIR": "/nonexistent", "BB_NATS_URL": "nats://127.0.0.1:9"},
    )
    assert result.exit_code == 0, result.output
    return result.stdout


async def test_the_trace_links_each_tool_call_to_the_answer_that_asked():
    trace = build_trace(await logged())
    t1, t2 = trace.tasks["T1"], trace.tasks["T2"]
    (a,) = t1.attempts
    assert [(u.event.call_id, u.status) for u in a.tools] == [
        ("c1", "ok"),
        ("c2", "error"),
        ("c3", "refused"),
    ]
    asking = a.calls[0]
    assert {u.call_seq for u in a.tools} == {asking.seq}
    assert {u.call_index for u in a.tools} == {0}
    first, second = t2.attempts
    assert first.outcome == "abandoned"
    assert [(u.event.call_id, u.status) for u in first.tools] == [
        ("c5", "ok"),
        ("c6", "running"),
    ]
    # Attempt 2 runs c6 again for attempt 1's answer, then asks for c7 itself.
    again, new = second.tools
    assert (again.event.call_id, again.status, again.event.attempt) == ("c6", "ok", 2)
    assert again.call_seq == first.calls[0].seq and again.call_attempt == (1, 1)
    assert (new.event.call_id, new.status) == ("c7", "running")
    assert new.call_seq == second.calls[0].seq and new.call_attempt == (1, 2)
    assert again.finished is not None and again.finished.duration_ms == 8.0


async def test_text_json_and_html_show_the_tool_calls(tmp_path: Path):
    envs = await logged()
    trace = build_trace(envs)
    export = tmp_path / "tools.ndjson"
    export.write_bytes(export_lines(envs))
    # The CLI, from the export, says what the renderers say of the log.
    text = replay_cli(export)
    assert text == render.render_text(trace)
    doc_text = replay_cli(export, "--format", "json")
    assert doc_text == render.render_json(trace)
    page = replay_cli(export, "--format", "html")
    assert page == render.render_html(trace)

    lines = text.splitlines()
    assert [x.strip("│ ") for x in lines if "tool " in x][:3] == [
        "tool workspace.read  read  ok  2.0 ms",
        "tool workspace.write  reversible  error  4.0 ms",
        "tool shell.run  irreversible  refused  0.0 ms",
    ]
    assert "asks for: workspace.read, workspace.write, shell.run" in text
    assert "  error: disk full" in text
    assert "  error: command not allowed: rm" in text
    assert '  result: {"lines": 3}' in text
    assert (
        "tool workspace.read  read  ok  8.0 ms  (asked by call 0 of attempt 1)" in text
    )
    # Long arguments are clipped to one line unless --full...
    write = next(x for x in lines if '"content": "x = 1' in x)
    assert write.endswith("…") and len(write.split("arguments: ")[1]) == render.CLIP
    # ...and shown whole with it (or for one task).
    full = replay_cli(export, "--full")
    assert json.dumps(h.LONG) in full
    task = replay_cli(export, "--task", "T1")
    assert json.dumps(h.LONG) in task

    doc = json.loads(doc_text)
    t1, t2 = doc["tasks"]
    (a,) = t1["attempts"]
    assert [x["name"] for x in a["calls"][0]["tool_calls"]] == [
        "workspace.read",
        "workspace.write",
        "shell.run",
    ]
    assert "tool_calls" not in a["calls"][1]  # the final answer asked for none
    write_call = a["tools"][1]
    assert write_call == {
        "seq": write_call["seq"],
        "finished_seq": write_call["seq"] + 1,
        "tool": "workspace.write",
        "call_id": "c2",
        "key": h.key("T1", "c2"),
        "source": "workspace",
        "effect": "reversible",
        "model_call": "mc-T1-10",
        "call_seq": a["calls"][0]["seq"],
        "call_index": 0,
        "arguments": {"path": "b.py", "content": h.LONG},
        "status": "error",
        "result": None,
        "error": "disk full",
        "duration_ms": 4.0,
        "started_at": "2026-01-01T00:00:00.014000+00:00",
        "finished_at": "2026-01-01T00:00:00.018000+00:00",
    }
    running: dict[str, Any] = t2["attempts"][1]["tools"][1]
    assert running["status"] == "running"
    assert running["duration_ms"] is None and running["finished_seq"] is None

    # The page carries the same data and draws each call (clipped) in its task.
    assert '"tool": "workspace.write"' in page
    assert "function tool(u)" in page and "clip(JSON.stringify(u.arguments))" in page


_DOM = """
const side = {innerHTML: ""};
const document = {
  getElementById: id => id === "trace" ? {textContent: DATA} : side,
  querySelectorAll: () => [],
};
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_page_shows_each_task_with_its_tool_calls():
    """The page's own script, run by node on a stub DOM: a click on each task."""
    page = render.render_html(build_trace(h.envelopes()))
    data = re.search(
        r'<script type="application/json" id="trace">(.*?)</script>', page, re.S
    )
    code = re.search(r"<script>\n(.*?)</script>", page, re.S)
    assert data is not None and code is not None
    script = (
        f"const DATA = {json.dumps(data.group(1))};\n{_DOM}{code.group(1)}\n"
        "for (const t of ['T1', 'T2']) { show(t); console.log(side.innerHTML + '\\x1e'); }"
    )
    out = subprocess.run(
        ["node", "-e", script], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    t1, t2, _ = out.split("\x1e")
    shown = r"<h4>call (\d)|<p>tool <b>([\w.]+)</b> \((\w+)\) — (\w+)"
    assert re.findall(shown, t1) == [
        ("0", "", "", ""),
        ("", "workspace.read", "read", "ok"),
        ("", "workspace.write", "reversible", "error"),
        ("", "shell.run", "irreversible", "refused"),
        ("1", "", "", ""),
    ]
    assert "<pre>disk full</pre>" in t1 and "— 4 ms</p>" in t1
    # Attempt 2 of T2 runs attempt 1's c6 first, then its own call asks for c7.
    assert re.findall(shown, t2.split("<h3>attempt 2")[1]) == [
        ("", "workspace.read", "read", "ok"),
        ("1", "", "", ""),
        ("", "workspace.read", "read", "running"),
    ]


async def test_a_trace_without_tool_calls_has_no_tool_keys():
    """Goals recorded before tool calls replay to the bytes they always did
    (tests/golden checks the whole files)."""
    plain = [
        env
        for env in await logged()
        if env.event.task_id != "T2"
        and not isinstance(env.event, (ToolCallStarted, ToolCallFinished))
        and not (isinstance(env.event, ModelCalled) and env.event.tool_calls)
    ]
    trace = build_trace(plain)
    (a,) = render.to_json(trace)["tasks"][0]["attempts"]
    assert "tools" not in a
    assert a["calls"] and all("tool_calls" not in c for c in a["calls"])
    text = render.render_text(trace)
    assert "tool " not in text and "asks for" not in text
