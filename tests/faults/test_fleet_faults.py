"""Fleet-wide rate limits across worker processes, each as the chart's `worker`.

Separate `bb worker` processes on one lane, whose model is the fake provider
behind the real `openai` SDK, with the chart's NATS users (so the workers'
permissions on the limits bucket are the chart's). The fake records when
each request arrived: the fleet's limit is checked where a provider would
check it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from blackboard.log.events import ModelCalled
from tests.fakes.providers import OPENAI_PATH, Canned, FakeProviderServer
from tests.faults.harness import audit, submit, wait_all
from tests.faults.test_governance_faults import RoleDeployment, execute
from tests.unit.test_fleet_limits import most_in_any_window

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

pytestmark = pytest.mark.integration


def limited_lane(base_url: str, rpm: int, concurrency: int = 8) -> str:
    return (
        "[lanes.local]\n"
        'provider = "openai-compatible"\n'
        'model = "fake-local"\n'
        f'base_url = "{base_url}"\n'
        "tools = []\n"
        f"rpm = {rpm}\n"
        f"concurrency = {concurrency}\n"
        "max_retries = 3\n"
        '[prices."fake-local"]\n'
        "input_per_mtok = 0.0\n"
        "output_per_mtok = 0.0\n"
    )


def arrivals(fake: FakeProviderServer) -> list[float]:
    return [r.at for r in fake.requests if r.path == OPENAI_PATH]


def start_workers(d: RoleDeployment, n: int) -> None:
    d.start_as("scheduler", "scheduler-1", "scheduler")
    d.wait(lambda: "leading" in d.log("scheduler-1"))
    for i in range(1, n + 1):
        d.start_as("worker", f"worker-local-{i}", "worker", "--lane", "local")


@pytest.mark.timeout(170)
async def test_three_workers_stay_within_one_models_rpm_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """66 one-call tasks on three workers of 8 slots each, rpm 60: free,
    they would all reach the provider within a second or two; limited, no
    60 s window holds more than 60 of them, and every task completes."""
    tasks = 66
    with FakeProviderServer(text="the work is done") as fake:
        d = RoleDeployment(
            tmp_path, limited_lane(fake.openai_base_url, 60), monkeypatch
        )
        d.server.start()
        try:
            start_workers(d, 3)
            async for store in d.store():
                goal = await submit(
                    store,
                    d.settings(),
                    "many small things",
                    [execute(f"t{i:02d}") for i in range(tasks)],
                )
                [state] = await wait_all(store, [goal], timeout=140)
                calls = [
                    e.event
                    async for e in store.read_goal(goal)
                    if isinstance(e.event, ModelCalled)
                ]
                row = await audit("fleet rpm 60 over 3 worker processes", store, [goal])
        finally:
            d.down()

    assert state.status == "done", state.reason
    assert row.problems == [] and (row.lost, row.doubled) == (0, 0)
    sent = arrivals(fake)
    assert len(sent) == len(calls) == tasks
    # All three processes called the model: the limit was shared, not one
    # worker doing everything.
    assert len({c.actor for c in calls}) == 3
    assert most_in_any_window(sent) <= 60
    # Spaced, not bunched: the first minute's 60 calls took most of it.
    assert max(sent) - min(sent) >= (tasks - 1) * 60 / 60
    row.checked = (
        f"{tasks} calls from 3 processes; the most in any 60 s window:"
        f" {most_in_any_window(sent)} (rpm 60)"
    )


@pytest.mark.timeout(120)
async def test_a_429_in_one_worker_makes_the_other_workers_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider answers one call with 429 and retry-after 4: for those
    4 s no worker process sends it anything, then they all go on."""
    penalty = 4.0
    refused: list[float] = []

    def responder(path: str, body: dict[str, Any]) -> Canned | None:
        if path != OPENAI_PATH or refused:
            return None
        # The tenth request (every worker is calling by then) is refused.
        if len(arrivals(fake)) < 10:
            return None
        refused.append(time.monotonic())
        return Canned(status=429, headers={"retry-after": str(penalty)})

    with FakeProviderServer(text="the work is done", responder=responder) as fake:
        d = RoleDeployment(
            tmp_path,
            limited_lane(fake.openai_base_url, 300, concurrency=4),
            monkeypatch,
        )
        d.server.start()
        try:
            start_workers(d, 3)
            async for store in d.store():
                goal = await submit(
                    store,
                    d.settings(),
                    "many small things",
                    [execute(f"t{i:02d}") for i in range(30)],
                )
                [state] = await wait_all(store, [goal], timeout=90)
                calls = [
                    e.event
                    async for e in store.read_goal(goal)
                    if isinstance(e.event, ModelCalled)
                ]
        finally:
            d.down()

    assert state.status == "done", state.reason
    [at] = refused
    sent = arrivals(fake)
    # Nothing reached the provider while it asked for quiet, from any of the
    # three processes (the refused call's own retry comes after it). The
    # grace is the time the refused worker takes to tell the others: until
    # then a slot already due may go.
    quiet = [round(t - at, 3) for t in sent if at + 0.3 < t < at + penalty * 0.98]
    assert quiet == []
    assert len(sent) == 31  # 30 answers and the one refusal
    answered = [c for c in calls if c.error is None]
    assert len(answered) == 30
    assert len({c.actor for c in answered}) == 3
