"""Model usage summed by lane and model, from ModelCalled events. Pure.

The one summary behind the totals of ``bb replay`` (replay/trace.py) and the
cost split of ``bb run`` and ``bb demo`` (agents/report.py); the projection's
view ``cost_by_goal_lane_model`` sums the same columns in SQL, and a test
holds the two equal.

Token convention (the events', see agents/cost.py), kept by every sum:
``tokens_in`` is the *uncached* input, ``tokens_cached`` the input read from
the provider's prompt cache, ``tokens_out`` the output. They are stored and
summed apart, never into one another. Where one "input" figure is shown to a
person (the ``in`` of a trace's call, the ``tokens in`` column of a cost
table, an OpenTelemetry ``gen_ai.usage.input_tokens``) it is
:attr:`Usage.input_tokens`: uncached plus cached. A goal's ``tokens`` counts
all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from blackboard.log.events import ModelCalled

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["Usage", "add_call", "usage_by_lane_model"]


@dataclass(slots=True)
class Usage:
    """Model usage of one lane and model."""

    lane: str
    model: str
    provider: str = ""
    """The provider of the first call (a lane's model has one)."""
    calls: int = 0
    failed: int = 0
    """Calls that raised (recorded with an error)."""
    tokens_in: int = 0
    """Uncached input tokens."""
    tokens_out: int = 0
    tokens_cached: int = 0
    """Input tokens read from the prompt cache."""
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    scripted: bool = False
    """True when any call was answered by the scripted models."""

    @property
    def input_tokens(self) -> int:
        """Every input token, cached or not: what "tokens in" shows."""
        return self.tokens_in + self.tokens_cached

    @property
    def tokens(self) -> int:
        """Every token: input (cached or not) and output."""
        return self.tokens_in + self.tokens_cached + self.tokens_out

    def add(self, call: ModelCalled) -> None:
        """Count one call."""
        self.calls += 1
        self.failed += call.error is not None
        self.tokens_in += call.tokens_in
        self.tokens_out += call.tokens_out
        self.tokens_cached += call.tokens_cached
        self.cost_usd += call.cost_usd
        self.latency_ms += call.latency_ms
        self.scripted = self.scripted or call.scripted


def add_call(totals: dict[tuple[str, str], Usage], call: ModelCalled) -> Usage:
    """Count one call in ``totals`` (keyed by lane and model); its row."""
    row = totals.get((call.lane, call.model))
    if row is None:
        row = totals[(call.lane, call.model)] = Usage(
            call.lane, call.model, call.provider
        )
    row.add(call)
    return row


def usage_by_lane_model(events: Iterable[object]) -> list[Usage]:
    """Sum the ModelCalled events among ``events``; rows sorted by lane, model."""
    totals: dict[tuple[str, str], Usage] = {}
    for event in events:
        if isinstance(event, ModelCalled):
            add_call(totals, event)
    return [totals[k] for k in sorted(totals)]
