"""Circuit breakers: the pure state machine (agents/breaker.py), the fleet's
breaker over the twin of the shared state (agents/fleet.py), and a fallback
chain that consults them (agents/resilient.py).

The real SDK against a primary that answers 500s, with the events on the
log, is tests/agents/test_breaker_fallback.py.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from agents import breaker as b
from agents.cost import PriceTable
from agents.fleet import FleetBreaker
from agents.lanes import Lanes
from agents.models import (
    Message,
    ModelRequest,
    ModelResponse,
    RetryableModelError,
    TerminalModelError,
)
from agents.resilient import ResilientModel
from blackboard.errors import ConfigError
from blackboard.log.memory_work import MemorySharedState
from blackboard.runtime import config

CONFIG = b.BreakerConfig(failures=3, cooldown_s=30.0, probe_s=60.0)


def failed(state: b.BreakerState, n: int, now: float = 0.0) -> b.BreakerState:
    for _ in range(n):
        state = b.on_failure(state, now, CONFIG, "status 500: boom")
    return state


# --- the state machine ----------------------------------------------------------


def test_closed_counts_failures_and_opens_at_the_threshold():
    s = failed(b.BreakerState(), 2)
    assert (s.state, s.failures) == ("closed", 2)
    assert b.before_call(s, 0.0, CONFIG) == (b.Gate("allow"), None)
    opened = failed(s, 1, now=10.0)
    assert (opened.state, opened.failures, opened.since) == ("open", 3, 10.0)
    assert b.transition(s, opened) == ("closed", "open", 3, "status 500: boom")


def test_a_success_resets_the_count():
    s = failed(b.BreakerState(), 2)
    closed = b.on_success(s, 5.0)
    assert closed is not None
    assert (closed.state, closed.failures) == ("closed", 0)
    assert b.transition(s, closed) is None  # closed to closed: no move
    # Nothing to write when there is nothing to reset.
    assert b.on_success(b.BreakerState(), 5.0) is None


def test_open_skips_until_the_cooldown_then_one_probe():
    opened = failed(b.BreakerState(), 3, now=100.0)
    gate, new = b.before_call(opened, 110.0, CONFIG)
    assert (gate.verdict, new) == ("skip", None)
    assert gate.retry_in == pytest.approx(20.0)
    gate, probing = b.before_call(opened, 130.0, CONFIG)
    assert gate.verdict == "probe"
    assert probing is not None and probing.state == "half_open"
    assert gate.change is not None
    assert gate.change[:2] == ("open", "half_open")
    # Everyone else skips while the probe is out.
    other, none = b.before_call(probing, 131.0, CONFIG)
    assert (other.verdict, none) == ("skip", None)


def test_the_probe_closes_on_success_and_reopens_on_failure():
    _, probing = b.before_call(failed(b.BreakerState(), 3), 30.0, CONFIG)
    assert probing is not None
    closed = b.on_success(probing, 31.0)
    assert closed is not None
    assert b.transition(probing, closed) == (
        "half_open",
        "closed",
        0,
        "a call succeeded",
    )
    again = b.on_failure(probing, 31.0, CONFIG, "status 503: busy")
    assert (again.state, again.since) == ("open", 31.0)
    assert again.reason == "the probe failed: status 503: busy"


def test_a_probe_nobody_reported_on_is_taken_over_after_probe_s():
    _, probing = b.before_call(failed(b.BreakerState(), 3), 30.0, CONFIG)
    assert probing is not None
    gate, retaken = b.before_call(probing, 30.0 + 61.0, CONFIG)
    assert gate == b.Gate("probe")  # no move: it was half-open already
    assert retaken is not None and retaken.probe_until == 30.0 + 61.0 + 60.0


def test_an_inconclusive_probe_is_handed_back():
    _, probing = b.before_call(failed(b.BreakerState(), 3), 30.0, CONFIG)
    assert probing is not None
    handed = b.on_inconclusive(probing)
    assert handed is not None
    assert b.before_call(handed, 30.5, CONFIG)[0].verdict == "probe"
    assert b.on_inconclusive(b.BreakerState()) is None


def test_a_failure_while_open_counts_but_keeps_the_cooldown():
    opened = failed(b.BreakerState(), 3, now=100.0)
    later = b.on_failure(opened, 120.0, CONFIG, "late")
    assert (later.state, later.failures, later.since) == ("open", 4, 100.0)


def test_a_stored_breaker_that_does_not_decode_is_closed():
    assert b.decode(None) == b.decode(b"junk") == b.BreakerState()
    s = failed(b.BreakerState(), 3)
    assert b.decode(b.encode(s)) == s


# --- the fleet's breaker --------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_two_processes_count_into_one_breaker_and_one_wins_the_probe():
    shared, clock = MemorySharedState(), Clock()
    a = FleetBreaker(shared, "openai", "gpt-5", CONFIG, clock=clock)
    c = FleetBreaker(shared, "openai", "gpt-5", CONFIG, clock=clock)
    assert (await a.failure("x"))[1] is None
    assert (await c.failure("x"))[1] is None
    state, moved = await a.failure("x")
    assert state == "open"
    assert moved is not None and moved[:3] == ("closed", "open", 3)
    assert (await c.before_call()).verdict == "skip"
    clock.now += 30
    gates = await asyncio.gather(a.before_call(), c.before_call())
    assert sorted(g.verdict for g in gates) == ["probe", "skip"]
    [probe] = [g for g in gates if g.verdict == "probe"]
    assert probe.change is not None and probe.change[:2] == ("open", "half_open")
    closed = await c.success()
    assert closed is not None and closed[:2] == ("half_open", "closed")
    assert (await a.before_call()).verdict == "allow"


async def test_an_unreachable_breaker_allows_calls_with_one_warning(
    caplog: pytest.LogCaptureFixture,
):
    shared = MemorySharedState()
    fb = FleetBreaker(shared, "openai", "gpt-5", CONFIG, clock=Clock())
    shared.unreachable = True
    with caplog.at_level(logging.WARNING, "blackboard.agents"):
        assert (await fb.before_call()).verdict == "allow"
        assert await fb.failure("x") == ("closed", None)
        assert await fb.success() is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "calling the model regardless" in warnings[0].getMessage()


# --- a chain that consults its breakers -------------------------------------------


class Scripted:
    """A client that fails with the statuses it is given, then answers."""

    def __init__(self, provider: str, statuses: list[int]) -> None:
        self.provider = provider
        self.statuses = statuses
        self.calls: list[str] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls.append(request.model)
        if self.statuses:
            status = self.statuses.pop(0)
            if status == 400:
                raise TerminalModelError("bad request", status=400)
            raise RetryableModelError(f"status {status}", status=status)
        return ModelResponse(
            provider=self.provider,
            model=request.model,
            text="ok",
            stop_reason="end_turn",
            tokens_in=1,
            tokens_out=1,
            raw={},
        )


REQUEST = ModelRequest(model="x", messages=(Message("user", "hi"),))


def chain_with_breakers(
    primary: Scripted, backup: Scripted, shared: MemorySharedState, clock: Clock
) -> tuple[ResilientModel, list[tuple[str, str, str, str]]]:
    moves: list[tuple[str, str, str, str]] = []

    async def moved(provider: str, model: str, change: b.Transition) -> None:
        moves.append((provider, model, change.from_state, change.to_state))

    async def sleep(seconds: float) -> None:
        pass

    breakers = {
        (c.provider, m): FleetBreaker(shared, c.provider, m, CONFIG, clock=clock)
        for c, m in ((primary, "main"), (backup, "backup"))
    }
    model = ResilientModel(
        [(primary, "main"), (backup, "backup")],
        PriceTable(),
        breakers=breakers,
        on_breaker=moved,
        max_retries_per_model=1,
        sleep=sleep,
    )
    return model, moves


async def test_an_open_breaker_sends_calls_to_the_fallback_without_a_call():
    shared, clock = MemorySharedState(), Clock()
    primary, backup = Scripted("p", [500] * 3), Scripted("q", [])
    model, moves = chain_with_breakers(primary, backup, shared, clock)
    # Two tries of main fail (max_retries 1), then backup answers.
    await model.complete(REQUEST)
    assert primary.calls == ["main", "main"]
    # The third failure in a row opens main's breaker: no second try.
    await model.complete(REQUEST)
    assert primary.calls == ["main"] * 3
    assert moves == [("p", "main", "closed", "open")]
    # Open: main is not called at all.
    for _ in range(3):
        await model.complete(REQUEST)
    assert primary.calls == ["main"] * 3
    assert len(backup.calls) == 5
    # Cooled down: one probe, it succeeds, the breaker closes.
    clock.now += CONFIG.cooldown_s
    await model.complete(REQUEST)
    assert primary.calls == ["main"] * 4
    assert moves[1:] == [
        ("p", "main", "open", "half_open"),
        ("p", "main", "half_open", "closed"),
    ]


async def test_a_failed_probe_is_one_call_and_reopens():
    shared, clock = MemorySharedState(), Clock()
    primary, backup = Scripted("p", [500] * 4), Scripted("q", [])
    model, moves = chain_with_breakers(primary, backup, shared, clock)
    await model.complete(REQUEST)
    await model.complete(REQUEST)
    clock.now += CONFIG.cooldown_s
    await model.complete(REQUEST)
    assert primary.calls == ["main"] * 4  # the probe was a single try
    assert [m[2:] for m in moves] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
    ]


async def test_terminal_errors_do_not_count():
    shared, clock = MemorySharedState(), Clock()
    primary, backup = Scripted("p", [400] * 5), Scripted("q", [])
    model, moves = chain_with_breakers(primary, backup, shared, clock)
    for _ in range(5):
        with pytest.raises(TerminalModelError):
            await model.complete(REQUEST)
    assert moves == []
    assert len(primary.calls) == 5


async def test_every_breaker_open_is_retryable_after_the_cooldown():
    shared, clock = MemorySharedState(), Clock()
    primary, backup = Scripted("p", [500] * 3), Scripted("q", [500] * 3)
    model, _ = chain_with_breakers(primary, backup, shared, clock)
    for _ in range(2):
        with pytest.raises(RetryableModelError):
            await model.complete(REQUEST)
    clock.now += 10
    with pytest.raises(RetryableModelError, match="circuit breaker is open") as e:
        await model.complete(REQUEST)
    assert e.value.retry_after == pytest.approx(20.0)


# --- the lane's settings ------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("breaker_failures = -1", "breaker_failures = -1"),
        ("breaker_cooldown_s = 0", "breaker_cooldown_s must be above 0"),
    ],
)
def test_breaker_settings_are_checked(tmp_path, line, says):
    toml = tmp_path / "bb.toml"
    toml.write_text(f'[lanes.local]\nprovider = "scripted"\n{line}\n')
    with pytest.raises(ConfigError, match=says):
        config.load(toml, env={})


def test_breakers_are_on_by_default_and_off_at_zero():
    lane = config.LaneSettings()
    assert (lane.breaker_failures, lane.breaker_cooldown_s) == (5, 30.0)
    lanes = Lanes(
        config.Settings(lanes={"local": config.LaneSettings(breaker_failures=0)})
    )
    chain = lanes.chain("local")
    assert lanes.breakers("local", chain, MemorySharedState()) == {}
    on = Lanes(config.Settings(lanes={"local": lane}))
    assert set(on.breakers("local", on.chain("local"), MemorySharedState())) == {
        ("scripted", "scripted")
    }
    # Without a store to share them, there are none.
    assert on.breakers("local", on.chain("local")) == {}
