"""Tenants' rate quotas as a pure fold: what was used, and until when a tenant waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from blackboard.engine.quota import RateQuota, TenantUsage

T0 = datetime(2026, 12, 7, 23, 59, 0, tzinfo=UTC)


def test_tokens_count_over_a_sliding_minute():
    usage = TenantUsage()
    usage.record("a", T0, 600, 0.0)
    usage.record("a", T0 + timedelta(seconds=30), 600, 0.0)
    quota = RateQuota(tokens_per_minute=1000)
    found = usage.throttle("a", quota, T0 + timedelta(seconds=31))
    assert found is not None and found.quota == "tokens_per_minute"
    assert found.used == 1200
    # When the first call leaves the minute, 600 < 1000: the wait ends then.
    assert found.until == T0 + timedelta(seconds=60)
    assert usage.throttle("a", quota, T0 + timedelta(seconds=60)) is None
    assert usage.tokens_last_minute("a", T0 + timedelta(seconds=91)) == 0
    assert usage.throttle("b", quota, T0) is None  # another tenant used nothing


def test_dollars_count_per_utc_day_and_the_wait_ends_at_midnight():
    usage = TenantUsage()
    quota = RateQuota(usd_per_day=1.0)
    usage.record("a", T0, 0, 0.6)
    assert usage.throttle("a", quota, T0) is None
    usage.record("a", T0 + timedelta(seconds=10), 0, 0.5)
    found = usage.throttle("a", quota, T0 + timedelta(seconds=11))
    assert found is not None and found.quota == "usd_per_day"
    assert found.until == datetime(2026, 12, 8, tzinfo=UTC)
    assert "waits until 2026-12-08T00:00:00Z" in found.reason
    after = datetime(2026, 12, 8, 0, 0, 1, tzinfo=UTC)
    assert usage.usd_today("a", after) == 0.0
    assert usage.throttle("a", quota, after) is None
    # A call recorded late, for the day before, does not count for today.
    usage.record("a", after, 0, 0.2)
    usage.record("a", T0, 0, 5.0)
    assert usage.usd_today("a", after) == 0.2


def test_the_dollar_quota_is_asked_before_the_token_quota():
    usage = TenantUsage()
    usage.record("a", T0, 5000, 2.0)
    found = usage.throttle("a", RateQuota(tokens_per_minute=10, usd_per_day=1), T0)
    assert found is not None and found.quota == "usd_per_day"
