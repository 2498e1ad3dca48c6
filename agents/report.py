"""What ``bb run`` and ``bb demo`` print: progress and the cost split. Pure."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blackboard.log.events import ModelCalled

if TYPE_CHECKING:
    from collections.abc import Iterable

    from blackboard.engine.state import GoalState
    from blackboard.log.events import AnyEvent

__all__ = ["Usage", "cost_lines", "progress_line", "usage_by_lane_model"]


@dataclass(slots=True)
class Usage:
    """Model usage of one lane and model."""

    lane: str
    model: str
    provider: str
    calls: int = 0
    failed: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    cost_usd: float = 0.0
    scripted: bool = False

    def as_json(self) -> dict[str, Any]:
        """The row as JSON-able data."""
        return {
            "lane": self.lane,
            "model": self.model,
            "provider": self.provider,
            "calls": self.calls,
            "failed_calls": self.failed,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "tokens_cached": self.tokens_cached,
            "cost_usd": round(self.cost_usd, 6),
            "scripted": self.scripted,
        }


def usage_by_lane_model(events: Iterable[AnyEvent]) -> list[Usage]:
    """Sum the ModelCalled events by lane and model, sorted by lane then model."""
    rows: dict[tuple[str, str], Usage] = {}
    for event in events:
        if not isinstance(event, ModelCalled):
            continue
        row = rows.setdefault(
            (event.lane, event.model), Usage(event.lane, event.model, event.provider)
        )
        row.calls += 1
        row.failed += event.error is not None
        row.tokens_in += event.tokens_in
        row.tokens_out += event.tokens_out
        row.tokens_cached += event.tokens_cached
        row.cost_usd += event.cost_usd
        row.scripted = row.scripted or event.scripted
    return [rows[k] for k in sorted(rows)]


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
        tokens_in = r.tokens_in + r.tokens_cached
        out.append(
            f"{r.lane:<10} {label:<32} {r.calls:>5} {tokens_in:>10,}"
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
