"""Tenants' rate quotas: work over a dollar or token quota waits, then goes on."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from blackboard.cli import display
from blackboard.engine import control as client
from blackboard.engine import submission as service
from blackboard.log.events import GoalThrottled, TaskSpec
from blackboard.runtime.config import TenantSettings
from blackboard.runtime.inprocess import running
from tests.engine.conftest import events_of, spec
from tests.engine_handlers import HANDLERS
from tests.waiting import EVERY_S


class Clock:
    """The scheduler's now, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def submit(store, settings, specs: list[TaskSpec], tenant: str) -> str:
    event = service.goal_submitted(
        settings, f"{tenant}'s goal", specs=specs, tenant=tenant, submitted_by="test"
    )
    await store.append(event)
    return event.goal_id


async def throttles(store, goal_id: str) -> list[GoalThrottled]:
    return [e for e in await events_of(store, goal_id) if isinstance(e, GoalThrottled)]


async def first_throttle(store, goal_id: str) -> list[GoalThrottled]:
    """The goal's GoalThrottled events, once there is one (30 s at most)."""
    for _ in range(int(30 / EVERY_S)):
        found = await throttles(store, goal_id)
        if found:
            return found
        await asyncio.sleep(EVERY_S)
    raise AssertionError(f"goal {goal_id} was never throttled")


async def test_a_tenant_over_its_dollar_quota_waits_for_the_next_day(store, settings):
    noon = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    clock = Clock(noon)
    settings.tenants = {"acme": TenantSettings(usd_per_day=0.10)}
    specs = [
        spec("pay", "spend", "local", usd=0.25, at=noon.isoformat()),
        spec("then", "echo", "local", "pay"),
    ]
    async with running(store, settings, HANDLERS, clock=clock):
        goal_id = await submit(store, settings, specs, "acme")
        # The first task spends the day's quota; the next one waits for it.
        found = await first_throttle(store, goal_id)
        assert found[0].quota == "usd_per_day"
        assert found[0].until == datetime(2026, 12, 8, tzinfo=UTC)
        assert found[0].used == 0.25 and found[0].limit == 0.10
        assert "usd_per_day quota" in found[0].reason
        # Another tenant is not held back by acme's quota.
        other = await submit(store, settings, [spec("x", "echo")], "other")
        assert (await client.wait_goal(store, other, timeout_s=30)).status == "done"
        goal = await client.goal_state(store, goal_id)
        assert goal.status == "running"
        assert goal.tasks["then"].status == "pending"
        assert goal.throttled is not None and goal.throttled.tenant == "acme"
        # What `bb status` shows of it.
        assert display.shown_status(goal) == "throttled"
        shown = display.goal_json(goal)["throttled"]
        assert isinstance(shown, dict) and shown["until"] == "2026-12-08T00:00:00+00:00"
        # The next day the quota has room: the work goes out by itself.
        clock.now = datetime(2026, 12, 8, 0, 0, 1, tzinfo=UTC)
        goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "done", goal.reason
    assert goal.throttled is None
    assert len(await throttles(store, goal_id)) == 1  # one wait, one note


async def test_a_tenant_over_its_token_quota_waits_a_minute(store, settings):
    start = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    clock = Clock(start)
    settings.tenants = {"acme": TenantSettings(tokens_per_minute=1000)}
    specs = [
        spec("big", "spend", "local", tokens=1500, at=start.isoformat()),
        spec("then", "echo", "local", "big"),
    ]
    async with running(store, settings, HANDLERS, clock=clock):
        goal_id = await submit(store, settings, specs, "acme")
        found = await first_throttle(store, goal_id)
        assert found[0].quota == "tokens_per_minute"
        assert found[0].until == start + timedelta(seconds=60)
        assert (await client.goal_state(store, goal_id)).tasks[
            "then"
        ].status == "pending"
        clock.now = start + timedelta(seconds=61)
        goal = await client.wait_goal(store, goal_id, timeout_s=30)
    assert goal.status == "done", goal.reason
