"""Tenants' rate quotas: tokens per minute and dollars per day. Pure.

A tenant may be limited (``[tenants.<name>]``) to ``tokens_per_minute`` and
``usd_per_day``. The scheduler folds every recorded model call
(``ModelCalled``: its time, tokens and cost) into :class:`TenantUsage`, and
before it releases a tenant's work to a lane it asks :meth:`TenantUsage.throttle`:
a tenant at or over a quota gets no new work until the quota has room again;
its work waits in the scheduler's ready set, never dropped, and the wait is
recorded on each goal it holds back (``GoalThrottled``).

What is counted is what the log says was used, when it says it was used:

* tokens per minute: input, cached and output tokens of the calls made in the
  last 60 seconds (a sliding window); the wait ends when enough of them are
  older than that for the total to be under the quota again;
* dollars per day: the cost of the calls made since midnight UTC; the wait
  ends at the next midnight UTC.

A quota is enforced where work is released, so tasks already running finish
and may take a tenant past it (by at most what they spend); the fleet-wide
rate limits of the providers are what paces the calls themselves.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

__all__ = ["RateQuota", "TenantUsage", "Throttle"]

_MINUTE = 60.0


@dataclass(frozen=True, slots=True)
class RateQuota:
    """One tenant's rate quotas (``None``: not limited)."""

    tokens_per_minute: int | None = None
    usd_per_day: float | None = None


@dataclass(frozen=True, slots=True)
class Throttle:
    """A tenant held back by a quota until ``until``."""

    tenant: str
    quota: str
    """``tokens_per_minute`` or ``usd_per_day``."""
    used: float
    limit: float
    until: datetime

    @property
    def reason(self) -> str:
        """One line for the log and ``bb status``."""
        used = f"{self.used:.4f}" if self.quota == "usd_per_day" else f"{self.used:g}"
        return (
            f"tenant {self.tenant} is at its {self.quota} quota ({used} used of"
            f" {self.limit:g}); its work waits until {self.until:%Y-%m-%dT%H:%M:%SZ}"
        )


@dataclass(slots=True)
class _Usage:
    minute: deque[tuple[float, int]] = field(default_factory=deque)
    """(POSIX seconds, tokens) of the calls of the last minute, oldest first."""
    minute_tokens: int = 0
    day: datetime | None = None
    """Midnight UTC of the day ``day_usd`` counts."""
    day_usd: float = 0.0


@dataclass(slots=True)
class TenantUsage:
    """What each tenant's calls used, recently: folded from ``ModelCalled``."""

    _tenants: dict[str, _Usage] = field(default_factory=dict)

    def record(self, tenant: str, at: datetime, tokens: int, cost_usd: float) -> None:
        """Count one call of ``tenant`` made at ``at``."""
        usage = self._tenants.setdefault(tenant, _Usage())
        ts = at.timestamp()
        if tokens > 0:
            usage.minute.append((ts, tokens))
            usage.minute_tokens += tokens
            # Calls are recorded in about the order they were made, so what
            # is a minute older than the newest is of no use any more.
            _expire(usage, ts - _MINUTE)
        day = _midnight(at)
        if usage.day is None or day > usage.day:
            usage.day, usage.day_usd = day, 0.0
        if day == usage.day:
            usage.day_usd += cost_usd

    def tokens_last_minute(self, tenant: str, now: datetime) -> int:
        """Tokens of ``tenant``'s calls in the minute before ``now``."""
        usage = self._tenants.get(tenant)
        if usage is None:
            return 0
        _expire(usage, now.timestamp() - _MINUTE)
        return usage.minute_tokens

    def usd_today(self, tenant: str, now: datetime) -> float:
        """Dollars of ``tenant``'s calls since midnight UTC before ``now``."""
        usage = self._tenants.get(tenant)
        if usage is None or usage.day != _midnight(now):
            return 0.0
        return usage.day_usd

    def throttle(self, tenant: str, quota: RateQuota, now: datetime) -> Throttle | None:
        """The quota ``tenant`` is at, if any: its work waits until it has room."""
        if quota.usd_per_day is not None:
            usd = self.usd_today(tenant, now)
            if usd >= quota.usd_per_day:
                return Throttle(
                    tenant,
                    "usd_per_day",
                    used=usd,
                    limit=quota.usd_per_day,
                    until=_midnight(now) + timedelta(days=1),
                )
        if quota.tokens_per_minute is not None:
            tokens = self.tokens_last_minute(tenant, now)
            if tokens >= quota.tokens_per_minute:
                return Throttle(
                    tenant,
                    "tokens_per_minute",
                    used=tokens,
                    limit=quota.tokens_per_minute,
                    until=self._room_at(tenant, quota.tokens_per_minute),
                )
        return None

    def _room_at(self, tenant: str, limit: int) -> datetime:
        """When enough calls leave the minute for the total to be under ``limit``."""
        usage = self._tenants[tenant]
        left = usage.minute_tokens
        for ts, tokens in usage.minute:
            left -= tokens
            if left < limit:
                return datetime.fromtimestamp(ts + _MINUTE, UTC)
        return datetime.fromtimestamp(usage.minute[-1][0] + _MINUTE, UTC)


def _expire(usage: _Usage, before: float) -> None:
    while usage.minute and usage.minute[0][0] <= before:
        usage.minute_tokens -= usage.minute.popleft()[1]


def _midnight(at: datetime) -> datetime:
    day = at.astimezone(UTC)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
