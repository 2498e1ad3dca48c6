"""A model's circuit breaker on the real engine, the real SDK and a real
nats-server: a primary that answers 500s opens its breaker after the
configured count, calls then go to the fallback without reaching the
primary at all, one probe after the cool-down closes it, and every move is a
``BreakerChanged`` event in the goal of the call that made it (and a metric).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from agents.fleet import read_breakers
from agents.handlers import Agents
from agents.lanes import Lanes, models_of
from blackboard import telemetry
from blackboard.engine import control as client
from blackboard.engine.handlers import BUILTIN
from blackboard.log.events import BreakerChanged, ModelCalled
from blackboard.runtime import config
from blackboard.runtime.inprocess import running
from tests.e2e.test_cli_basics import bb
from tests.engine.conftest import events_of, spec, submit
from tests.fakes.providers import ANTHROPIC_PATH, Canned, FakeProviderServer
from tests.telemetry.test_otel import _points

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from blackboard.log.store import JetStreamEventStore

pytestmark = pytest.mark.integration

FAILURES = 3
COOLDOWN_S = 5.0


@pytest.fixture
def metrics() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    telemetry.install(meter_provider=MeterProvider(metric_readers=[reader]))
    try:
        yield reader
    finally:
        telemetry.disable()


def settings(fake: FakeProviderServer) -> config.Settings:
    s = config.load(
        env={"BB_LEASE_SECONDS": "5", "BB_LOCK_TTL_SECONDS": "2"}, path=None
    )
    s.engine.backoff_base_s = 0.05
    s.prices = {
        m: {"input_per_mtok": 0.0, "output_per_mtok": 0.0}
        for m in ("claude-main", "claude-backup")
    }
    s.lanes = {
        "frontier": config.LaneSettings(
            provider="anthropic",
            model="claude-main",
            base_url=fake.anthropic_base_url,
            fallbacks=["claude-backup"],
            max_retries=0,
            concurrency=1,
            tools=[],
            breaker_failures=FAILURES,
            breaker_cooldown_s=COOLDOWN_S,
        ),
    }
    return s


async def one_task(store: JetStreamEventStore, s: config.Settings, n: int) -> str:
    goal_id = await submit(
        store,
        s,
        [spec(f"t{n}", "execute", "frontier", title=f"task {n}", instruction="do")],
        f"goal {n}",
    )
    goal = await client.wait_goal(store, goal_id, timeout_s=60)
    assert goal.status == "done", goal.reason
    return goal_id


async def test_a_failing_primary_trips_its_breaker_and_a_probe_closes_it(
    store: JetStreamEventStore,
    metrics: InMemoryMetricReader,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    reader = metrics
    down = True

    def responder(path: str, body: dict[str, Any]) -> Canned | None:
        if path == ANTHROPIC_PATH and body.get("model") == "claude-main" and down:
            return Canned(status=500, message="internal error")
        return None

    with FakeProviderServer(text="the work is done", responder=responder) as fake:

        def asked(model: str) -> int:
            return sum(
                1
                for r in fake.requests
                if r.path == ANTHROPIC_PATH and r.body.get("model") == model
            )

        s = settings(fake)
        agents = Agents(s, Lanes(s, env={"ANTHROPIC_API_KEY": "sk-ant-test"}))
        goals: list[str] = []
        async with running(store, s, {**BUILTIN, **agents.handlers()}):
            # Each task: the primary fails once (no retries), the backup
            # answers. The third failure in a row opens the breaker.
            for n in range(FAILURES):
                goals.append(await one_task(store, s, n))
            assert (asked("claude-main"), asked("claude-backup")) == (3, 3)
            [(_, _, state), _] = await read_breakers(store.shared_state(), models_of(s))
            assert state.state == "open"
            # Open: the tasks go to the backup, the primary is not asked.
            for n in range(FAILURES, FAILURES + 2):
                goals.append(await one_task(store, s, n))
            assert (asked("claude-main"), asked("claude-backup")) == (3, 5)
            # `bb status` shows it, from the bucket, to anyone reading (still
            # open: nobody has probed yet, whatever the time).
            toml = tmp_path / "bb.toml"
            toml.write_text(
                "[lanes.frontier]\n"
                'provider = "anthropic"\n'
                'model = "claude-main"\n'
                'fallbacks = ["claude-backup"]\n'
            )
            env = {**cli_env, "BB_CONFIG": str(toml)}
            shown = await asyncio.to_thread(bb, ["status", "--breakers", "--json"], env)
            assert shown.returncode == 0, shown.stderr
            [row] = json.loads(shown.stdout)
            assert (row["provider"], row["model"], row["state"]) == (
                "anthropic",
                "claude-main",
                "open",
            )
            assert row["failures"] == FAILURES and "500" in row["reason"]
            listed = await asyncio.to_thread(bb, ["status"], env)
            assert listed.returncode == 0, listed.stderr
            assert "breaker open      anthropic/claude-main  3 failures" in (
                listed.stdout
            )
            # The primary recovers; once the cool-down is over, one call
            # probes it, succeeds, and the breaker closes.
            down = False
            await asyncio.sleep(max(0.0, state.since + COOLDOWN_S - time.time()) + 0.1)
            goals.append(await one_task(store, s, 9))
            assert (asked("claude-main"), asked("claude-backup")) == (4, 5)
            goals.append(await one_task(store, s, 10))
            assert (asked("claude-main"), asked("claude-backup")) == (5, 5)
        await agents.aclose()
        [(_, _, after), _] = await read_breakers(store.shared_state(), models_of(s))

    assert after.state == "closed"
    moves: list[tuple[str, BreakerChanged]] = []
    for goal_id in goals:
        moves += [
            (goal_id, e)
            for e in await events_of(store, goal_id)
            if isinstance(e, BreakerChanged)
        ]
    assert [(e.from_state, e.to_state) for _, e in moves] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    opened, probed, closed = (e for _, e in moves)
    # Each in the goal (and on the task) of the call that made the move.
    assert [g for g, _ in moves] == [goals[FAILURES - 1], goals[-2], goals[-2]]
    assert (opened.provider, opened.model, opened.lane) == (
        "anthropic",
        "claude-main",
        "frontier",
    )
    assert opened.failures == FAILURES
    assert "500" in opened.reason
    assert opened.task_id == f"t{FAILURES - 1}"
    assert probed.task_id == closed.task_id == "t9"
    # The calls the log holds agree with what the provider saw.
    calls = [
        e
        for goal_id in goals
        for e in await events_of(store, goal_id)
        if isinstance(e, ModelCalled)
    ]
    assert [c.model for c in calls if c.error] == ["claude-main"] * FAILURES
    # The metrics: three moves counted, the gauge at closed (0).
    counted = {
        (p.attributes["from_state"], p.attributes["to_state"]): p.value
        for p in _points(reader, "bb.model.breaker.transitions")
    }
    assert counted == {
        ("closed", "open"): 1,
        ("open", "half_open"): 1,
        ("half_open", "closed"): 1,
    }
    gauge = {
        p.attributes["model"]: p.value for p in _points(reader, "bb.model.breaker")
    }
    assert gauge["claude-main"] == 0
