"""The policy's decisions and the budget's arithmetic: pure, no I/O."""

from __future__ import annotations

import tomllib

import pytest

from blackboard.engine import budget, policy
from blackboard.errors import ConfigError
from blackboard.log.events import BudgetHold, Limits, Price
from blackboard.runtime import config

RULES = """
default = "allow"

[[rules]]
name = "eu-stays-local"
when = { tenant = "eu-*" }
decision = "allow_with"
lane = "local"

[[rules]]
name = "no-refunds"
when = { tool = "orders.refund*" }
decision = "deny"
reason = "refunds are for humans"

[[rules]]
name = "irreversible-needs-a-human"
when = { effect = "irreversible", tenant = ["acme", "globex"] }
decision = "require_approval"

[[rules]]
name = "costly"
when = { cost_over = 0.5 }
decision = "require_approval"

[[rules]]
name = "small-models-for-deep-tasks"
when = { depth_over = 2 }
decision = "allow_with"
models = ["*-mini"]
max_tokens = 512
"""


def rules(text: str = RULES) -> policy.PolicySet:
    return policy.parse(tomllib.loads(text), source="test")


def decide(**facts: object) -> policy.Verdict:
    return policy.evaluate(rules(), policy.Facts(**facts))  # type: ignore[arg-type]


def test_first_matching_rule_decides_and_the_default_otherwise():
    v = decide(point="task", tenant="eu-west", lane="frontier")
    assert (v.decision, v.rule, v.constraints) == (
        "allow_with",
        "eu-stays-local",
        {"lane": "local"},
    )
    v = decide(point="tool", tenant="us", tool="orders.refund_all", effect="read")
    assert (v.decision, v.rule, v.reason) == (
        "deny",
        "no-refunds",
        "refunds are for humans",
    )
    v = decide(point="tool", tenant="acme", tool="shell.run", effect="irreversible")
    assert v.decision == "require_approval"
    v = decide(point="tool", tenant="initech", tool="shell.run", effect="irreversible")
    assert (v.decision, v.rule) == ("allow", "default")


def test_a_rule_takes_part_only_where_its_conditions_are_known():
    # A tool rule says nothing of a model call, a cost rule nothing of a tool.
    assert decide(point="model", tenant="us", model="x").rule == "default"
    assert (
        decide(point="tool", tenant="us", tool="a.b", effect="read").rule == "default"
    )
    # The lane constraint applies at admission, not to a call: an EU tool call
    # is decided by the tool rules below it.
    v = decide(point="tool", tenant="eu-1", tool="orders.refund", effect="read")
    assert v.rule == "no-refunds"
    # Cost: strictly above the threshold, and only when known.
    assert decide(point="model", model="m", estimated_cost_usd=0.5).rule == "default"
    assert decide(point="model", model="m", estimated_cost_usd=0.51).rule == "costly"
    v = decide(point="model", model="gpt-4o", depth=3)
    assert v.rule == "small-models-for-deep-tasks"
    assert not policy.model_allowed(v, "gpt-4o")
    assert policy.model_allowed(v, "gpt-4o-mini")


def test_the_hash_is_of_the_meaning_not_the_formatting():
    same = rules(RULES.replace('"eu-*"', '["eu-*"]').replace("\n\n", "\n"))
    assert same.hash == rules().hash
    changed = rules(RULES.replace("0.5", "0.6"))
    assert changed.hash != rules().hash
    assert rules().hash.startswith("sha256:") and len(rules().hash) == 23


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[rules]]\nname = "x"\ndecision = "maybe"', "decision"),
        ('[[rules]]\nname = "x"\ndecision = "allow_with"', "needs lane, models"),
        ('[[rules]]\nname = "x"\ndecision = "deny"\nlane = "local"', "only apply"),
        (
            '[[rules]]\nname = "x"\ndecision = "deny"\nwhen = { tool = "a", model = "b" }',
            "cannot name both",
        ),
        (
            '[[rules]]\nname = "x"\ndecision = "deny"\nwhen = { colour = "red" }',
            "colour",
        ),
        (
            '[[rules]]\nname = "x"\ndecision = "deny"\n[[rules]]\nname = "x"\ndecision = "allow"',
            "twice",
        ),
        ('default = "sometimes"', "default"),
        ('on_failure = "undo"', "on_failure"),
    ],
)
def test_a_bad_policy_is_refused_naming_what_is_wrong(text, message):
    with pytest.raises(ConfigError, match=message):
        rules(text)


def test_bb_policy_names_a_file_that_replaces_the_config_files(tmp_path):
    (tmp_path / "bb.toml").write_text(
        '[[policy.rules]]\nname = "a"\ndecision = "deny"\n'
    )
    (tmp_path / "p.toml").write_text('default = "deny"\n')
    s = config.load(tmp_path / "bb.toml", env={})
    assert [r.name for r in s.policy.rules] == ["a"]
    s = config.load(tmp_path / "bb.toml", env={"BB_POLICY": str(tmp_path / "p.toml")})
    assert (s.policy.default, s.policy.rules) == ("deny", [])
    with pytest.raises(ConfigError, match=r"BB_POLICY: policy file .* not found"):
        config.load(tmp_path / "bb.toml", env={"BB_POLICY": str(tmp_path / "no")})
    (tmp_path / "bad.toml").write_text(
        '[[policy.rules]]\nname = "a"\ndecision = "allow_with"\nlane = "gpu"\n'
    )
    with pytest.raises(ConfigError, match="'gpu' is not a configured lane"):
        config.load(tmp_path / "bad.toml", env={})


def test_on_failure_is_part_of_the_policy_and_of_its_hash(tmp_path):
    keep = rules()
    undo = rules(RULES.replace("[[rules]]", 'on_failure = "compensate"\n[[rules]]', 1))
    assert (keep.compensates_failures, undo.compensates_failures) == (False, True)
    assert undo.hash != keep.hash
    assert policy.describe(undo)["on_failure"] == "compensate"
    # The setting's old place says where it went.
    (tmp_path / "bb.toml").write_text("[tools]\ncompensate_on_failure = true\n")
    with pytest.raises(ConfigError, match='on_failure = "compensate"'):
        config.load(tmp_path / "bb.toml", env={})


PRICE = Price(input_per_mtok=3.0, output_per_mtok=15.0)


def test_the_worst_case_counts_every_byte_and_every_output_token():
    tokens, usd = budget.worst_case(1000, 2, 500, PRICE)
    assert tokens == 1000 + 2 * budget.MESSAGE_OVERHEAD + 500
    assert usd == pytest.approx((1016 * 3.0 + 500 * 15.0) / 1e6)


def test_a_reservation_fits_until_spent_plus_held_plus_it_would_cross():
    limits = Limits(max_cost_usd=1.0, max_tokens=10_000)
    hold = BudgetHold(task_id="a", tokens=1000, cost_usd=0.4)
    empty = budget.Totals.of(None, (0, 0.0))
    base = {"event_id": "e", "goal_id": "g", "at": "2026-11-23T00:00:00Z", "actor": "w"}
    first = budget.reserved(base, empty, "r1", hold, limits, "m")
    assert first.held == {"r1": hold}
    after = budget.Totals.of(first, (0, 0.0))
    second = budget.reserved(base, after, "r2", hold, limits, "m")
    two = budget.Totals.of(second, (0, 0.0))
    refused = budget.check(two, limits, 1000, 0.4, "m")
    assert refused is not None and refused.guardrail == "max_cost_usd"
    assert refused.observed == pytest.approx(1.2)
    assert "calls in flight hold $0.800000" in refused.detail
    # Settled below its worst case, the first leaves room for the third.
    settled = budget.Totals.of(budget.settled(base, two, "r1", (300, 0.1)), (0, 0.0))
    assert (settled.spent_tokens, settled.spent_usd) == (300, 0.1)
    assert budget.check(settled, limits, 1000, 0.4, "m") is None
    # Released: nothing spent.
    released = budget.settled(base, two, "r2", None)
    assert (released.op, released.spent_usd, list(released.held)) == (
        "release",
        0.0,
        ["r1"],
    )


def test_stale_reservations_are_those_of_an_earlier_run_of_the_same_task():
    totals = budget.Totals(
        held={
            "old": BudgetHold(task_id="a", dispatch=1, attempt=1),
            "mine": BudgetHold(task_id="a", dispatch=1, attempt=2),
            "other": BudgetHold(task_id="b", dispatch=1, attempt=1),
        }
    )
    assert budget.stale(totals, "a", 1, 2) == ["old"]
    assert budget.stale(totals, "a", 2, 1) == ["old", "mine"]


def test_a_lane_whose_model_has_no_price_is_refused_under_a_dollar_budget():
    from agents.handlers import Agents

    s = config.load(env={}, path=None)
    s.lanes["frontier"].model = "claude-mystery"
    with pytest.raises(ConfigError, match=r"no price for frontier: claude-mystery"):
        Agents(s)
    s.prices = {"claude-mystery": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}
    Agents(s)  # priced: starts
    s.prices, s.limits = {}, Limits(max_cost_usd=None)
    Agents(s)  # no dollar budget: nothing to count


async def test_a_reservation_a_dead_run_left_open_is_settled_by_its_recorded_call():
    from blackboard.engine.ledger import Ledger
    from blackboard.log.events import BudgetEntry
    from blackboard.log.memory import MemoryEventStore

    store = MemoryEventStore()
    ledger = Ledger(store, "G1", "w")
    limits = Limits(max_cost_usd=1.0)
    asked: list[str] = []

    async def recorded(reservation: str) -> tuple[int, float] | None:
        asked.append(reservation)
        return (120, 0.25)

    first = await ledger.reserve(
        limits,
        BudgetHold(task_id="a", attempt=1, tokens=900, cost_usd=0.6),
        "m",
        recorded,
    )
    assert isinstance(first, str) and asked == []  # nothing stale: nothing read
    # The worker died before settling; the task's next attempt reserves again.
    second = await ledger.reserve(
        limits,
        BudgetHold(task_id="a", attempt=2, tokens=900, cost_usd=0.6),
        "m",
        recorded,
    )
    assert isinstance(second, str) and asked == [first]
    _, last = await ledger.last()
    assert last is not None and list(last.held) == [second]
    assert (last.spent_tokens, last.spent_usd) == (120, 0.25)
    ops = [
        env.event.op
        async for env in store.read(store.subjects.kind_filter("budget_entry", "G1"))
        if isinstance(env.event, BudgetEntry)
    ]
    assert ops == ["reserve", "settle", "reserve"]


async def test_a_reservation_a_dead_run_left_open_with_no_call_recorded_is_spent():
    """The call may have reached the provider: its worst case counts as spent."""
    from blackboard.engine.ledger import Ledger
    from blackboard.log.memory import MemoryEventStore

    ledger = Ledger(MemoryEventStore(), "G1", "w")
    limits = Limits(max_cost_usd=1.0)

    async def never(reservation: str) -> tuple[int, float] | None:
        return None

    dead = BudgetHold(task_id="a", attempt=1, tokens=900, cost_usd=0.4)
    assert isinstance(await ledger.reserve(limits, dead, "m", never), str)
    again = BudgetHold(task_id="a", attempt=2, tokens=900, cost_usd=0.4)
    second = await ledger.reserve(limits, again, "m", never)
    assert isinstance(second, str)
    _, last = await ledger.last()
    assert last is not None and list(last.held) == [second]
    assert (last.spent_tokens, last.spent_usd) == (900, 0.4)
    # Spent 0.4 (forfeited) + held 0.4: a third call of 0.4 would cross $1.
    third = await ledger.reserve(
        limits, BudgetHold(task_id="b", tokens=900, cost_usd=0.4), "m", never
    )
    assert isinstance(third, budget.Refused) and third.observed == pytest.approx(1.2)
