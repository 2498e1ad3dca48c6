"""The scheduler's window: what it lets out to a lane, and in what order.

Read from the log, as a user would check it: how many tasks of the lane were
ready or running at each point, and the order of the ``TaskReady`` events.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from blackboard.engine import control as client
from blackboard.engine import submission as service
from blackboard.engine.dispatch import lane_loads
from blackboard.log.events import (
    TaskReady,
)
from blackboard.runtime import config
from blackboard.runtime.inprocess import policy_from, running
from tests.engine.conftest import spec
from tests.engine_handlers import HANDLERS
from tests.waiting import goal_until
from tests.windows import most_in_flight

if TYPE_CHECKING:
    from blackboard.log.ports import EventStore


async def all_events(store: EventStore) -> list[Any]:
    return [env.event async for env in store.read()]


async def submit(
    store: EventStore, s: config.Settings, specs: list[Any], **kw: Any
) -> str:
    event = service.goal_submitted(s, "goal", specs=specs, submitted_by="t", **kw)
    await store.append(event)
    return event.goal_id


def slow(tid: str, seconds: float = 0.5) -> Any:
    return spec(tid, "slow", "local", seconds=seconds)


async def test_an_urgent_goal_goes_before_queued_background_work(store, settings):
    settings.lanes["local"].window = 2
    async with running(store, settings, HANDLERS, concurrency=8):
        background = await submit(store, settings, [slow(f"b{i}") for i in range(8)])

        await goal_until(
            store,
            background,
            lambda g: sum(t.status != "pending" for t in g.tasks.values()) >= 2,
        )
        # What `bb status --lanes` shows: the window full, the rest waiting.
        [load] = lane_loads(await client.goals(store), policy_from(settings).window)
        assert (load.lane, load.window, load.in_flight) == ("local", 2, 2)
        assert load.waiting >= 4 and load.tenants["default"][0] == 2
        urgent = await submit(
            store, settings, [slow("u0", 0.05), slow("u1", 0.05)], priority=10
        )
        for goal in (urgent, background):
            done = await client.wait_goal(store, goal, timeout_s=60)
            assert done.status == "done", done.reason
    events = await all_events(store)
    assert most_in_flight(events) == 2  # the window, never more
    order = [(e.goal_id, e.task_id) for e in events if isinstance(e, TaskReady)]
    first_urgent = order.index((urgent, "u0"))
    # Only what was already out when it arrived went before it.
    assert [g for g, _ in order[:first_urgent]] == [background] * 2
    assert {t for g, t in order[first_urgent : first_urgent + 2]} == {"u0", "u1"}


async def test_two_tenants_share_a_saturated_lane_by_weight(store, settings):
    settings.lanes["local"].window = 3
    settings.tenants = {"big": config.TenantSettings(weight=2.0)}
    async with running(store, settings, HANDLERS, concurrency=8):
        goals = {
            tenant: await submit(
                store,
                settings,
                [slow(f"{tenant}{i}", 0.2) for i in range(12)],
                tenant=tenant,
            )
            for tenant in ("big", "small")
        }
        for goal in goals.values():
            done = await client.wait_goal(store, goal, timeout_s=60)
            assert done.status == "done", done.reason
    events = await all_events(store)
    assert most_in_flight(events) == 3
    tenant_of = {g: t for t, g in goals.items()}
    # While both had work waiting (the first 18 dispatches), 2:1.
    ready = [tenant_of[e.goal_id] for e in events if isinstance(e, TaskReady)]
    shares = Counter(ready[:18])
    assert abs(shares["big"] - 12) <= 1 and abs(shares["small"] - 6) <= 1, shares


async def test_without_a_window_everything_ready_goes_out_at_once(store, settings):
    settings.lanes["local"].window = 0
    async with running(store, settings, HANDLERS, concurrency=16):
        goal = await submit(store, settings, [slow(f"t{i}", 0.5) for i in range(10)])
        done = await client.wait_goal(store, goal, timeout_s=60)
    assert done.status == "done", done.reason
    assert most_in_flight(await all_events(store)) == 10


async def test_a_tenant_over_its_quota_waits_and_nothing_is_dropped(store, settings):
    settings.lanes["local"].window = 10
    settings.tenants = {"capped": config.TenantSettings(max_in_flight=2)}
    async with running(store, settings, HANDLERS, concurrency=16):
        capped = await submit(
            store, settings, [slow(f"c{i}", 0.3) for i in range(6)], tenant="capped"
        )
        free = await submit(
            store, settings, [slow(f"f{i}", 0.3) for i in range(6)], tenant="free"
        )
        for goal in (capped, free):
            done = await client.wait_goal(store, goal, timeout_s=60)
            assert done.status == "done", done.reason
    events = await all_events(store)
    assert most_in_flight([e for e in events if e.goal_id == capped]) == 2
    assert most_in_flight([e for e in events if e.goal_id == free]) == 6
