"""Cost arithmetic and the shared per-provider rate limiter."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from agents.cost import DEFAULT_PRICES, PriceTable, cost_usd
from agents.models import parse_retry_after
from agents.ratelimit import RateLimiter, limiter_for, reset_limiters
from blackboard.log.events import Price

if TYPE_CHECKING:
    from collections.abc import Iterator

# --- cost -----------------------------------------------------------------


def test_cost_bills_each_kind_of_token_once_at_its_rate() -> None:
    price = Price(input_per_mtok=3.0, output_per_mtok=15.0, cached_per_mtok=0.3)

    # 1_000 * 3 + 500 * 15 + 2_000 * 0.3 = 3_000 + 7_500 + 600 = 11_100 micro-$
    assert cost_usd(price, 1_000, 500, 2_000) == 0.0111
    assert cost_usd(price, 1_000_000, 0, 0) == 3.0
    assert cost_usd(price, 0, 1_000_000, 0) == 15.0
    assert cost_usd(price, 0, 0, 1_000_000) == 0.3
    assert cost_usd(price, 0, 0, 0) == 0.0


def test_cost_is_rounded_to_nano_dollars() -> None:
    price = Price(input_per_mtok=0.15, output_per_mtok=0.6, cached_per_mtok=0.075)

    # 7 * 0.15 + 3 * 0.6 + 1 * 0.075 = 2.925 micro-$ = 0.000002925 $
    assert cost_usd(price, 7, 3, 1) == 0.000002925
    # One token at 0.0001 $/Mtok is 1e-10 $: below the rounding step.
    assert cost_usd(Price(input_per_mtok=0.0001), 1, 0, 0) == 0.0
    total = sum(cost_usd(price, 7, 3, 1) for _ in range(1000))
    assert round(total, 9) == 0.002925


def test_unknown_model_costs_zero() -> None:
    table = PriceTable.default()

    assert not table.known("my-finetune")
    assert table.price_for("my-finetune") == Price()
    assert cost_usd(table.price_for("my-finetune"), 10**6, 10**6, 10**6) == 0.0


def test_price_table_from_dict_and_dated_snapshots() -> None:
    table = PriceTable(
        {
            "claude-sonnet-4-5": {
                "input_per_mtok": 3.0,
                "output_per_mtok": 15.0,
                "cached_per_mtok": 0.3,
            },
            "gpt-4o": Price(input_per_mtok=2.5, output_per_mtok=10.0),
            "gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.6},
        }
    )

    assert table.price_for("claude-sonnet-4-5") == Price(
        input_per_mtok=3.0, output_per_mtok=15.0, cached_per_mtok=0.3
    )
    assert table.known("claude-sonnet-4-5-20250929")
    assert table.price_for("claude-sonnet-4-5-20250929").input_per_mtok == 3.0
    # The longest known prefix wins.
    assert table.price_for("gpt-4o-mini-2024-07-18").input_per_mtok == 0.15
    assert table.price_for("gpt-4o-2024-08-06").input_per_mtok == 2.5
    # A prefix must end at a "-": "gpt-4" is not "gpt-4o".
    assert not table.known("gpt-4")
    assert not table.known("gpt-4oo")


def test_default_prices_are_overridable() -> None:
    table = PriceTable.default().with_prices({"gpt-4o": {"input_per_mtok": 9.0}})

    assert table.price_for("gpt-4o") == Price(input_per_mtok=9.0)
    assert PriceTable.default().price_for("gpt-4o").input_per_mtok == 2.5
    assert table.known("claude-sonnet-4-5")
    assert PriceTable.default().price_for("llama3.1:8b") == Price()
    assert set(PriceTable.default().as_dict()) == set(DEFAULT_PRICES)


def test_empty_table_prices_everything_at_zero() -> None:
    assert PriceTable().price_for("claude-sonnet-4-5") == Price()


# --- retry-after ----------------------------------------------------------


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert parse_retry_after({"retry-after": "-1"}) is None
    assert parse_retry_after({}) is None


# --- rate limiter ---------------------------------------------------------


class FakeTime:
    """A clock that only moves when somebody sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    reset_limiters()
    yield
    reset_limiters()


async def test_requests_per_minute_burst_then_wait(fake_time: FakeTime) -> None:
    limiter = RateLimiter(rpm=60, clock=fake_time.clock, sleep=fake_time.sleep)

    for _ in range(60):
        assert await limiter.acquire() == 0.0
    # The 61st request waits for one request's worth of refill: 60 s / 60.
    assert await limiter.acquire() == pytest.approx(1.0)
    assert fake_time.sleeps == [pytest.approx(1.0)]


async def test_tokens_per_minute_wait_is_exact(fake_time: FakeTime) -> None:
    limiter = RateLimiter(tpm=6_000, clock=fake_time.clock, sleep=fake_time.sleep)

    assert await limiter.acquire(5_000) == 0.0
    # 1_000 left; 3_000 more puts the bucket 2_000 in debt; it refills at
    # 100 tokens a second, so the wait is 20 s.
    assert await limiter.acquire(3_000) == pytest.approx(20.0)
    # Ten seconds later the bucket holds 1_000 again.
    fake_time.now += 10
    assert await limiter.acquire(1_000) == 0.0
    assert fake_time.sleeps == [pytest.approx(20.0)]


async def test_refill_is_capped_at_one_minute_of_budget(fake_time: FakeTime) -> None:
    limiter = RateLimiter(rpm=2, clock=fake_time.clock, sleep=fake_time.sleep)

    fake_time.now += 3600
    assert await limiter.acquire() == 0.0
    assert await limiter.acquire() == 0.0
    assert await limiter.acquire() == pytest.approx(30.0)


async def test_concurrent_waiters_queue_in_arrival_order() -> None:
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    # The clock stands still: three workers arrive at the same instant.
    limiter = RateLimiter(rpm=1, clock=lambda: 0.0, sleep=record)

    waits = await asyncio.gather(*(limiter.acquire() for _ in range(3)))

    assert waits == [0.0, pytest.approx(60.0), pytest.approx(120.0)]
    assert slept == [pytest.approx(60.0), pytest.approx(120.0)]


async def test_both_limits_wait_for_the_scarcer(fake_time: FakeTime) -> None:
    limiter = RateLimiter(
        rpm=600, tpm=600, clock=fake_time.clock, sleep=fake_time.sleep
    )

    assert await limiter.acquire(600) == 0.0
    # Requests are plentiful, tokens are not: 60 tokens at 10/s is 6 s.
    assert await limiter.acquire(60) == pytest.approx(6.0)


async def test_estimate_above_budget_is_clamped(fake_time: FakeTime) -> None:
    limiter = RateLimiter(tpm=100, clock=fake_time.clock, sleep=fake_time.sleep)

    assert await limiter.acquire(10_000) == 0.0
    assert await limiter.acquire(10_000) == pytest.approx(60.0)


async def test_adjust_charges_and_refunds(fake_time: FakeTime) -> None:
    limiter = RateLimiter(tpm=600, clock=fake_time.clock, sleep=fake_time.sleep)

    assert await limiter.acquire(600) == 0.0
    await limiter.adjust(-300)  # used 300 fewer than estimated
    assert await limiter.acquire(300) == 0.0
    await limiter.adjust(100)  # used 100 more than estimated
    assert await limiter.acquire(10) == pytest.approx(11.0)


def test_invalid_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="rpm must be positive"):
        RateLimiter(rpm=0)


def test_limiter_for_shares_one_limiter_per_provider() -> None:
    a = limiter_for("anthropic", 50, 40_000)
    b = limiter_for("anthropic", 50, 40_000)
    c = limiter_for("openai", 500, 200_000)

    assert a is b
    assert a is not c
    with pytest.raises(ValueError, match="already"):
        limiter_for("anthropic", 100, 40_000)


async def test_unlimited_limiter_never_waits() -> None:
    limiter = RateLimiter()

    for _ in range(1000):
        assert await limiter.acquire(10**6) == 0.0
