"""A trace as text, JSON or one self-contained HTML page. Pure.

Every renderer iterates in a fixed order (creation order of tasks, stream order
of events) and formats numbers with fixed precision, so the same log always
gives the same bytes.

JSON (``format_version`` 1) is an object::

    {"format_version": 1,
     "goal": {goal_id, text, status, summary, reason, submitted_at,
              finished_at, submitted_by, limits, tasks, tokens, cost_usd,
              first_seq, last_seq, events},
     "notes": [{seq, at, what, detail}],            goal-level: halts, resumes...
     "tasks": [{task_id, type, lane, parent_id, depth, depends_on, payload,
                status, result, error, children, needs, notes,
                attempts: [{n, dispatch, worker, claimed_at, finished_at,
                            outcome, error, spawned,
                            calls: [{seq, index, provider, model, lane,
                                     prompt_version, request, text, error,
                                     tokens_in, tokens_out, tokens_cached,
                                     cost_usd, latency_ms, request_hash,
                                     scripted, tool_calls}],
                            effects: [{name, key, status, request, result,
                                       error}],
                            tools: [{seq, finished_seq, tool, call_id, key,
                                     source, effect, model_call, call_seq,
                                     call_index, arguments, status, result,
                                     error, duration_ms, started_at,
                                     finished_at}]}]}],   in creation order
     "totals": [{lane, model, calls, failed_calls, tokens_in, tokens_out,
                 tokens_cached, cost_usd, latency_ms, scripted}],
     "compensations": [{seq, at, task_id, outcome, name, origin, key, detail,
                        effect, arguments, by}]}          in stream order

``compensations`` is there only when the goal's effects were compensated
(``outcome``: ``undone``, ``failed`` or ``needs_human``; ``detail`` is what the
compensator returned, the error, or why a human is needed).

A call has ``tool_calls`` (``{id, name, arguments}``, as its answer asked) and
an attempt ``tools`` only when there are any, so the JSON of a goal without
tool calls is what it was before they existed. Each of ``tools`` names the
model call that asked for it by event id (``model_call``) and, when that call
is in the log, by its ``seq`` (``call_seq``: a ``seq`` in ``calls``, possibly
of an earlier attempt whose conversation this one resumed) and ``call_index``.
``status`` is ``running``, ``ok``, ``error`` or ``refused``; ``duration_ms`` is
null until the call finished.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

import msgspec

from replay.trace import ToolUse

if TYPE_CHECKING:
    from datetime import datetime

    from replay.trace import Attempt, Call, Compensation, TaskTrace, Trace

__all__ = ["FORMAT_VERSION", "render_html", "render_json", "render_text", "to_json"]

FORMAT_VERSION = 1
FOLD_LINES = 3
"""Lines of a prompt or answer shown when not ``--full``."""
CLIP = 100
"""Characters of a tool call's arguments, result or error shown when not
``--full``."""
CLIP_HTML = 400
"""The same, on the HTML page."""


# --- JSON -------------------------------------------------------------------


def _ts(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _call_json(c: Call) -> dict[str, Any]:
    e = c.event
    doc: dict[str, Any] = {
        "seq": c.seq,
        "index": e.call_index,
        "provider": e.provider,
        "model": e.model,
        "lane": e.lane,
        "prompt_version": e.prompt_version,
        "request": e.request,
        "text": e.text,
        "error": e.error,
        "tokens_in": e.tokens_in,
        "tokens_out": e.tokens_out,
        "tokens_cached": e.tokens_cached,
        "cost_usd": round(e.cost_usd, 9),
        "latency_ms": round(e.latency_ms, 3),
        "request_hash": e.request_hash,
        "scripted": e.scripted,
    }
    if e.tool_calls:
        doc["tool_calls"] = list(e.tool_calls)
    return doc


def _tool_json(u: ToolUse) -> dict[str, Any]:
    e, st, fin = u.event, u.started, u.finished
    return {
        "seq": u.seq,
        "finished_seq": u.finished_seq,
        "tool": e.tool,
        "call_id": e.call_id,
        "key": u.key,
        "source": st.source if st else None,
        "effect": e.effect,
        "model_call": st.model_call if st else None,
        "call_seq": u.call_seq,
        "call_index": u.call_index,
        "arguments": st.arguments if st else None,
        "status": u.status,
        "result": fin.result if fin else None,
        "error": fin.error if fin else None,
        "duration_ms": round(fin.duration_ms, 3) if fin else None,
        "started_at": _ts(st.at) if st else None,
        "finished_at": _ts(fin.at) if fin else None,
    }


def _attempt_json(a: Attempt) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "n": a.n,
        "dispatch": a.dispatch,
        "worker": a.worker,
        "claimed_at": _ts(a.claimed_at),
        "finished_at": _ts(a.finished_at),
        "outcome": a.outcome,
        "error": a.error,
        "spawned": a.spawned,
        "calls": [_call_json(c) for c in a.calls],
        "effects": [
            {
                "name": f.name,
                "key": f.key,
                "status": f.status,
                "request": f.request,
                "result": f.result,
                "error": f.error,
            }
            for f in a.effects
        ],
    }
    if a.tools:
        doc["tools"] = [_tool_json(u) for u in a.tools]
    return doc


def _task_json(t: TaskTrace) -> dict[str, Any]:
    c = t.created
    return {
        "task_id": t.task_id,
        "type": c.task_type,
        "lane": c.lane,
        "parent_id": c.parent_id,
        "depth": c.depth,
        "depends_on": list(c.depends_on),
        "payload": c.payload,
        "status": t.status,
        "result": t.result,
        "error": t.error,
        "children": t.children,
        "needs": t.needs,
        "notes": [
            {"seq": n.seq, "at": _ts(n.at), "what": n.what, "detail": n.detail}
            for n in t.notes
        ],
        "attempts": [_attempt_json(a) for a in t.attempts],
    }


def to_json(trace: Trace) -> dict[str, Any]:
    """The trace as JSON-able data (documented in the module docstring)."""
    doc = _trace_json(trace)
    if trace.compensations:
        doc["compensations"] = [
            {
                "seq": c.seq,
                "at": _ts(c.at),
                "task_id": c.task_id,
                "outcome": c.outcome,
                "name": c.name,
                "origin": c.origin,
                "key": c.key,
                "detail": c.detail,
                "effect": c.effect,
                "arguments": c.arguments,
                "by": c.by,
            }
            for c in trace.compensations
        ]
    return doc


def _trace_json(trace: Trace) -> dict[str, Any]:
    s = trace.submitted
    return {
        "format_version": FORMAT_VERSION,
        "goal": {
            "goal_id": trace.goal_id,
            "text": s.text if s else "",
            "status": trace.status,
            "summary": trace.summary,
            "reason": trace.reason,
            "submitted_at": _ts(s.at) if s else None,
            "submitted_by": s.submitted_by if s else "",
            "finished_at": _ts(trace.finished_at),
            "limits": {
                "max_depth": s.limits.max_depth,
                "max_tasks": s.limits.max_tasks,
                "max_tokens": s.limits.max_tokens,
                "max_cost_usd": s.limits.max_cost_usd,
            }
            if s
            else {},
            "tasks": len(trace.tasks),
            "tokens": trace.tokens,
            "cost_usd": round(trace.cost_usd, 9),
            "first_seq": trace.first_seq,
            "last_seq": trace.last_seq,
            "events": trace.events,
        },
        "notes": [
            {"seq": n.seq, "at": _ts(n.at), "what": n.what, "detail": n.detail}
            for n in trace.notes
        ],
        "tasks": [_task_json(t) for t in trace.tasks.values()],
        "totals": [
            {
                "lane": t.lane,
                "model": t.model,
                "calls": t.calls,
                "failed_calls": t.failed,
                "tokens_in": t.tokens_in,
                "tokens_out": t.tokens_out,
                "tokens_cached": t.tokens_cached,
                "cost_usd": round(t.cost_usd, 9),
                "latency_ms": round(t.latency_ms, 3),
                "scripted": t.scripted,
            }
            for _, t in sorted(trace.totals.items())
        ],
    }


def render_json(trace: Trace) -> str:
    """Stable JSON: sorted keys, one indentation, a final newline."""
    raw = msgspec.json.encode(to_json(trace), order="sorted")
    return msgspec.json.format(raw, indent=1).decode() + "\n"


# --- text -------------------------------------------------------------------


def _clock(at: datetime | None) -> str:
    return at.strftime("%H:%M:%S.%f")[:-3] if at is not None else "?"


def _ms(start: datetime, end: datetime | None) -> str:
    if end is None:
        return ""
    return f" ({(end - start).total_seconds() * 1000:,.0f} ms)"


def _fold(text: str, indent: str, full: bool) -> list[str]:
    lines = text.splitlines() or [""]
    shown = lines if full else lines[:FOLD_LINES]
    out = [indent + line for line in shown]
    if len(lines) > len(shown):
        out.append(f"{indent}… {len(lines) - len(shown)} more lines (--full)")
    return out


def _prompt(call: Call) -> str:
    messages = call.event.request.get("messages", [])
    if isinstance(messages, list) and messages:
        last = messages[-1]
        if isinstance(last, dict):
            return str(last.get("content", ""))
    return ""


def _call_lines(c: Call, pad: str, full: bool) -> list[str]:
    e = c.event
    label = f"{e.provider} {e.model}" + (" (scripted)" if e.scripted else "")
    head = (
        f"{pad}call {e.call_index}  {label}  {e.prompt_version or '-'}  "
        f"in {e.tokens_in + e.tokens_cached:,}  out {e.tokens_out:,}  "
        f"${e.cost_usd:.6f}  {e.latency_ms:,.0f} ms"
    )
    out = [head]
    if e.error is not None:
        out.append(f"{pad}  error: {e.error}")
        return out
    out.append(f"{pad}  prompt:")
    out += _fold(_prompt(c), pad + "    ", full)
    out.append(f"{pad}  answer:")
    out += _fold(e.text, pad + "    ", full)
    if e.tool_calls:
        names = ", ".join(str(t.get("name", "?")) for t in e.tool_calls)
        out.append(f"{pad}  asks for: {_clip(names, full)}")
    return out


def _clip(text: str, full: bool) -> str:
    if full:
        return text
    flat = " ".join(text.split())
    return flat if len(flat) <= CLIP else flat[: CLIP - 1] + "…"


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _tool_lines(u: ToolUse, a: Attempt, pad: str, full: bool) -> list[str]:
    e, st, fin = u.event, u.started, u.finished
    took = f"  {fin.duration_ms:,.1f} ms" if fin is not None else ""
    asked = ""
    if u.call_attempt is not None and u.call_attempt != (a.dispatch, a.n):
        dispatch, n = u.call_attempt
        run = f"attempt {n}" + (f" (dispatch {dispatch})" if dispatch > 1 else "")
        asked = f"  (asked by call {u.call_index} of {run})"
    out = [f"{pad}tool {e.tool}  {e.effect}  {u.status}{took}{asked}"]
    if st is not None:
        out.append(f"{pad}  arguments: {_clip(_json_text(st.arguments), full)}")
    if fin is not None and fin.error is not None:
        out.append(f"{pad}  error: {_clip(fin.error, full)}")
    elif fin is not None:
        out.append(f"{pad}  result: {_clip(_json_text(fin.result), full)}")
    return out


def _run_lines(a: Attempt, pad: str, full: bool) -> list[str]:
    """An attempt's model calls and tool calls, in stream order.

    A tool call comes under the model call that asked for it; one asked for by
    an earlier attempt's call (a resumed conversation) stands on its own.
    """
    asked: dict[int, list[ToolUse]] = {}
    items: list[tuple[int, Call | ToolUse]] = [(c.seq, c) for c in a.calls]
    mine = {c.seq for c in a.calls}
    for u in a.tools:
        if u.call_seq in mine:
            asked.setdefault(u.call_seq or 0, []).append(u)
        else:
            items.append((u.seq, u))
    out: list[str] = []
    for _, item in sorted(items, key=lambda x: x[0]):
        if isinstance(item, ToolUse):
            out += _tool_lines(item, a, pad, full)
            continue
        out += _call_lines(item, pad, full)
        for u in asked.get(item.seq, []):
            out += _tool_lines(u, a, pad + "  ", full)
    return out


def _task_head(t: TaskTrace) -> str:
    c = t.created
    title = c.payload.get("title") if isinstance(c.payload, dict) else None
    tail = f"  {title}" if isinstance(title, str) and title else ""
    deps = f"  after {', '.join(c.depends_on)}" if c.depends_on else ""
    return f"{t.task_id}  {c.task_type}@{c.lane}  {t.status}{tail}{deps}"


def _task_lines(t: TaskTrace, pad: str, full: bool) -> list[str]:
    out: list[str] = []
    for a in t.attempts:
        # Attempts restart at 1 when a task is dispatched again (after the
        # children it waited for): the dispatch tells those runs apart.
        run = f"attempt {a.n}" + (f" (dispatch {a.dispatch})" if a.dispatch > 1 else "")
        out.append(
            f"{pad}{run}  {a.worker}  {_clock(a.claimed_at)}"
            f"{_ms(a.claimed_at, a.finished_at)}  {a.outcome}"
        )
        if a.error:
            out.append(f"{pad}  error: {a.error}")
        out += _run_lines(a, pad + "  ", full)
        for f in a.effects:
            detail = (
                f.error
                if f.status == "failed"
                else json.dumps(f.result, sort_keys=True)
            )
            out.append(f"{pad}  effect {f.name}: {f.status}  {detail}")
        if a.spawned:
            out.append(f"{pad}  spawned {len(a.spawned)} task(s)")
    for need in t.needs:
        out.append(f"{pad}NEED: {need}")
    for n in t.notes:
        out.append(f"{pad}{n.what}{': ' + n.detail if n.detail else ''}  (seq {n.seq})")
    if t.status == "done" and t.result is not None and full:
        out.append(f"{pad}result: {json.dumps(t.result, sort_keys=True)}")
    return out


_OUTCOME = {"undone": "undone", "failed": "undo failed", "needs_human": "needs a human"}


def _compensation_line(c: Compensation, full: bool) -> str:
    head = f"  {_OUTCOME.get(c.outcome, c.outcome):<14}{c.name}"
    if c.outcome == "needs_human":
        args = f" {_clip(c.arguments, full)}" if c.arguments else ""
        head += f" ({c.effect}){args}: {c.detail}"
    elif c.outcome == "failed":
        head += f": {_clip(str(c.detail), full)}"
    else:
        head += f"  {_clip(_json_text(c.detail), full)}"
    return f"{head}  (task {c.task_id}, seq {c.seq})"


def render_text(trace: Trace, *, full: bool = False, task: str | None = None) -> str:
    """A tree that reads well in a terminal; long prompts folded unless ``full``."""
    out: list[str] = []
    s = trace.submitted
    if task is None:
        out.append(f"goal {trace.goal_id}  {trace.status}  {s.text if s else ''}")
        if s is not None:
            out.append(
                f"  submitted {s.at.isoformat()} by {s.submitted_by}; "
                f"events {trace.first_seq}..{trace.last_seq} ({trace.events})"
            )
        out.append(
            f"  tasks {len(trace.tasks)}  tokens {trace.tokens:,}  "
            f"cost ${trace.cost_usd:.6f}"
        )
        if trace.summary:
            out.append(f"  summary: {trace.summary}")
        if trace.reason:
            out.append(f"  reason: {trace.reason}")
        for n in trace.notes:
            out.append(
                f"  {n.what}{': ' + n.detail if n.detail else ''}  (seq {n.seq})"
            )
        out.append("")

    def walk(t: TaskTrace, prefix: str, last: bool, depth: int) -> None:
        branch = "└─ " if last else "├─ "
        out.append(prefix + branch + _task_head(t))
        inner = prefix + ("   " if last else "│  ")
        out.extend(_task_lines(t, inner, full))
        kids = [trace.tasks[c] for c in t.children if c in trace.tasks]
        for i, child in enumerate(kids):
            walk(child, inner, i == len(kids) - 1, depth + 1)

    if task is not None:
        t = trace.tasks[task]
        out.append(_task_head(t))
        out.append(f"  payload: {json.dumps(t.created.payload, sort_keys=True)}")
        out.extend(_task_lines(t, "  ", True))
        if t.result is not None:
            out.append(f"  result: {json.dumps(t.result, sort_keys=True)}")
        return "\n".join(out) + "\n"
    roots = trace.roots
    for i, root in enumerate(roots):
        walk(root, "", i == len(roots) - 1, 0)
    out.append("")
    if trace.compensations:
        out.append("compensation (newest effect first)")
        out.extend(_compensation_line(c, full) for c in trace.compensations)
        out.append("")
    out.append(
        f"{'lane':<10} {'model':<32} {'calls':>5} {'tokens in':>10} "
        f"{'tokens out':>10} {'cost USD':>12}"
    )
    for _, total in sorted(trace.totals.items()):
        label = total.model + (" (scripted)" if total.scripted else "")
        out.append(
            f"{total.lane:<10} {label:<32} {total.calls:>5} {total.input_tokens:>10,}"
            f" {total.tokens_out:>10,} {total.cost_usd:>12.6f}"
        )
    return "\n".join(out) + "\n"


# --- HTML -------------------------------------------------------------------

_COLOURS = {
    "done": "#2e9d5b",
    "failed": "#d64545",
    "cancelled": "#8a8a8a",
    "held": "#e0a030",
    "awaiting_approval": "#e0a030",
    "needs_followup": "#4a7fd4",
    "claimed": "#4a7fd4",
    "ready": "#9bb8e8",
    "pending": "#c8c8c8",
}
_W, _H, _GX, _GY = 190, 34, 60, 14


def _levels(trace: Trace) -> dict[str, int]:
    """Column of each task: after its dependencies and its parent."""
    level: dict[str, int] = {}
    for t in trace.tasks.values():  # creation order: deps and parents first
        c = t.created
        before = [level.get(d, 0) + 1 for d in c.depends_on]
        if c.parent_id in level:
            before.append(level[c.parent_id or ""] + 1)
        level[t.task_id] = max(before, default=0)
    return level


def render_html(trace: Trace) -> str:
    """One self-contained page: the DAG as SVG; click a task for its calls."""
    level = _levels(trace)
    rows: dict[int, int] = {}
    pos: dict[str, tuple[int, int]] = {}
    for t in trace.tasks.values():
        col = level[t.task_id]
        row = rows.get(col, 0)
        rows[col] = row + 1
        pos[t.task_id] = (20 + col * (_W + _GX), 20 + row * (_H + _GY))
    width = 40 + (max(level.values(), default=0) + 1) * (_W + _GX)
    height = 40 + max(rows.values(), default=1) * (_H + _GY)
    edges: list[str] = []
    for t in trace.tasks.values():
        x2, y2 = pos[t.task_id]
        links = [(d, "dep") for d in t.created.depends_on]
        if (
            t.created.parent_id in pos
            and t.created.parent_id not in t.created.depends_on
        ):
            links.append((t.created.parent_id or "", "spawn"))
        for src, kind_ in links:
            if src not in pos:
                continue
            x1, y1 = pos[src]
            dash = ' stroke-dasharray="5,4"' if kind_ == "spawn" else ""
            edges.append(
                f'<line x1="{x1 + _W}" y1="{y1 + _H // 2}" x2="{x2}" y2="{y2 + _H // 2}"'
                f' stroke="#7a8699" stroke-width="1.2"{dash}/>'
            )
    nodes: list[str] = []
    for t in trace.tasks.values():
        x, y = pos[t.task_id]
        colour = _COLOURS.get(t.status, "#c8c8c8")
        title = (
            t.created.payload.get("title")
            if isinstance(t.created.payload, dict)
            else None
        )
        full = (
            f"{t.created.task_type}@{t.created.lane} {t.status}: {title or t.task_id}"
        )
        name = str(title or f"{t.created.task_type}: {t.task_id}")
        # The end of a title tells tasks apart ("... to POST /orders").
        short = name if len(name) <= 28 else "…" + name[-27:]
        nodes.append(
            f'<g class="node" data-task="{html.escape(t.task_id)}">'
            f"<title>{html.escape(full)}</title>"
            f'<rect x="{x}" y="{y}" width="{_W}" height="{_H}" rx="6" fill="{colour}"/>'
            f'<text x="{x + 8}" y="{y + 21}">{html.escape(short)}</text></g>'
        )
    data = json.dumps(to_json(trace), sort_keys=True, ensure_ascii=True)
    data = data.replace("</", "<\\/")  # never close the script element early
    goal = trace.submitted.text if trace.submitted else trace.goal_id
    legend = " ".join(
        f'<span style="background:{c}">{html.escape(s)}</span>'
        for s, c in _COLOURS.items()
    )
    undo = ""
    if trace.compensations:
        lines = "\n".join(
            _compensation_line(c, full=False).strip() for c in trace.compensations
        )
        undo = (
            '<h3 id="compensation">compensation (newest effect first)</h3>'
            f"<pre>{html.escape(lines)}</pre>"
        )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(goal)} — bb replay</title>
<style>
body{{font-family:system-ui,sans-serif;margin:0;display:flex;height:100vh}}
#dag{{flex:3;overflow:auto;border-right:1px solid #ddd;background:#fbfbfd}}
#side{{flex:2;overflow:auto;padding:12px;font-size:13px}}
h1{{font-size:16px;margin:10px 12px}} .legend span{{color:#fff;padding:1px 5px;margin:2px;border-radius:3px;font-size:11px}}
.node{{cursor:pointer}} .node text{{fill:#fff;font-size:12px;pointer-events:none}}
.node.sel rect{{stroke:#111;stroke-width:2.5}}
pre{{white-space:pre-wrap;background:#f4f4f6;padding:6px;border-radius:4px}}
</style></head><body>
<div id="dag"><h1>{html.escape(goal)} — {html.escape(trace.status)}</h1>
<div class="legend">{legend}</div>
<svg width="{width}" height="{height}">
{chr(10).join(edges)}
{chr(10).join(nodes)}
</svg></div>
<div id="side"><p>Goal <b>{html.escape(trace.goal_id)}</b>: {len(trace.tasks)} tasks,
{trace.tokens:,} tokens, ${trace.cost_usd:.6f}. Click a task to see its attempts and model calls.</p>{undo}</div>
<script type="application/json" id="trace">{data}</script>
<script>
const trace = JSON.parse(document.getElementById("trace").textContent);
const byId = Object.fromEntries(trace.tasks.map(t => [t.task_id, t]));
const esc = s => String(s).replace(/[&<>]/g, c => ({{"&":"&amp;","<":"&lt;",">":"&gt;"}})[c]);
const clip = s => s.length > {CLIP_HTML} ? s.slice(0, {CLIP_HTML - 1}) + "…" : s;
function tool(u) {{
  const took = u.duration_ms === null ? "" : ` — ${{u.duration_ms}} ms`;
  let h = `<p>tool <b>${{esc(u.tool)}}</b> (${{esc(u.effect)}}) — ${{esc(u.status)}}${{took}}</p>`;
  h += `<pre>${{esc(clip(JSON.stringify(u.arguments)))}}</pre>`;
  if (u.status !== "running") h += `<pre>${{esc(clip(u.error !== null ? u.error : JSON.stringify(u.result)))}}</pre>`;
  return h;
}}
function show(id) {{
  const t = byId[id];
  document.querySelectorAll(".node").forEach(n => n.classList.toggle("sel", n.dataset.task === id));
  let h = `<h2>${{esc(t.type)}}@${{esc(t.lane)}} ${{esc(t.task_id)}}</h2><p>status <b>${{esc(t.status)}}</b></p>`;
  h += `<pre>${{esc(JSON.stringify(t.payload, null, 1))}}</pre>`;
  for (const a of t.attempts) {{
    h += `<h3>attempt ${{a.n}}${{a.dispatch > 1 ? ` (dispatch ${{a.dispatch}})` : ""}} — ${{esc(a.worker)}} — ${{esc(a.outcome)}}</h3>`;
    if (a.error) h += `<p>error: ${{esc(a.error)}}</p>`;
    // Tool calls under the model call that asked for them; one an earlier
    // attempt's call asked for (a resumed conversation) in stream order.
    const tools = a.tools || [];
    const mine = new Set(a.calls.map(c => c.seq));
    const items = a.calls.map(c => [c.seq, c, null])
      .concat(tools.filter(u => !mine.has(u.call_seq)).map(u => [u.seq, null, u]))
      .sort((x, y) => x[0] - y[0]);
    for (const [, c, u] of items) {{
      if (u) {{ h += tool(u); continue; }}
      h += `<h4>call ${{c.index}}: ${{esc(c.provider)}} ${{esc(c.model)}} ${{esc(c.prompt_version)}} — in ${{c.tokens_in}} out ${{c.tokens_out}} $${{c.cost_usd}}</h4>`;
      const m = (c.request.messages || []).map(x => x.role + ": " + x.content).join("\\n\\n");
      h += `<pre>${{esc(m)}}</pre><pre>${{esc(c.error || c.text)}}</pre>`;
      for (const v of tools.filter(v => v.call_seq === c.seq)) h += tool(v);
    }}
    for (const f of a.effects) h += `<p>effect ${{esc(f.name)}}: ${{esc(f.status)}}</p>`;
  }}
  if (t.result !== null) h += `<h3>result</h3><pre>${{esc(JSON.stringify(t.result, null, 1))}}</pre>`;
  const undone = (trace.compensations || []).filter(c => c.task_id === id);
  if (undone.length) h += `<h3>compensation</h3>` + undone.map(c =>
    `<p>${{esc(c.outcome)}} ${{esc(c.name)}}${{c.effect ? ` (${{esc(c.effect)}})` : ""}} by ${{esc(c.by)}}</p><pre>${{esc(clip(JSON.stringify(c.detail)))}}</pre>`).join("");
  document.getElementById("side").innerHTML = h;
}}
document.querySelectorAll(".node").forEach(n => n.addEventListener("click", () => show(n.dataset.task)));
</script></body></html>
"""


_DIFF_LINE = 160
_DIFF_LINES = 40


def trim_diff(diff: str) -> list[str]:
    """A diff's changed lines, each cut to a screen's width, at most _DIFF_LINES."""
    lines = [
        line if len(line) <= _DIFF_LINE else line[: _DIFF_LINE - 1] + "…"
        for line in diff.splitlines()
        if line.startswith(("-", "+", "@")) and not line.startswith(("---", "+++"))
    ]
    if len(lines) > _DIFF_LINES:
        more = len(lines) - _DIFF_LINES
        lines = [
            *lines[:_DIFF_LINES],
            f"… {more} more line(s): --json has the whole diff",
        ]
    return lines
