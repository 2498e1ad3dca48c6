"""Fleet-wide rate limits: the pure GCRA (agents/gcra.py) and the
FleetLimiter over the in-memory twin of the shared state (agents/fleet.py).

The process test (three `bb worker` processes on one model, rpm 60) is
tests/faults/test_fleet_faults.py.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import gcra
from agents.fleet import FleetLimiter
from agents.lanes import Lanes
from agents.ratelimit import RateLimiter, reset_limiters
from blackboard.errors import StateConflict
from blackboard.log.memory_work import MemorySharedState
from blackboard.log.subjects import state_key
from blackboard.runtime.config import LaneSettings, ModelRef, Settings


def most_in_any_window(times: list[float], window: float = 60.0) -> int:
    """The most of ``times`` in any closed window of ``window`` seconds."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


# --- the pure decision -------------------------------------------------------


def test_requests_are_spaced_with_headroom_and_no_burst():
    limits = gcra.Limits(rpm=60)
    state, waits = gcra.LimitState(), []
    for _ in range(5):
        state, wait = gcra.acquire(state, 1000.0, limits)
        waits.append(wait)
    # Five callers at the same instant: one now, then one every 60/60 * 1.01 s.
    assert waits == pytest.approx([0.0, 1.01, 2.02, 3.03, 4.04])


def test_an_idle_timeline_lets_the_next_request_go_at_once():
    limits = gcra.Limits(rpm=6)
    state, _ = gcra.acquire(gcra.LimitState(), 1000.0, limits)
    _, wait = gcra.acquire(state, 1000.0 + 3600, limits)
    assert wait == 0.0


def test_tokens_take_their_share_of_the_minute():
    limits = gcra.Limits(tpm=6000, headroom=0.0)
    state, first = gcra.acquire(gcra.LimitState(), 0.0, limits, tokens=3000)
    state, second = gcra.acquire(state, 0.0, limits, tokens=600)
    # 3000 tokens of 6000 a minute is 30 s of the timeline.
    assert first == 0.0
    assert second == pytest.approx(30.0)
    # An estimate above the minute's budget counts as the whole minute.
    _, third = gcra.acquire(state, 0.0, limits, tokens=10**9)
    assert third == pytest.approx(36.0)


def test_adjust_gives_back_or_charges_time():
    limits = gcra.Limits(tpm=600, headroom=0.0)
    state, _ = gcra.acquire(gcra.LimitState(), 0.0, limits, tokens=600)
    assert state.tat_tok == pytest.approx(60.0)
    assert gcra.adjust(state, limits, -300).tat_tok == pytest.approx(30.0)
    assert gcra.adjust(state, limits, 100).tat_tok == pytest.approx(70.0)
    assert gcra.adjust(state, gcra.Limits(rpm=5), 100) == state


def test_a_429_blocks_the_timeline_and_counts_the_block():
    limits = gcra.Limits(rpm=60)
    state = gcra.penalize(gcra.LimitState(), 100.0, 5.0)
    assert (state.blocked_until, state.blocks) == (105.0, 1)
    # A shorter block inside the first changes nothing.
    assert gcra.penalize(state, 101.0, 1.0) == state
    _, wait = gcra.acquire(state, 101.0, limits)
    assert wait == pytest.approx(4.0)


def test_a_timeline_that_does_not_decode_is_a_fresh_one():
    assert gcra.decode(b"not json") == gcra.LimitState()
    state = gcra.LimitState(tat_req=1.5, tat_tok=2.5, blocked_until=3.0, blocks=2)
    assert gcra.decode(gcra.encode(state)) == state


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="rpm must be positive"):
        gcra.Limits(rpm=0)


@settings(max_examples=200, deadline=None)
@given(
    rpm=st.integers(min_value=1, max_value=120),
    arrivals=st.lists(
        st.floats(min_value=0, max_value=300, allow_nan=False), min_size=1, max_size=300
    ),
    late=st.lists(st.floats(min_value=0, max_value=0.5), min_size=300, max_size=300),
)
def test_no_60s_window_holds_more_than_rpm_requests(rpm, arrivals, late):
    """Callers arrive at any time (from any process); each reaches the
    provider up to 0.5 s after its slot. Whatever the pattern, at most rpm
    requests reach it in any 60 s window: the 1% headroom is 0.6 s a minute."""
    limits = gcra.Limits(rpm=rpm)
    state, sent = gcra.LimitState(), []
    for i, now in enumerate(sorted(arrivals)):
        state, wait = gcra.acquire(state, now, limits)
        sent.append(now + wait + late[i])
    assert most_in_any_window(sent) <= rpm


# --- FleetLimiter over the twin -------------------------------------------------


class Clock:
    """Wall time that only moves when a caller sleeps."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def _fresh_registry():
    reset_limiters()
    yield
    reset_limiters()


def fleet(
    shared: MemorySharedState, clock: Clock, rpm: float | None = 60, tpm=None
) -> FleetLimiter:
    return FleetLimiter(
        shared,
        "openai",
        "gpt-5",
        rpm=rpm,
        tpm=tpm,
        local=RateLimiter(rpm, tpm, clock=clock, sleep=clock.sleep),
        clock=clock,
        sleep=clock.sleep,
    )


async def test_two_processes_share_one_timeline():
    shared, clock = MemorySharedState(), Clock()
    a, b = fleet(shared, clock), fleet(shared, clock)
    # Each process alone would let its first call go at once: together,
    # they queue.
    waits = [await a.acquire(), await b.acquire(), await a.acquire()]
    assert waits == pytest.approx([0.0, 1.01, 1.01])
    assert state_key("rate", "openai", "gpt-5") in shared.entries


async def test_concurrent_callers_of_two_processes_get_distinct_slots():
    shared, slept = MemorySharedState(), []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    def limiter() -> FleetLimiter:
        return FleetLimiter(
            shared,
            "openai",
            "gpt-5",
            rpm=60,
            tpm=None,
            local=RateLimiter(60),
            clock=lambda: 1000.0,  # every caller arrives at the same instant
            sleep=sleep,
        )

    a, b = limiter(), limiter()
    waits = await asyncio.gather(*(x.acquire() for x in (a, b) * 10))
    # Their compare-and-sets raced; each still got a slot of its own.
    assert sorted(waits) == pytest.approx([i * 1.01 for i in range(20)])
    assert not a.degraded and not b.degraded


async def test_a_429_in_one_process_makes_the_other_wait():
    shared, clock = MemorySharedState(), Clock()
    a, b = fleet(shared, clock), fleet(shared, clock)
    assert await a.acquire() == 0.0
    await a.penalize(7.0)  # the provider said retry-after: 7
    waited = await b.acquire()
    assert waited == pytest.approx(7.0)


async def test_a_caller_asleep_in_its_slot_during_a_429_takes_a_new_one():
    shared, clock = MemorySharedState(), Clock()
    a, b = fleet(shared, clock), fleet(shared, clock)
    await a.acquire()
    slept = asyncio.Event()
    real_sleep = clock.sleep

    async def sleep(seconds: float) -> None:
        # While b sleeps towards its slot (1.01 s away), a gets a 429.
        if not slept.is_set():
            slept.set()
            await a.penalize(30.0)
        await real_sleep(seconds)

    b._sleep = sleep
    waited = await b.acquire()
    # b woke inside the block, and went after it rather than at its old slot.
    assert waited == pytest.approx(1.01 + (30.0 - 1.01))


async def test_tokens_are_shared_and_corrected():
    shared, clock = MemorySharedState(), Clock()
    a, b = fleet(shared, clock, rpm=None, tpm=6000), fleet(shared, clock, None, 6000)
    assert await a.acquire(3000) == 0.0
    await a.adjust(-2400)  # it used 600, not 3000
    # 600 tokens of 6000 a minute: 6 s (and 1% headroom).
    assert await b.acquire(100) == pytest.approx(6.06)


async def test_an_unreachable_bucket_falls_back_to_the_process_with_one_warning(
    caplog: pytest.LogCaptureFixture,
):
    shared, clock = MemorySharedState(), Clock()
    a = fleet(shared, clock, rpm=2)
    shared.unreachable = True
    with caplog.at_level(logging.WARNING, "blackboard.agents"):
        # The process's own bucket holds one minute's burst (2), then waits.
        waits = [await a.acquire() for _ in range(3)]
        await a.penalize(1.0)
        await a.adjust(10)
    assert a.degraded
    assert waits == [0.0, 0.0, pytest.approx(30.0)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "limiting this process alone" in warnings[0].getMessage()
    shared.unreachable = False
    await a.acquire()
    assert not a.degraded


async def test_a_key_that_stays_contended_falls_back_too():
    class Contended(MemorySharedState):
        async def update(self, key: str, value: bytes, last: int) -> int:
            raise StateConflict(key, last)

        async def create(self, key: str, value: bytes) -> int:
            raise StateConflict(key, 0)

    clock = Clock()
    limiter = FleetLimiter(
        Contended(),
        "openai",
        "gpt-5",
        rpm=60,
        tpm=None,
        local=RateLimiter(60, clock=clock, sleep=clock.sleep),
        clock=clock,
        sleep=clock.sleep,
        max_conflicts=3,
    )
    assert await limiter.acquire() == 0.0
    assert limiter.degraded


# --- the lanes' limiters --------------------------------------------------------


def lanes_with_limits() -> Lanes:
    lane = LaneSettings(
        provider="openai",
        model="gpt-5",
        fallbacks=["gpt-5-mini", ModelRef(provider="anthropic", model="claude-x")],
        rpm=50,
        tpm=40_000,
    )
    env = {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"}
    return Lanes(Settings(lanes={"frontier": lane}), env=env)


def test_a_lanes_limits_are_per_model_of_its_provider_and_fleet_wide_with_a_store():
    lanes = lanes_with_limits()
    shared = MemorySharedState()
    chain = lanes.chain("frontier")
    fleet_wide = lanes.limiters("frontier", chain, shared)
    assert set(fleet_wide) == {("openai", "gpt-5"), ("openai", "gpt-5-mini")}
    assert all(isinstance(x, FleetLimiter) for x in fleet_wide.values())
    # One per model for the process, whichever task asks.
    assert lanes.limiters("frontier", chain, shared) == fleet_wide
    alone = lanes.limiters("frontier", chain)
    assert all(isinstance(x, RateLimiter) for x in alone.values())
    assert set(alone) == set(fleet_wide)
