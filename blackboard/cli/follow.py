"""Following a goal as it runs, for `bb run` and `bb demo`: progress, outcome."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import typer

from blackboard.cli.common import (
    _service_name,
    db_path,
    emit_json,
    fail,
    me,
)
from blackboard.errors import BlackboardError
from blackboard.runtime import config as config_mod

# --- goals ------------------------------------------------------------------


def drive_goal(
    s: config_mod.Settings,
    text: str,
    url: str | None,
    in_process: bool,
    overrides: dict[str, Any],
    by: str,
    as_json: bool,
    *,
    demo: bool,
) -> None:
    """Submit ``text`` (in-process engine or a deployment) and follow it to its end.

    Exits 1 unless the goal is done; prints the outcome and the cost split.
    """
    import contextlib

    from agents import report, session
    from blackboard.cli import display
    from blackboard.runtime import connection as runtime

    out = sys.stderr
    live = out.isatty() and not as_json
    last: list[str] = [""]
    told: set[str] = set()
    ids: list[str] = []

    def submitted(goal_id: str) -> None:
        ids.append(goal_id)
        if not as_json:
            typer.echo(f"goal {goal_id}", err=True)

    def progress(goal: Any) -> None:
        # A terminal gets one line redrawn; a pipe a line per change, so the
        # last state before a wait is never the one left out.
        line = report.progress_line(goal)
        if as_json:
            return
        if line != last[0]:
            if live:
                out.write("\r\x1b[2K" + line)
            else:
                out.write(line + "\n")
            out.flush()
            last[0] = line
        for task in display.waiting(goal):
            if task.task_id in told:
                continue
            told.add(task.task_id)
            name = display.title(task)
            out.write(
                ("\n" if live else "")
                + f"task {task.task_id}{f' ({name})' if name else ''} waits for "
                f"approval: {task.approval_reason}\n  approve it: {me()} approve "
                f"{task.task_id}   (or --deny)\n"
            )
            out.flush()

    from blackboard import telemetry

    telemetry.configure_from_env(_service_name())
    server = contextlib.nullcontext(url) if url else runtime.server_for(s, port=0)
    try:
        with server as nats_url:
            # asyncio.run, not run(): a Ctrl-C is answered here, with the goal.
            outcome = asyncio.run(
                session.drive(
                    s,
                    nats_url,
                    text,
                    in_process=in_process,
                    overrides=overrides,
                    submitted_by=by,
                    on_submitted=submitted,
                    on_progress=progress,
                    projector_db=str(db_path(s, None)) if in_process else None,
                )
            )
    except BlackboardError as e:
        fail(str(e))
    except KeyboardInterrupt:
        if ids and in_process:
            where = (
                f"it stays in the log and goes on when a deployment runs (`{me()} up`)"
            )
        elif ids:
            where = "it keeps running in the deployment"
        else:
            raise typer.Exit(130) from None
        typer.echo(
            f"\nstopped following goal {ids[0]}: {where}; follow it with "
            f"`{me()} status {ids[0]} --watch`",
            err=True,
        )
        raise typer.Exit(130) from None
    finally:
        telemetry.shutdown()
    if live:
        out.write("\n")
    goal = outcome.goal
    if as_json:
        emit_json(outcome.as_json())
    else:
        _print_outcome(outcome, demo=demo)
    if goal.status != "done":
        raise typer.Exit(1)


def _print_outcome(outcome: Any, *, demo: bool) -> None:
    from agents import report

    goal = outcome.goal
    label = report.models_label(outcome.usage)
    typer.echo(f"\ngoal {goal.goal_id} {goal.status}{label}")
    if goal.summary:
        typer.echo(f"result: {goal.summary}")
    if goal.reason:
        typer.echo(f"reason: {goal.reason}")
    if goal.status == "halted":
        typer.echo(
            f"halted by the {goal.halted_by} guardrail; its work is kept: "
            f"{me()} resume {goal.goal_id} --max-tasks N (or --max-cost, ...)"
        )
    typer.echo(
        f"tasks {len(goal.tasks)}  tokens {goal.tokens:,}  cost ${goal.cost_usd:.4f}"
    )
    typer.echo("")
    for line in report.cost_lines(outcome.usage):
        typer.echo(line)
    typer.echo("")
    if outcome.tool_calls:
        written = Path(outcome.workspace)
        files = (
            sum(1 for p in written.rglob("*") if p.is_file()) if written.is_dir() else 0
        )
        where = f"; {files} file(s) in its workspace: {written}" if files else ""
        typer.echo(f"the agents made {outcome.tool_calls} tool call(s){where}")
    if outcome.compensation is not None:
        typer.echo('compensated ([policy] on_failure = "compensate"):')
        for line in outcome.compensation.lines() or ["nothing to undo"]:
            typer.echo(f"  {line}")
    typer.echo(f"replay it: {me()} replay {goal.goal_id}")
