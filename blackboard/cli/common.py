"""Shared parts of the commands: the app, options, errors as one line, settings."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from blackboard.errors import BlackboardError
from blackboard.runtime import config as config_mod


def _flags_take_no_value() -> None:
    """Show flags as flags in ``--help``.

    typer 0.29's rich help prints a type for every option, so a flag reads
    ``--full <bool>`` as if it took a value; a flag has no value to show.
    """
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()

app = typer.Typer(
    name="bb",
    help="Blackboard: an event-sourced control plane for fleets of AI agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

GETTING_STARTED = "Getting started"
OPERATE = "Operate"
INSPECT = "Inspect"
DEPLOY = "Deploy and measure"


def _version(value: bool) -> None:
    if value:
        from blackboard import __version__

        typer.echo(f"bb {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Blackboard: an event-sourced control plane for fleets of AI agents."""


bench_app = typer.Typer(help="Benchmarks (print figures; never part of the tests).")
app.add_typer(bench_app, name="bench", rich_help_panel=DEPLOY)

T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Settings file (default ./bb.toml).")
]
HandlersOpt = Annotated[
    str | None,
    typer.Option("--handlers", help="Extra task handlers, as module:attribute."),
]
ByOpt = Annotated[
    str | None,
    typer.Option(
        "--by", help="Who you are (default: the NATS user you connect as, else $USER)."
    ),
]
MaxDepth = Annotated[int | None, typer.Option(help="Guardrail: deepest spawn level.")]
MaxTasks = Annotated[int | None, typer.Option(help="Guardrail: tasks in the goal.")]
MaxTokens = Annotated[int | None, typer.Option(help="Guardrail: tokens of the goal.")]
MaxCost = Annotated[float | None, typer.Option(help="Guardrail: USD for the goal.")]
MaxTurns = Annotated[
    int | None,
    typer.Option(min=1, help="Guardrail: model turns of one task's conversation."),
]
Deadline = Annotated[
    str | None,
    typer.Option(
        help="When the goal must be done: a time (2026-11-24T18:00:00Z) or a"
        " duration from now (90s, 30m, 2h, 1d); past it the goal halts."
    ),
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def parse_deadline(text: str | None, now: datetime) -> datetime | None:
    """A ``--deadline``: an RFC 3339 time, or a duration from ``now``.

    A time without an offset is UTC. Exits with a one-line message if the
    text is neither.
    """
    if text is None:
        return None
    m = _DURATION.match(text)
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return now + timedelta(seconds=float(m.group(1)) * unit)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None:
        fail(
            f"--deadline {text!r}: give a time (2026-11-24T18:00:00Z) or a"
            " duration (90s, 30m, 2h, 1d)",
            2,
        )
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line on stderr and exit."""
    typer.echo(f"bb: error: {message}", err=True)
    raise typer.Exit(code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, turning our errors into one-line messages."""
    try:
        return asyncio.run(coro)
    except BlackboardError as e:
        fail(str(e))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def one_shot(ctx: typer.Context) -> None:
    """Pause the garbage collector for the rest of a command that ends soon.

    A command that reads a goal's log (replay, export, status) makes millions
    of objects and frees almost none before it exits; the collector's full
    passes over them took 43% of ``bb replay --json`` of a 100,000-event goal
    (3.50 s -> 1.98 s). Reference counting still frees what is dropped; only
    cycles wait for the command's end. Never for a command that serves or
    watches. Collection resumes when the command's context closes, so a
    command run in a process that goes on (a test, a caller's own) leaves
    the collector as it found it.
    """
    if not gc.isenabled():
        return
    gc.disable()
    ctx.call_on_close(gc.enable)


def serve(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run a long-lived command until Ctrl-C or SIGTERM, its normal ways to stop.

    Both set the ``stop`` event the command watches, so it finishes what it is
    doing and closes cleanly (Kubernetes stops pods with SIGTERM).
    """
    logging.basicConfig(
        level=os.environ.get("BB_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    from blackboard import telemetry

    telemetry.configure_from_env(_service_name())

    async def wrapper() -> None:
        from blackboard.runtime import health

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with health.serving():
            await main(stop)

    try:
        asyncio.run(wrapper())
    except BlackboardError as e:
        fail(str(e))
    except KeyboardInterrupt:
        return
    finally:
        telemetry.shutdown()


def _service_name() -> str:
    """``bb-<command>``: the OpenTelemetry service name of this process."""
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "cli")
    return f"bb-{command}"


def settings(path: Path | None = None) -> config_mod.Settings:
    """Load settings or fail with the reason."""
    try:
        return config_mod.load(path)
    except BlackboardError as e:
        fail(str(e), 2)


def emit_json(value: Any) -> None:
    """Print a JSON document on stdout."""
    typer.echo(json.dumps(value, default=str))


def whoami(s: config_mod.Settings, by: str | None) -> str:
    """The name written into events a person causes (``by``, ``submitted_by``).

    Connected as a named NATS user, it is that user, whatever ``--by`` says:
    the server lets only an operator's user write approvals, resumes and
    cancels, so the name on them is one the server let in. ``--by`` may
    repeat it; another name is refused rather than recorded.
    """
    from blackboard.engine.submission import _whoami
    from blackboard.runtime.connection import nats_user

    user = nats_user(s)
    if user is None:
        return by or _whoami()
    if by is not None and by != user:
        fail(
            f"--by {by} contradicts the NATS user {user} this command connects "
            "as: the log records that user",
            2,
        )
    return user


def limit_overrides(
    max_depth: int | None,
    max_tasks: int | None,
    max_tokens: int | None,
    max_cost: float | None,
    max_turns: int | None = None,
    deadline: str | None = None,
) -> dict[str, Any]:
    """Guardrail options as the overrides the service takes."""
    from blackboard import ids

    return {
        "max_depth": max_depth,
        "max_tasks": max_tasks,
        "max_tokens": max_tokens,
        "max_cost_usd": max_cost,
        "max_turns": max_turns,
        "deadline": parse_deadline(deadline, ids.utcnow()),
    }


def load_handlers(
    s: config_mod.Settings, spec: str | None
) -> tuple[dict[str, Any], Any]:
    """A worker's handlers (built-ins, agents', --handlers), and its agent.

    The agent is what the handlers' ``ctx.converse`` talks to.
    """
    from agents import handlers as agent_handlers
    from blackboard.engine import handlers as h

    try:
        agent = agent_handlers.for_worker(s)
    except BlackboardError as e:
        fail(str(e), 2)
    registry: dict[str, Any] = dict(h.BUILTIN)
    registry.update(agent.handlers())
    if spec:
        try:
            registry.update(h.load(spec))
        except BlackboardError as e:
            fail(str(e), 2)
    return registry, agent


DbOpt = Annotated[
    Path | None,
    typer.Option("--db", help="DuckDB file (default <BB_DATA_DIR>/blackboard.duckdb)."),
]


def db_path(s: config_mod.Settings, db: Path | None) -> Path:
    """The projection's DuckDB file: ``--db``, else in the data dir."""
    return db or Path(s.data_dir) / "blackboard.duckdb"


def me() -> str:
    """The command as the user runs it, for the commands we suggest.

    ``./run.sh`` says so in ``BB_INVOKED_AS``; a ``bb`` on the PATH is ``bb``;
    otherwise the path it was started by (``.venv/bin/bb``).
    """
    given = os.environ.get("BB_INVOKED_AS")
    if given:
        return given
    argv0 = sys.argv[0]
    on_path = shutil.which("bb")
    if on_path and Path(on_path).resolve() == Path(argv0).resolve():
        return "bb"
    if argv0.endswith(("__main__.py", "cli")) or not argv0:
        return f"{sys.executable} -m blackboard.cli"
    return argv0
