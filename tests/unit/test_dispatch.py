"""The ready set: windows, priorities with aging, tenants by weight (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from blackboard.engine.dispatch import Offer, ReadySet, effective_priority, rank

T0 = datetime(2026, 11, 24, tzinfo=UTC)
AGING = 60.0


def offer(
    task: str,
    priority: int = 0,
    waited_from: float = 0.0,
    tenant: str = "t",
    lane: str = "local",
) -> Offer[str]:
    since = T0 + timedelta(seconds=waited_from)
    return Offer(
        key=("G", task),
        lane=lane,
        tenant=tenant,
        rank=rank(since, priority, AGING),
        tie=task,
        action=task,
    )


def take(ready: ReadySet[str], n: int) -> list[str]:
    weights = {"a": 2.0, "b": 1.0}
    return [o.action for o in ready.take("local", n, weights)]


def test_higher_priority_first_then_the_older():
    ready: ReadySet[str] = ReadySet(aging_s=AGING)
    for o in (offer("old", 0, 0), offer("new", 0, 5), offer("urgent", 3, 100)):
        ready.offer(o)
    assert ready.waiting("local") == 3
    assert take(ready, 2) == ["urgent", "old"]
    assert take(ready, 5) == ["new"]
    assert ready.waiting("local") == 0 and ready.lanes() == []


def test_waiting_raises_priority_by_one_per_aging_period():
    """Priority 0 waiting since T0 goes before priority 2 eligible after T0 +
    (2 + 1) * aging_s (one period more: levels are whole periods)."""
    ready: ReadySet[str] = ReadySet(aging_s=AGING)
    ready.offer(offer("patient", 0, 0))
    ready.offer(offer("later", 2, 3 * AGING + 1))
    ready.offer(offer("sooner", 2, 2 * AGING - 1))
    assert take(ready, 3) == ["sooner", "patient", "later"]
    now = T0 + timedelta(seconds=3 * AGING)
    assert effective_priority(0, T0, now, AGING) == 3.0


def test_tenants_share_slots_by_weight_within_a_priority_level():
    ready: ReadySet[str] = ReadySet(aging_s=AGING)
    for i in range(6):
        ready.offer(offer(f"a{i}", tenant="a", waited_from=i))
        ready.offer(offer(f"b{i}", tenant="b", waited_from=i))
    got = take(ready, 6)
    assert sorted(got) == ["a0", "a1", "a2", "a3", "b0", "b1"]
    # The passes carry over from one take to the next: 2:1 again.
    assert sorted(take(ready, 3)) == ["a4", "a5", "b2"]


def test_a_tenant_back_from_idle_gets_no_credit():
    ready: ReadySet[str] = ReadySet(aging_s=AGING)
    for i in range(4):
        ready.offer(offer(f"b{i}", tenant="b", waited_from=i))
    assert take(ready, 4) == ["b0", "b1", "b2", "b3"]
    for i in range(4, 8):
        ready.offer(offer(f"b{i}", tenant="b", waited_from=i))
        ready.offer(offer(f"a{i}", tenant="a", waited_from=i))
    # a was not waiting while b ran: it joins at b's pass, 2:1 from there.
    assert sorted(take(ready, 3)) == ["a4", "a5", "b4"]


def test_a_tenant_does_not_jump_a_higher_priority():
    ready: ReadySet[str] = ReadySet(aging_s=AGING)
    ready.offer(offer("b-urgent", 5, tenant="b"))
    ready.offer(offer("a-bulk", 0, tenant="a"))
    assert take(ready, 1) == ["b-urgent"]


def test_an_offer_replaced_or_discarded_is_not_taken_twice():
    ready: ReadySet[str] = ReadySet(aging_s=AGING)
    ready.offer(offer("x", 0))
    ready.offer(offer("x", 4))  # decided again: the newer offer counts
    ready.offer(offer("y", 1))
    ready.discard(("G", "y"))
    assert ready.waiting("local") == 1
    assert [o.rank for o in ready.take("local", 5, {})] == [rank(T0, 4, AGING)]
    assert take(ready, 5) == []


def test_earliest_deadline_first_within_a_level_not_across():
    ready: ReadySet[str] = ReadySet(aging_s=AGING)
    soon = T0.timestamp() + 600
    ready.offer(offer("plain", 0, 0))
    ready.offer(
        Offer(
            key=("H", "due"),
            lane="local",
            tenant="t",
            rank=rank(T0 + timedelta(seconds=5), 0, AGING),
            tie="due",
            action="due",
            deadline=soon,
        )
    )
    ready.offer(offer("urgent", 1, 0))
    assert take(ready, 3) == ["urgent", "due", "plain"]


def test_lanes_are_apart():
    ready: ReadySet[str] = ReadySet(aging_s=AGING)
    ready.offer(offer("f", lane="frontier"))
    ready.offer(offer("l"))
    assert ready.lanes() == ["frontier", "local"]
    assert take(ready, 5) == ["l"]


def test_a_deadline_is_a_time_or_a_duration_from_now():
    import pytest
    import typer

    from blackboard.cli.common import parse_deadline

    assert parse_deadline("90s", T0) == T0 + timedelta(seconds=90)
    assert parse_deadline("2h", T0) == T0 + timedelta(hours=2)
    assert parse_deadline("2026-11-24T18:00:00Z", T0) == datetime(
        2026, 11, 24, 18, tzinfo=UTC
    )
    assert parse_deadline("2026-11-24T18:00:00", T0) == datetime(
        2026, 11, 24, 18, tzinfo=UTC
    )  # no offset: UTC
    assert parse_deadline(None, T0) is None
    with pytest.raises(typer.Exit):
        parse_deadline("tomorrow-ish", T0)
