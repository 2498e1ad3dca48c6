"""A worker SIGKILLed in the middle of a multi-turn, tool-using task.

The local lane is a real OpenAI-compatible HTTP server (the fake provider,
driven through the real ``openai`` SDK by separate worker processes); the tool
appends a line to a ledger each time it runs. The worker is killed while its
third model call is in flight, after two model calls and two tool calls. The
next worker rebuilds the conversation from the log: it sends no request whose
answer was recorded, runs no finished tool again, and finishes the task.
"""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from blackboard.log.events import ModelCalled, TaskSpec, ToolCallFinished
from replay.verify import verify
from tests.fakes.providers import OPENAI_PATH, Canned, FakeProviderServer
from tests.faults.harness import Deployment, audit, ledger_lines, submit, wait_all
from tests.waiting import until

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

K_CALLS = 2
"""Model calls answered (and recorded) before the kill."""
J_TOOLS = 2
"""Tool calls finished before the kill."""


class ToolDeployment(Deployment):
    """The fault harness, with a config naming the tools and the fake model."""

    def __init__(self, tmp: Path, base_url: str) -> None:
        super().__init__(tmp)
        self.tool_ledger = tmp / "tool-ledger"
        self.tool_ledger.touch()
        config = tmp / "bb.toml"
        config.write_text(
            "[tools]\n"
            'python = ["tests.agents.ledger_tools:TOOLS"]\n'
            "[lanes.local]\n"
            'provider = "openai-compatible"\n'
            'model = "fake-local"\n'
            f'base_url = "{base_url}"\n'
            'tools = ["python.*"]\n'
            "max_retries = 0\n"
            # Goals have a dollar budget: a worker refuses a model it cannot price.
            '[prices."fake-local"]\n'
            "input_per_mtok = 0.0\n"
            "output_per_mtok = 0.0\n"
        )
        self.config = config

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        env.update(
            BB_SCRIPTED="0",
            BB_CONFIG=str(self.config),
            TOOL_LEDGER=str(self.tool_ledger),
        )
        return env


def rounds(body: dict[str, Any]) -> int:
    """How many answers the conversation already holds (its round)."""
    return sum(m.get("role") == "assistant" for m in body.get("messages", []))


async def test_sigkill_mid_conversation_resumes_without_repeating(
    tmp_path: Path,
) -> None:
    in_flight = threading.Event()  # the kill's moment: call K_CALLS + 1 arrived
    release = threading.Event()  # lets the held request go at teardown
    held: list[int] = []

    def responder(path: str, body: dict[str, Any]) -> Canned | None:
        if path != OPENAI_PATH:
            return None
        n = rounds(body)
        if n == K_CALLS and not held:
            held.append(n)
            in_flight.set()
            release.wait(60)  # the worker dies waiting for this answer
        if n <= J_TOOLS:
            return Canned(tool_calls=((f"call_{n + 1}", "python.step", {"n": n + 1}),))
        return Canned(text=f"all {n} steps done")

    with FakeProviderServer(responder=responder) as fake:
        d = ToolDeployment(tmp_path, fake.openai_base_url)
        d.server.start()
        try:
            d.start("scheduler-1", "scheduler")
            d.wait(lambda: "leading" in d.log("scheduler-1"))
            d.start(
                "worker-local-1",
                "worker",
                "--lane",
                "local",
                "--handlers",
                "tests.engine_handlers:HANDLERS",
            )
            async for store in d.store():
                s = d.settings()
                goal = await submit(
                    store,
                    s,
                    "act through tools, killed midway",
                    [TaskSpec(task_id="act", type="act", lane="local")],
                )
                until(in_flight.is_set, timeout_s=60)
                d.signal("worker-local-1", signal.SIGKILL)
                release.set()
                d.start(
                    "worker-local-2",
                    "worker",
                    "--lane",
                    "local",
                    "--handlers",
                    "tests.engine_handlers:HANDLERS",
                )
                [state] = await wait_all(store, [goal], timeout=120)
                envs = [env async for env in store.read_goal(goal)]
                row = await audit(
                    "SIGKILL mid tool conversation", store, [goal], ledger=d.tool_ledger
                )
                report = await verify(s, envs, goal)
        finally:
            release.set()
            d.down()

    assert state.status == "done", state.reason
    assert row.problems == [] and (row.lost, row.doubled) == (0, 0)
    # Every tool ran exactly once, though the task ran twice.
    assert ledger_lines(d.tool_ledger) == ["step-1", "step-2", "step-3"]
    finished = [e.event for e in envs if isinstance(e.event, ToolCallFinished)]
    assert len(finished) == 3 and all(f.error is None for f in finished)
    # The provider saw each recorded round once; only the round in flight at the
    # kill (never answered to anyone) was sent again.
    sent = Counter(
        json.dumps(r.body["messages"], sort_keys=True)
        for r in fake.requests
        if r.path == OPENAI_PATH
    )
    by_round: Counter[int] = Counter()
    for messages, n in sent.items():
        by_round[rounds({"messages": json.loads(messages)})] += n
    assert by_round == {0: 1, 1: 1, K_CALLS: 2, K_CALLS + 1: 1}
    assert (
        max(
            n for m, n in sent.items() if rounds({"messages": json.loads(m)}) != K_CALLS
        )
        == 1
    )
    calls = [e.event for e in envs if isinstance(e.event, ModelCalled)]
    assert [(c.attempt, c.error) for c in calls] == [(1, None)] * K_CALLS + [
        (2, None)
    ] * 2
    # The second attempt's calls carry the whole conversation: the recorded
    # answers and tool results were reused, not asked again.
    assert len(calls[-1].request["messages"]) == 1 + 2 * (J_TOOLS + 1)
    # And replay --verify re-runs it on the log, running no tool.
    assert report.divergences == [], report.text()
    assert ledger_lines(d.tool_ledger) == ["step-1", "step-2", "step-3"]
    assert d.tracebacks() == []
    row.checked = (
        f"killed after {K_CALLS} model and {J_TOOLS} tool calls; only the call in"
        " flight was sent again; each tool ran once; replay --verify clean"
    )
