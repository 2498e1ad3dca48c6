"""Request and token budgets of one process, and what any limiter does.

A provider account has limits on requests per minute (RPM) and tokens per minute
(TPM), per model. :class:`RateLimiter` keeps one token bucket for each; every
worker in the process draws from the same limiter through :func:`limiter_for`,
so N workers together stay under the model's limits instead of each assuming
it has them all. Across processes, agents/fleet.py's ``FleetLimiter`` shares
them through the deployment's key-value bucket, and falls back to this one
when the bucket cannot be reached. Both are a :class:`Limiter`.

Callers are served in arrival order without a lock: :meth:`RateLimiter.acquire`
reserves its share at once (a bucket may go into debt) and then sleeps exactly
until the debt is repaid. Reservation is synchronous, so it is atomic under
asyncio, and nothing is bound to an event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["Limiter", "RateLimiter", "limiter_for", "reset_limiters"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Limiter(Protocol):
    """What a model call waits on: a process's limiter, or the fleet's."""

    async def acquire(self, tokens_estimate: int = 0) -> float:
        """Wait until one request of about ``tokens_estimate`` tokens may go.

        Returns the seconds waited.
        """
        ...

    async def adjust(self, tokens_delta: int) -> None:
        """Correct the token budget once a call's real usage is known."""
        ...

    async def penalize(self, seconds: float) -> None:
        """Let no request go for ``seconds`` (the provider answered 429)."""
        ...


class _Bucket:
    """A token bucket that refills continuously and may go into debt."""

    def __init__(self, per_minute: float, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.level = min(self.capacity, self.level + elapsed * self.rate)
        self.updated = now

    def take(self, amount: float) -> float:
        """Take ``amount`` and return the seconds until the level is back at 0."""
        self.level -= min(amount, self.capacity)
        return max(0.0, -self.level / self.rate)


class RateLimiter:
    """Token buckets for requests per minute and tokens per minute.

    Both buckets start full, so a burst of up to one minute's budget goes
    through at once.

    Args:
        rpm: Requests per minute; ``None`` means unlimited.
        tpm: Tokens per minute; ``None`` means unlimited.
        clock: Monotonic seconds.
        sleep: Awaitable sleep; injected by tests.

    Raises:
        ValueError: A limit is not positive.
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        for name, limit in (("rpm", rpm), ("tpm", tpm)):
            if limit is not None and limit <= 0:
                msg = f"{name} must be positive, not {limit}"
                raise ValueError(msg)
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self._requests = _Bucket(rpm, now) if rpm is not None else None
        self._tokens = _Bucket(tpm, now) if tpm is not None else None
        self._blocked_until = now

    async def acquire(self, tokens_estimate: int = 0) -> float:
        """Wait until one request of about ``tokens_estimate`` tokens may go.

        An estimate above the whole per-minute budget is clamped to it, so a
        large request waits for a full bucket instead of forever.

        Args:
            tokens_estimate: Tokens the request is expected to use.

        Returns:
            The seconds this call slept.
        """
        now = self._clock()
        wait = max(0.0, self._blocked_until - now)
        if self._requests is not None:
            self._requests.refill(now)
            wait = max(wait, self._requests.take(1))
        if self._tokens is not None and tokens_estimate > 0:
            self._tokens.refill(now)
            wait = max(wait, self._tokens.take(tokens_estimate))
        if wait > 0:
            await self._sleep(wait)
        return wait

    async def adjust(self, tokens_delta: int) -> None:
        """Correct the token bucket once the real usage of a call is known.

        Args:
            tokens_delta: Actual tokens minus the estimate given to
                :meth:`acquire`; positive charges more, negative refunds.
        """
        if self._tokens is None or tokens_delta == 0:
            return
        self._tokens.refill(self._clock())
        self._tokens.level = min(
            self._tokens.capacity, self._tokens.level - tokens_delta
        )

    async def penalize(self, seconds: float) -> None:
        """Let no request go for ``seconds`` from now (a 429's ``retry-after``).

        Args:
            seconds: How long; a block already longer stays.
        """
        self._blocked_until = max(self._blocked_until, self._clock() + seconds)


_LIMITERS: dict[str, RateLimiter] = {}


def limiter_for(
    provider: str,
    rpm: float | None,
    tpm: float | None,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> RateLimiter:
    """Return the process-wide limiter named ``provider``, creating it once.

    Args:
        provider: What the limits belong to (``<provider>/<model>``).
        rpm: Requests per minute; ``None`` means unlimited.
        tpm: Tokens per minute; ``None`` means unlimited.
        clock: Used only when the limiter is created.
        sleep: Used only when the limiter is created.

    Returns:
        The shared limiter.

    Raises:
        ValueError: The name already has a limiter with other limits: the
            limits describe one model of one account, so two lanes must agree
            on them.
    """
    limiter = _LIMITERS.get(provider)
    if limiter is None:
        limiter = RateLimiter(rpm, tpm, clock=clock, sleep=sleep)
        _LIMITERS[provider] = limiter
    elif (limiter.rpm, limiter.tpm) != (rpm, tpm):
        msg = (
            f"{provider!r} is limited to rpm={limiter.rpm} tpm={limiter.tpm}"
            f" already, not rpm={rpm} tpm={tpm}"
        )
        raise ValueError(msg)
    return limiter


def reset_limiters() -> None:
    """Forget every shared limiter (for tests)."""
    _LIMITERS.clear()
