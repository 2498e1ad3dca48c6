"""What ``bb run`` and ``bb demo`` print: progress and the cost split. Pure.

The split is :func:`blackboard.engine.usage.usage_by_lane_model`, the summary
``bb replay`` totals with too.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from blackboard.engine.usage import Usage, usage_by_lane_model

if TYPE_CHECKING:
    from blackboard.engine.state import GoalState

__all__ = [
    "Usage",
    "cost_lines",
    "lane_kinds",
    "models_label",
    "progress_line",
    "usage_by_lane_model",
    "usage_json",
]


def lane_kinds(rows: list[Usage]) -> dict[str, str]:
    """Each lane that made calls: ``scripted``, ``real`` or ``mixed``."""
    seen: dict[str, set[bool]] = {}
    for r in rows:
        seen.setdefault(r.lane, set()).add(r.scripted)
    return {
        lane: "mixed" if len(kinds) > 1 else ("scripted" if True in kinds else "real")
        for lane, kinds in sorted(seen.items())
    }


def models_label(rows: list[Usage]) -> str:
    """Which lanes ran on scripted models and which on real ones, for a title.

    ``(scripted models)`` when all did, nothing when none did, else each kind
    with its lanes: ``(real: local; scripted: frontier)``.
    """
    kinds = lane_kinds(rows)
    if not kinds or set(kinds.values()) == {"real"}:
        return ""
    if set(kinds.values()) == {"scripted"}:
        return " (scripted models)"
    parts = [
        f"{kind}: {', '.join(lane for lane, k in kinds.items() if k == kind)}"
        for kind in ("real", "scripted", "mixed")
        if kind in kinds.values()
    ]
    return f" ({'; '.join(parts)})"


def usage_json(row: Usage) -> dict[str, Any]:
    """One row of the cost split as ``bb run --json`` and ``bb demo --json`` give it."""
    return {
        "lane": row.lane,
        "model": row.model,
        "provider": row.provider,
        "calls": row.calls,
        "failed_calls": row.failed,
        "tokens_in": row.tokens_in,
        "tokens_out": row.tokens_out,
        "tokens_cached": row.tokens_cached,
        "cost_usd": round(row.cost_usd, 6),
        "scripted": row.scripted,
    }


def progress_line(goal: GoalState) -> str:
    """One line: tasks by status and lane, tokens and cost so far."""
    by_status = Counter(t.status for t in goal.tasks.values())
    by_lane = Counter(t.lane for t in goal.tasks.values())
    done = by_status.pop("done", 0)
    rest = "  ".join(f"{k} {v}" for k, v in sorted(by_status.items()))
    lanes = " ".join(f"{k} {v}" for k, v in sorted(by_lane.items()))
    return (
        f"{goal.status:<9} {done}/{len(goal.tasks)} done"
        f"{'  ' + rest if rest else ''}  |  {lanes}  |  "
        f"{goal.tokens:,} tokens  ${goal.cost_usd:.4f}"
    )


def cost_lines(rows: list[Usage]) -> list[str]:
    """The cost split by lane and model, with a total per lane and overall."""
    if not rows:
        return ["no model calls"]
    out = [
        f"{'lane':<10} {'model':<32} {'calls':>5} {'tokens in':>10} "
        f"{'tokens out':>10} {'cost USD':>10}"
    ]
    lanes: dict[str, float] = {}
    for r in rows:
        label = r.model + (" (scripted)" if r.scripted else "")
        out.append(
            f"{r.lane:<10} {label:<32} {r.calls:>5} {r.input_tokens:>10,}"
            f" {r.tokens_out:>10,} {r.cost_usd:>10.4f}"
        )
        lanes[r.lane] = lanes.get(r.lane, 0.0) + r.cost_usd
    total = sum(lanes.values())
    shares = "  ".join(
        f"{lane} ${c:.4f} ({(c / total * 100) if total else 0:.0f}%)"
        for lane, c in sorted(lanes.items())
    )
    out.append(f"total ${total:.4f}: {shares}")
    return out
