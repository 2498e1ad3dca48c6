"""`bb replay`: the same log gives the same bytes, from NATS or from an export
with no server; `--verify` re-runs handlers on the recorded answers; a crash
shows both attempts; `--at` and `--task`; the HTML page renders a DAG."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from typing import Any

import pytest
from typer.testing import CliRunner

import agents.handlers
from agents.prompts import EXECUTE, Prompt
from blackboard.cli import app
from blackboard.engine import control as client
from blackboard.log.events import TaskClaimed
from blackboard.runtime import config
from blackboard.runtime.inprocess import running
from replay import reader, render, trace, verify
from tests.e2e.test_cli_basics import bb
from tests.engine.conftest import spec, submit
from tests.engine.test_engine_faults import worker_process
from tests.engine_handlers import HANDLERS
from tests.waiting import until_async


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `bb demo` run, its data dir kept; no server left running."""
    import os

    data = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BB_", "OTEL_"))}
    env["BB_DATA_DIR"] = str(data / "bb")
    r = bb(["demo", "--json"], env, timeout=120)
    assert r.returncode == 0, r.stderr
    return {"env": env, "goal": json.loads(r.stdout)["goal_id"], "dir": data}


@pytest.mark.integration
def test_demo_replays_to_the_same_bytes_from_the_log_and_from_its_export(demo):
    env, goal = demo["env"], demo["goal"]
    outs = {}
    for fmt in ("text", "json", "html"):
        # No server is running: replay starts the embedded one on the data dir.
        first = bb(["replay", goal, "--format", fmt], env, timeout=60)
        second = bb(["replay", goal, "--format", fmt], env, timeout=60)
        assert first.returncode == 0, first.stderr
        assert first.stdout == second.stdout
        outs[fmt] = first.stdout
    export = demo["dir"] / "goal.ndjson"
    r = bb(["export", goal, "-o", str(export)], env, timeout=60)
    assert r.returncode == 0, r.stderr
    offline = dict(env, BB_NATS_URL="nats://127.0.0.1:9", BB_DATA_DIR="/nonexistent")
    for fmt, expected in outs.items():
        r = bb(["replay", "--from-file", str(export), "--format", fmt], offline)
        assert r.returncode == 0, r.stderr
        assert r.stdout == expected
    text = outs["text"]
    assert "NEED: which refund amount is authoritative" in text
    # The agents' tool calls, under the model call that asked for them.
    assert "asks for: orders.describe_service, orders.list_endpoints" in text
    assert "tool workspace.write  reversible  ok" in text
    assert '"path": "patches/post-orders.patch"' in text
    assert "frontier" in text and "(scripted)" in text
    doc = json.loads(outs["json"])
    assert doc["format_version"] == 1
    assert doc["goal"]["status"] == "done" and doc["goal"]["tasks"] == 30
    assert {t["lane"] for t in doc["totals"]} == {"frontier", "local"}


@pytest.mark.integration
def test_verify_passes_on_the_demo_and_reports_a_changed_prompt(demo, monkeypatch):
    export = demo["dir"] / "verify.ndjson"
    assert bb(["export", demo["goal"], "-o", str(export)], demo["env"], timeout=60).returncode == 0
    envs = reader.from_file(export)
    s = config.load(env={}, path=None)
    report = _run(verify.verify(s, envs, demo["goal"]))
    assert report.divergences == []
    assert report.tasks == 30 and report.attempts >= 30

    changed = Prompt(
        name="execute", version=4, system=EXECUTE.system,
        user="Do this well.\n" + EXECUTE.user,
    )
    monkeypatch.setattr(agents.handlers, "EXECUTE", changed)
    report = _run(verify.verify(s, envs, demo["goal"]))
    assert report.divergences
    first = report.divergences[0]
    assert first.where == "model call 0: the request"
    assert '"prompt_version": "execute/v3"' in first.diff()
    assert '"prompt_version": "execute/v4"' in first.diff()
    assert "Do this well." in first.diff()
    # The command says so and exits 1.
    result = CliRunner().invoke(
        app, ["replay", "--from-file", str(export), "--verify"], env={"BB_DATA_DIR": "/nonexistent"}
    )
    assert result.exit_code == 1, result.output
    assert "execute/v3" in result.output
    # The summary comes first: how many tasks differ and where; details after.
    lines = result.output.splitlines()
    assert lines[1].startswith("DIFFERS: ") and "model call 0" in lines[1]
    differing = int(lines[1].split()[1])
    assert differing == len(report.divergences)
    details = [x for x in lines if x.startswith("task ") and "model call 0" in x]
    assert len(details) == differing
    assert all(len(x) <= 162 for x in lines if x.startswith("  "))


@pytest.mark.integration
def test_verify_reports_a_changed_result(demo, monkeypatch):
    export = demo["dir"] / "verify2.ndjson"
    assert bb(["export", demo["goal"], "-o", str(export)], demo["env"], timeout=60).returncode == 0
    envs = reader.from_file(export)
    original = agents.handlers.Agents.aggregate

    async def shouting(self: Any, ctx: Any) -> object:
        out = await original(self, ctx)
        if isinstance(out, dict):
            out = {**out, "summary": out["summary"].upper()}
        return out

    monkeypatch.setattr(agents.handlers.Agents, "aggregate", shouting)
    report = _run(verify.verify(config.load(env={}, path=None), envs, demo["goal"]))
    (d,) = report.divergences
    assert d.where == "result"
    assert "STRUCTURED AUDIT LOGGING" in d.diff()


@pytest.mark.integration
def test_at_and_task(demo):
    env, goal = demo["env"], demo["goal"]
    doc = json.loads(bb(["replay", goal, "--format", "json"], env, timeout=60).stdout)
    plan_done = next(
        a["calls"][0]["seq"] for t in doc["tasks"] if t["task_id"] == "plan"
        for a in t["attempts"]
    )
    early = json.loads(
        bb(["replay", goal, "--json", "--at", str(plan_done)], env, timeout=60).stdout
    )
    assert early["goal"]["status"] == "running"
    assert early["goal"]["tasks"] == 1 and early["goal"]["last_seq"] == plan_done
    r = bb(["replay", goal, "--task", "plan"], env, timeout=60)
    assert r.returncode == 0
    assert r.stdout.startswith("plan  plan@frontier  done")
    assert '"tasks": [' in r.stdout  # the full answer, not folded
    r = bb(["replay", goal, "--task", "nope"], env, timeout=60)
    assert r.returncode == 1 and "no task 'nope'" in r.stderr


def test_bad_export_line_is_named(tmp_path):
    f = tmp_path / "bad.ndjson"
    f.write_text('{"seq": 1, "subject": "x", "event": {"type": "goal_submitted"}}\n')
    r = bb(["replay", "--from-file", str(f)], {"PATH": "/usr/bin"})
    assert r.returncode == 1 and "line 1" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.integration
async def test_a_crash_and_its_redelivery_show_both_attempts(store, nats_url, tmp_path):
    s = config.load(env={"BB_LEASE_SECONDS": "2"}, path=None)
    marker = tmp_path / "starts"
    first = worker_process(nats_url, tmp_path, "w1.log")
    try:
        async with running(store, s, HANDLERS, lanes=[]):
            goal_id = await submit(
                store, s, [spec("s", "slow", seconds=1.5, marker=str(marker))]
            )
            await until_async(lambda: marker.exists() and str(first.pid) in marker.read_text())
            first.kill()
            first.wait()
            second = worker_process(nats_url, tmp_path, "w2.log")
            goal = await client.wait_goal(store, goal_id, timeout_s=60)
            second.terminate()
            second.wait()
    finally:
        if first.poll() is None:
            first.kill()
    assert goal.status == "done"
    envs = [e async for e in store.read_goal(goal_id)]
    t = trace.build_trace(envs, goal_id)
    a1, a2 = t.tasks["s"].attempts
    assert (a1.outcome, a2.outcome) == ("abandoned", "done")
    assert a1.worker != a2.worker
    text = render.render_text(t)
    assert f"attempt 1  {a1.worker}" in text and "abandoned" in text
    assert f"attempt 2  {a2.worker}" in text
    claims = [e for e in envs if isinstance(e.event, TaskClaimed)]
    assert len(claims) == 2


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (run.sh test installs it)")
def test_html_page_renders_the_dag_in_headless_chromium(demo, tmp_path):
    page = tmp_path / "trace.html"
    r = bb(["replay", demo["goal"], "--format", "html", "-o", str(page)], demo["env"], timeout=60)
    assert r.returncode == 0, r.stderr
    html = page.read_text()
    assert "<script src" not in html and "http://" not in html and "https://" not in html
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
         f"--screenshot={shot}", "--window-size=1400,900", page.as_uri()],
        check=True, capture_output=True, timeout=60,
    )
    width, height, pixels = _png(shot.read_bytes())
    assert (width, height) == (1400, 900)
    colours = set(pixels)
    # The status colours of the DAG's boxes are on the page: done is green.
    assert (0x2E, 0x9D, 0x5B) in colours
    non_white = sum(1 for p in pixels if p != (255, 255, 255))
    assert non_white > 0.02 * width * height


# --- helpers ----------------------------------------------------------------


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def _png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Decode an 8-bit RGB/RGBA PNG with the standard library only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = colour = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if tag == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 4 if colour == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytearray] = []
    prev = bytearray(stride)
    i = 0
    for _ in range(height):
        f, line = raw[i], bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 255
        rows.append(line)
        prev = line
    pixels = [
        (row[x], row[x + 1], row[x + 2]) for row in rows for x in range(0, stride, bpp)
    ]
    return width, height, pixels
