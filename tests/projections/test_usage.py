"""One usage summary: what replay and the run report total equals the SQL view.

The events go through the projector's own steps (tests/golden/derive.py) into
a DuckDB file; ``cost_by_goal_lane_model`` there must give the figures of
:func:`blackboard.engine.usage.usage_by_lane_model`, which ``bb replay``'s
totals and ``bb run``'s cost split are. The goal and task rows keep the same
token convention (uncached ``tokens_in``, ``tokens_cached`` apart).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from agents import report
from blackboard.engine.usage import usage_by_lane_model
from blackboard.log import events as ev
from blackboard.log.codec import Envelope
from replay import reader
from replay.trace import build_trace
from tests import factories as f
from tests.golden.derive import projected
from tests.samples import sample

DEMO = Path(__file__).resolve().parents[1] / "golden" / "demo.ndjson"


def _call(i: int, **kw) -> ev.AnyEvent:
    return msgspec.structs.replace(
        sample(ev.ModelCalled, "G1", i), event_id=f"call-{i}", **kw
    )


def cached_goal() -> list[Envelope]:
    """Calls on two lanes: cached input, a failed call, a scripted one."""
    events: list[ev.AnyEvent] = [
        f.goal("G1"),
        f.created("G1", "T1", lane="frontier"),
        f.claimed("G1", "T1"),
        _call(1, tokens_in=100, tokens_cached=4000, tokens_out=50, cost_usd=0.0123),
        _call(2, tokens_in=0, tokens_out=0, cost_usd=0.0, error="429 busy"),
        _call(3, tokens_in=7, tokens_cached=900, tokens_out=3, cost_usd=0.0004),
        _call(
            4,
            lane="local",
            model="qwen",
            provider="local",
            tokens_in=300,
            tokens_out=20,
            cost_usd=0.0,
            scripted=True,
        ),
        f.completed("G1", "T1"),
    ]
    return [Envelope(i + 1, "s", e) for i, e in enumerate(events)]


@pytest.mark.parametrize(
    "envs",
    [reader.from_file(DEMO), cached_goal()],
    ids=["demo", "cached"],
)
def test_usage_summary_equals_the_sql_view(envs: list[Envelope]):
    goal_id = envs[0].event.goal_id
    usage = usage_by_lane_model(env.event for env in envs)
    assert usage
    # Replay's totals and the run report's split are this summary.
    assert sorted(build_trace(envs).totals.values(), key=lambda u: (u.lane, u.model)) == usage
    assert report.usage_by_lane_model is usage_by_lane_model
    with projected(envs) as view:
        _, rows = view.query(
            "SELECT lane, model, calls, failed_calls, tokens_in, tokens_out,"
            " tokens_cached, cost_usd, scripted FROM cost_by_goal_lane_model"
            f" WHERE goal_id = '{goal_id}' ORDER BY lane, model"
        )
        _, goal = view.query(f"SELECT tokens, cost_usd FROM goals WHERE goal_id = '{goal_id}'")
        _, tasks = view.query(
            "SELECT sum(tokens_in), sum(tokens_cached), sum(tokens_out)"
            f" FROM tasks WHERE goal_id = '{goal_id}'"
        )
    assert [
        (u.lane, u.model, u.calls, u.failed, u.tokens_in, u.tokens_out, u.tokens_cached, u.scripted)
        for u in usage
    ] == [(*r[:7], r[8]) for r in rows]
    assert [u.cost_usd for u in usage] == pytest.approx([r[7] for r in rows], rel=1e-12)
    # One convention everywhere: cached input apart from tokens_in, all counted
    # in a goal's tokens.
    assert goal[0][0] == sum(u.tokens for u in usage)
    assert goal[0][1] == pytest.approx(sum(u.cost_usd for u in usage), rel=1e-12)
    assert tasks == [
        (
            sum(u.tokens_in for u in usage),
            sum(u.tokens_cached for u in usage),
            sum(u.tokens_out for u in usage),
        )
    ]


def test_the_cost_table_shows_cached_input_as_input():
    (frontier, local) = usage_by_lane_model(env.event for env in cached_goal())
    assert (frontier.tokens_in, frontier.tokens_cached, frontier.input_tokens) == (
        107,
        4900,
        5007,
    )
    assert (frontier.calls, frontier.failed, local.scripted) == (3, 1, True)
    lines = report.cost_lines([frontier, local])
    assert "5,007" in lines[1] and "300" in lines[2]
