"""A model's circuit breaker, shared by the fleet: the state machine. Pure.

::

            failures in a row >= threshold
    closed ───────────────────────────────> open
      ^                                      │ cool-down over: one caller
      │ a call succeeds                      v wins the probe
      └──────────────────────────────── half_open
                                             │ the probe fails
                                             └──────────────> open (again)

While a model's breaker is open its calls are skipped, straight to the next
model of the chain (no call, no retries); once ``cooldown_s`` has passed, the
first caller to claim it (a compare-and-set, so one in the whole fleet)
makes a single probe call while every other caller still skips. A success
closes the breaker, a retryable failure opens it again for another
cool-down. A terminal error (a 400) says nothing about the model's health:
it is not counted, and a probe that meets one hands the probe back. A probe
whose process died holding it is taken over after ``probe_s``.

The state lives in the deployment's shared state (agents/fleet.py's
``FleetBreaker`` reads it, applies these functions and writes the result by
compare-and-set); times are wall-clock POSIX seconds.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Protocol

import msgspec

__all__ = [
    "Breaker",
    "BreakerConfig",
    "BreakerState",
    "Gate",
    "Transition",
    "before_call",
    "decode",
    "encode",
    "on_failure",
    "on_inconclusive",
    "on_success",
    "transition",
]

State = Literal["closed", "open", "half_open"]
Verdict = Literal["allow", "skip", "probe"]
"""Before a call: make it; skip the model; make it as the one probe."""

STATES: tuple[State, ...] = ("closed", "half_open", "open")
"""In the order of the metric's values (0, 1, 2)."""


class BreakerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """When a breaker opens and how long it stays open."""

    failures: int = 5
    """Retryable failures in a row that open it."""
    cooldown_s: float = 30.0
    """How long it stays open before a probe."""
    probe_s: float = 120.0
    """How long a probe may take before another caller may probe instead
    (the lane's call timeout)."""


class BreakerState(msgspec.Struct, frozen=True, kw_only=True):
    """One model's breaker, as stored."""

    state: State = "closed"
    failures: int = 0
    """Retryable failures in a row (those that opened it, while open)."""
    since: float = 0.0
    """When it entered this state."""
    probe_until: float = 0.0
    """Half-open: until when the probe belongs to the caller that claimed it."""
    reason: str = ""
    """Why it moved last (the failure that opened it)."""


class Transition(NamedTuple):
    """A move of a breaker, as the caller that made it records it."""

    from_state: State
    to_state: State
    failures: int
    reason: str


class Gate(NamedTuple):
    """What a caller may do before a call, and what its claim changed."""

    verdict: Verdict
    change: Transition | None = None
    retry_in: float | None = None
    """Skipped: seconds until the model may be probed."""


class Breaker(Protocol):
    """A model's breaker as a fallback chain consults it."""

    async def before_call(self) -> Gate:
        """Whether to call the model now (and the transition a probe made)."""
        ...

    async def failure(self, reason: str) -> tuple[State, Transition | None]:
        """Count a retryable failure; the state after it, and any transition."""
        ...

    async def success(self) -> Transition | None:
        """The model answered: close the breaker (the transition, if any)."""
        ...

    async def inconclusive(self) -> None:
        """A call ended in a terminal error, or was never made: not counted."""
        ...


def before_call(
    state: BreakerState, now: float, config: BreakerConfig
) -> tuple[Gate, BreakerState | None]:
    """Decide a call: the gate, and the state to write (a probe claimed).

    Args:
        state: The breaker as read.
        now: Wall-clock seconds.
        config: The lane's breaker settings.

    Returns:
        The gate and the new state (None: nothing to write).
    """
    if state.state == "closed":
        return Gate("allow"), None
    if state.state == "open":
        ready = state.since + config.cooldown_s
        if now < ready:
            return Gate("skip", retry_in=ready - now), None
        probing = BreakerState(
            state="half_open",
            failures=state.failures,
            since=now,
            probe_until=now + config.probe_s,
            reason="cool-down over: one call probes the model",
        )
        return Gate("probe", transition(state, probing)), probing
    if now < state.probe_until:
        return Gate("skip", retry_in=state.probe_until - now), None
    # The probe's caller never reported back (its process died): take it.
    return Gate("probe"), msgspec.structs.replace(
        state, probe_until=now + config.probe_s
    )


def on_failure(
    state: BreakerState, now: float, config: BreakerConfig, reason: str
) -> BreakerState:
    """The breaker after a retryable failure of a call.

    Closed, it counts the failure and opens at the threshold; half-open (the
    probe failed), it opens again; open (a call that was already under way),
    it counts and stays open, its cool-down unchanged.
    """
    failures = state.failures + 1
    if state.state == "closed" and failures < config.failures:
        return msgspec.structs.replace(state, failures=failures)
    if state.state == "open":
        return msgspec.structs.replace(state, failures=failures)
    why = reason if state.state == "closed" else f"the probe failed: {reason}"
    return BreakerState(state="open", failures=failures, since=now, reason=why)


def on_success(state: BreakerState, now: float) -> BreakerState | None:
    """The breaker after a call succeeded: closed (None: it already was)."""
    if state.state == "closed" and state.failures == 0:
        return None
    return BreakerState(state="closed", since=now, reason="a call succeeded")


def on_inconclusive(state: BreakerState) -> BreakerState | None:
    """After a call that says nothing of the model (a 400, or none made).

    A probe is handed back, so the next caller probes at once.
    """
    if state.state != "half_open" or state.probe_until == 0.0:
        return None
    return msgspec.structs.replace(state, probe_until=0.0)


def transition(old: BreakerState, new: BreakerState) -> Transition | None:
    """The move from ``old`` to ``new``, if the state changed."""
    if old.state == new.state:
        return None
    return Transition(old.state, new.state, new.failures, new.reason)


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(BreakerState)


def encode(state: BreakerState) -> bytes:
    """The breaker as it is stored."""
    return _ENCODER.encode(state)


def decode(data: bytes | None) -> BreakerState:
    """A stored breaker; absent or unreadable is closed."""
    if data is None:
        return BreakerState()
    try:
        return _DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return BreakerState()
