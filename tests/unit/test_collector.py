"""The collector is paused while any catch-up runs, and only then."""

from __future__ import annotations

import gc

import typer

from blackboard import collector


def test_paused_until_the_last_catch_up_ends_then_frozen_and_resumed():
    gc.enable()
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


def test_a_one_shot_command_pauses_collection_only_while_it_runs():
    from typer.testing import CliRunner

    from blackboard.cli.common import one_shot

    app = typer.Typer()
    seen: list[bool] = []

    @app.command()
    def read(ctx: typer.Context) -> None:
        one_shot(ctx)
        seen.append(gc.isenabled())

    @app.command()
    def other() -> None:
        seen.append(gc.isenabled())

    gc.enable()
    result = CliRunner().invoke(app, ["read"])
    assert result.exit_code == 0, result.output
    assert seen == [False]  # paused while the command ran
    assert gc.isenabled()  # and on again once it ended
