"""A goal's budget ledger: reservations before calls, settled after. Pure.

Before a model call the worker reserves the call's worst case against the
goal's ``max_tokens`` and ``max_cost_usd``: every token its request could be
(one per byte: a byte-level tokenizer never makes more tokens than bytes) plus
the ``max_tokens`` it asks for, at the model's price. The reservation is
refused when what is spent, plus what calls in flight hold, plus this worst
case would cross a limit: the call is not made. After the call the
reservation is settled with what was used, or released when no call was made.
A reservation whose run died without recording its call is forfeited: its
worst case counts as spent, since the call may have been made and paid for.

The ledger is a chain of ``BudgetEntry`` events, each carrying the running
totals and written guarded on the one before (see ``engine.ledger``): this
module computes the next entry from the last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from blackboard.log.events import BudgetEntry, BudgetHold, Price

if TYPE_CHECKING:
    from blackboard.log.events import Limits

MESSAGE_OVERHEAD: Final = 8
"""Tokens a chat template adds around each message (role markers and the like)."""


@dataclass(frozen=True, slots=True)
class Totals:
    """What the ledger says now: spent, and held by calls in flight."""

    spent_tokens: int = 0
    spent_usd: float = 0.0
    held: dict[str, BudgetHold] | None = None

    @classmethod
    def of(cls, entry: BudgetEntry | None, start: tuple[int, float]) -> Totals:
        """The totals after ``entry``.

        ``start`` is the goal's spending before its first entry, used when
        the ledger is empty.
        """
        if entry is None:
            return cls(start[0], start[1], {})
        return cls(entry.spent_tokens, entry.spent_usd, dict(entry.held))

    @property
    def held_tokens(self) -> int:
        """Tokens held by calls in flight."""
        return sum(h.tokens for h in (self.held or {}).values())

    @property
    def held_usd(self) -> float:
        """USD held by calls in flight."""
        return sum(h.cost_usd for h in (self.held or {}).values())


@dataclass(frozen=True, slots=True)
class Refused:
    """A reservation that would let the goal cross a limit."""

    guardrail: str
    limit: float
    observed: float
    """Spent + held + this call's worst case."""
    detail: str


def worst_case(
    request_bytes: int, messages: int, max_tokens: int, price: Price
) -> tuple[int, float]:
    """Tokens and USD one call can use at most."""
    tokens_in = request_bytes + MESSAGE_OVERHEAD * max(messages, 1)
    usd = (tokens_in * price.input_per_mtok + max_tokens * price.output_per_mtok) / 1e6
    return tokens_in + max_tokens, math.ceil(usd * 1e9) / 1e9


def check(
    totals: Totals, limits: Limits, tokens: int, usd: float, model: str
) -> Refused | None:
    """Whether a call of this worst case fits in the goal's limits."""
    if limits.max_tokens is not None:
        seen = totals.spent_tokens + totals.held_tokens + tokens
        if seen > limits.max_tokens:
            return Refused(
                "max_tokens",
                limits.max_tokens,
                seen,
                f"the next call to {model} could use {tokens:,} tokens; the goal"
                f" has spent {totals.spent_tokens:,} and calls in flight hold"
                f" {totals.held_tokens:,}, which would reach {seen:,} of"
                f" {limits.max_tokens:,}",
            )
    if limits.max_cost_usd is not None:
        seen_usd = round(totals.spent_usd + totals.held_usd + usd, 9)
        if seen_usd > limits.max_cost_usd:
            return Refused(
                "max_cost_usd",
                limits.max_cost_usd,
                seen_usd,
                f"the next call to {model} could cost ${usd:.6f}; the goal has"
                f" spent ${totals.spent_usd:.6f} and calls in flight hold"
                f" ${totals.held_usd:.6f}, which would reach ${seen_usd:.6f} of"
                f" ${limits.max_cost_usd:g}",
            )
    return None


def reserved(
    base: dict[str, Any],
    totals: Totals,
    reservation: str,
    hold: BudgetHold,
    limits: Limits,
    model: str,
) -> BudgetEntry:
    """The entry that adds ``hold`` to the ledger (``base``: id, goal, time)."""
    held = dict(totals.held or {})
    held[reservation] = hold
    return BudgetEntry(
        **base,
        op="reserve",
        reservation=reservation,
        tokens=hold.tokens,
        cost_usd=hold.cost_usd,
        model=model,
        spent_tokens=totals.spent_tokens,
        spent_usd=totals.spent_usd,
        held=held,
        max_tokens=limits.max_tokens,
        max_cost_usd=limits.max_cost_usd,
    )


def settled(
    base: dict[str, Any],
    totals: Totals,
    reservation: str,
    used: tuple[int, float] | None,
) -> BudgetEntry:
    """The entry that settles ``reservation`` with what its call ``used``.

    ``used`` None releases it: no call was made, or none was recorded.
    """
    held = dict(totals.held or {})
    held.pop(reservation, None)
    tokens, usd = used or (0, 0.0)
    return BudgetEntry(
        **base,
        op="release" if used is None else "settle",
        reservation=reservation,
        tokens=tokens,
        cost_usd=usd,
        spent_tokens=totals.spent_tokens + tokens,
        spent_usd=round(totals.spent_usd + usd, 9),
        held=held,
    )


def forfeited(base: dict[str, Any], totals: Totals, reservation: str) -> BudgetEntry:
    """The entry that counts an abandoned reservation's worst case as spent.

    A run that died holding ``reservation`` with no ``ModelCalled`` recorded
    may have sent its call, and the provider may have charged for it: no one
    can know what it used. Counting the worst case keeps the goal under its
    limits whatever happened; releasing it could let the goal overspend.
    """
    hold = (totals.held or {})[reservation]
    held = dict(totals.held or {})
    held.pop(reservation)
    return BudgetEntry(
        **base,
        op="forfeit",
        reservation=reservation,
        tokens=hold.tokens,
        cost_usd=hold.cost_usd,
        spent_tokens=totals.spent_tokens + hold.tokens,
        spent_usd=round(totals.spent_usd + hold.cost_usd, 9),
        held=held,
    )


def stale(totals: Totals, task_id: str, dispatch: int, attempt: int) -> list[str]:
    """Reservations an earlier run of this task left open (its worker died)."""
    return [
        r
        for r, h in (totals.held or {}).items()
        if h.task_id == task_id and (h.dispatch, h.attempt) < (dispatch, attempt)
    ]
