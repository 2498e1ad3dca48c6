"""The collector is paused while any catch-up runs, and only then."""

from __future__ import annotations

import gc

from blackboard import collector


def test_paused_until_the_last_catch_up_ends_then_frozen_and_resumed():
    assert gc.isenabled()
    try:
        collector.catching_up()  # the projector at start
        collector.catching_up()  # a scheduler taking the lead meanwhile
        assert not gc.isenabled()
        collector.caught_up()
        assert not gc.isenabled()  # the other is still catching up
        survivor = [object() for _ in range(1000)]
        collector.caught_up()
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(survivor)
        collector.caught_up()  # one too many: nothing happens
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()


def test_a_collector_turned_off_by_the_process_stays_off():
    gc.disable()
    try:
        collector.catching_up()
        collector.caught_up()
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()
