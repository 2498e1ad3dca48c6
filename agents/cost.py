"""What a model call cost, from a configurable price table.

Token convention, the same for every provider: ``tokens_in`` counts only the
*uncached* input tokens and ``tokens_cached`` the input tokens read from the
provider's prompt cache; each is billed once, at its own rate. Anthropic reports
``input_tokens`` that already exclude ``cache_read_input_tokens``. OpenAI's
``prompt_tokens`` include ``prompt_tokens_details.cached_tokens``, so its client
reports ``tokens_in = prompt_tokens - cached_tokens``. (Anthropic's cache
*writes* are billed above the input rate; this table does not price them.)

Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from blackboard.log.events import Price

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["DEFAULT_PRICES", "PriceTable", "cost_usd"]

DEFAULT_PRICES: Final[Mapping[str, Mapping[str, float]]] = {
    # Anthropic list prices, USD per million tokens (cached = cache read).
    "claude-opus-4-5": {
        "input_per_mtok": 5.0,
        "output_per_mtok": 25.0,
        "cached_per_mtok": 0.5,
    },
    "claude-opus-4-1": {
        "input_per_mtok": 15.0,
        "output_per_mtok": 75.0,
        "cached_per_mtok": 1.5,
    },
    "claude-sonnet-4-5": {
        "input_per_mtok": 3.0,
        "output_per_mtok": 15.0,
        "cached_per_mtok": 0.3,
    },
    "claude-sonnet-4": {
        "input_per_mtok": 3.0,
        "output_per_mtok": 15.0,
        "cached_per_mtok": 0.3,
    },
    "claude-haiku-4-5": {
        "input_per_mtok": 1.0,
        "output_per_mtok": 5.0,
        "cached_per_mtok": 0.1,
    },
    "claude-3-5-haiku": {
        "input_per_mtok": 0.8,
        "output_per_mtok": 4.0,
        "cached_per_mtok": 0.08,
    },
    # OpenAI list prices, USD per million tokens (cached = cached input).
    "gpt-5": {
        "input_per_mtok": 1.25,
        "output_per_mtok": 10.0,
        "cached_per_mtok": 0.125,
    },
    "gpt-5-mini": {
        "input_per_mtok": 0.25,
        "output_per_mtok": 2.0,
        "cached_per_mtok": 0.025,
    },
    "gpt-4.1": {"input_per_mtok": 2.0, "output_per_mtok": 8.0, "cached_per_mtok": 0.5},
    "gpt-4.1-mini": {
        "input_per_mtok": 0.4,
        "output_per_mtok": 1.6,
        "cached_per_mtok": 0.1,
    },
    "gpt-4o": {"input_per_mtok": 2.5, "output_per_mtok": 10.0, "cached_per_mtok": 1.25},
    "gpt-4o-mini": {
        "input_per_mtok": 0.15,
        "output_per_mtok": 0.6,
        "cached_per_mtok": 0.075,
    },
    # Local models cost nothing per token (the hardware is paid for elsewhere).
    "llama3.1:8b": {},
    "qwen2.5:7b-instruct": {},
    "qwen2.5-7b-instruct": {},
    "SmolLM2-135M-Instruct": {},
    "scripted": {},
}
"""List prices as of this writing, USD per million tokens.

They change: override them per deployment (``PriceTable(overrides)`` or
``PriceTable.default().with_prices(...)``) rather than trusting these.
"""


def cost_usd(
    price: Price, tokens_in: int, tokens_out: int, tokens_cached: int
) -> float:
    """Return the USD cost of one call, rounded to 1e-9 so that sums stay stable.

    Args:
        price: USD per million tokens.
        tokens_in: Uncached input tokens.
        tokens_out: Output tokens.
        tokens_cached: Input tokens read from the cache, billed only at the
            cached rate.

    Returns:
        The cost in USD.
    """
    micro = (
        tokens_in * price.input_per_mtok
        + tokens_out * price.output_per_mtok
        + tokens_cached * price.cached_per_mtok
    )
    return round(micro / 1_000_000, 9)


class PriceTable:
    """Model name to :class:`Price`.

    A model name that is not in the table but starts with a known name followed
    by ``-`` (a dated snapshot such as ``claude-sonnet-4-5-20250929``) takes
    the longest such name's price. Unknown models cost zero.

    Args:
        prices: Model name to a ``Price`` or to its fields as a dict; ``None``
            is an empty table (everything costs zero).
    """

    def __init__(
        self, prices: Mapping[str, Price | Mapping[str, float]] | None = None
    ) -> None:
        self._prices: dict[str, Price] = {
            model: price if isinstance(price, Price) else msgspec.convert(price, Price)
            for model, price in (prices or {}).items()
        }

    @classmethod
    def default(cls) -> PriceTable:
        """Return the table of :data:`DEFAULT_PRICES`."""
        return cls(DEFAULT_PRICES)

    def with_prices(
        self, prices: Mapping[str, Price | Mapping[str, float]]
    ) -> PriceTable:
        """Return a copy with some prices added or replaced."""
        return PriceTable({**self._prices, **prices})

    def _lookup(self, model: str) -> Price | None:
        price = self._prices.get(model)
        if price is not None:
            return price
        best: str | None = None
        for name in self._prices:
            if model.startswith(name + "-") and (best is None or len(name) > len(best)):
                best = name
        return self._prices[best] if best is not None else None

    def known(self, model: str) -> bool:
        """Return whether the table prices ``model`` (exactly or by snapshot)."""
        return self._lookup(model) is not None

    def price_for(self, model: str) -> Price:
        """Return the price of ``model``; zero when the table does not know it."""
        price = self._lookup(model)
        return price if price is not None else Price()

    def as_dict(self) -> dict[str, dict[str, float]]:
        """Return the table as plain JSON-able data."""
        return {model: msgspec.to_builtins(p) for model, p in self._prices.items()}
