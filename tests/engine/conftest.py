"""An in-process engine (scheduler + workers), on JetStream or on the twins.

The engine's tests run on both: ``store`` is the JetStream store on a test
server (marked integration) or the in-memory twin, with its work queue and
lease. Modules that need a real server (processes, scale) take
``jetstream_store`` alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from blackboard.engine import submission as service
from blackboard.log.events import TaskSpec
from blackboard.log.memory import MemoryEventStore
from blackboard.runtime import config
from blackboard.runtime.inprocess import Stack, running
from tests.engine_handlers import HANDLERS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from blackboard.log.events import AnyEvent
    from blackboard.log.ports import EventStore

BACKENDS = [pytest.param("jetstream", marks=pytest.mark.integration), "memory"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> EventStore:
    """The JetStream store, then the in-memory twin."""
    if request.param == "memory":
        return MemoryEventStore()
    jetstream: EventStore = request.getfixturevalue("jetstream_store")
    return jetstream


def engine_settings(**engine: Any) -> config.Settings:
    env = {"BB_LEASE_SECONDS": "2", "BB_LOCK_TTL_SECONDS": "2"}
    s = config.load(env=env, path=None)
    for k, v in engine.items():
        setattr(s.engine, k, v)
    return s


@pytest.fixture
def settings() -> config.Settings:
    s = engine_settings(backoff_base_s=0.1)
    s.limits = s.limits.__class__(
        max_depth=6, max_tasks=5000, max_tokens=None, max_cost_usd=None
    )
    return s


@pytest.fixture
async def engine(store: EventStore, settings: config.Settings) -> AsyncIterator[Stack]:
    async with running(store, settings, HANDLERS, concurrency=32) as stack:
        yield stack


def spec(
    tid: str, task_type: str = "echo", lane: str = "local", *deps: str, **payload: Any
) -> TaskSpec:
    return TaskSpec(
        task_id=tid, type=task_type, lane=lane, depends_on=deps, payload=payload
    )


async def events_of(store: EventStore, goal_id: str) -> list[AnyEvent]:
    """One goal's events, in log order."""
    return [env.event async for env in store.read_goal(goal_id)]


async def submit(
    store: EventStore,
    settings: config.Settings,
    specs: list[TaskSpec],
    text: str = "test goal",
    **overrides: Any,
) -> str:
    event = service.goal_submitted(
        settings, text, specs=specs, overrides=overrides, submitted_by="test"
    )
    await store.append(event)
    return event.goal_id
