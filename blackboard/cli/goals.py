"""Goals: `bb run`, `demo`, `submit`, `status`, `approve`, `resume`, `cancel`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from blackboard.cli.common import (
    GETTING_STARTED,
    OPERATE,
    ByOpt,
    ConfigOpt,
    Deadline,
    JsonOpt,
    MaxCost,
    MaxDepth,
    MaxTasks,
    MaxTokens,
    MaxTurns,
    app,
    emit_json,
    fail,
    limit_overrides,
    one_shot,
    run,
    settings,
    whoami,
)
from blackboard.cli.follow import drive_goal
from blackboard.errors import BlackboardError
from blackboard.runtime import config as config_mod

if TYPE_CHECKING:
    from blackboard.engine.decide import Policy
    from blackboard.engine.quota import RateQuota

# --- goals ------------------------------------------------------------------


@app.command("run", rich_help_panel=GETTING_STARTED)
def run_goal(
    text: Annotated[str, typer.Argument(help="The goal, in plain words.")],
    max_depth: MaxDepth = None,
    max_tasks: MaxTasks = None,
    max_tokens: MaxTokens = None,
    max_cost: MaxCost = None,
    max_turns: MaxTurns = None,
    deadline: Deadline = None,
    with_workers: Annotated[
        bool,
        typer.Option(
            "--with-workers",
            help="Run a scheduler and workers here even if a deployment is up.",
        ),
    ] = False,
    by: ByOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Run a goal: submit it, show progress, print the result and the totals.

    With no deployment to talk to (no BB_NATS_URL, no `bb up`), it starts an
    embedded server and runs the scheduler and workers in this process.
    """
    from blackboard.runtime import connection as runtime

    s = settings(config)
    url = runtime.resolve_url(s)
    in_process = url is None or with_workers
    if in_process and not s.scripted:
        _check_models(s)
    overrides = limit_overrides(
        max_depth, max_tasks, max_tokens, max_cost, max_turns, deadline
    )
    drive_goal(s, text, url, in_process, overrides, whoami(s, by), as_json, demo=False)


def _check_models(s: config_mod.Settings) -> None:
    from agents import lanes, session

    problems = lanes.missing_setup(s, s.lanes)
    if not problems:
        problems = session.unreachable(s, s.lanes)
    if problems:
        fail(
            "no model to run the goal with:\n  "
            + "\n  ".join(problems)
            + "\nSet these (or configure lanes in bb.toml), or try `bb demo`"
            " (scripted models, nothing to set) or BB_SCRIPTED=1."
        )


@app.command(rich_help_panel=GETTING_STARTED)
def demo(
    detach: Annotated[
        bool,
        typer.Option(
            "--detach", help="Only submit the demo goal to a running deployment."
        ),
    ] = False,
    real_local: Annotated[
        bool,
        typer.Option(
            "--real-local",
            help="Run the local lane on the bundled SmolLM2-135M model (extra: "
            "local-model), started here; the frontier lane stays scripted.",
        ),
    ] = False,
    local_url: Annotated[
        str | None,
        typer.Option(
            "--local-url",
            help="With --real-local: an OpenAI-compatible server already "
            "serving the model (http://host:port/v1) instead of starting one.",
        ),
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Run a realistic goal end to end on scripted models: no keys, no GPU.

    Plans "add structured audit logging to every write endpoint", designs a
    schema on the frontier lane, patches ~20 endpoints on the local lane (a few
    escalate with NEED), writes a migration, reviews with fix-ups, summarises.
    With --real-local the local lane's work is done by a real small model, and
    checked: what is not a patch is redone once, then handed to the frontier.
    """
    import msgspec

    from agents import session
    from blackboard.runtime import connection as runtime

    if local_url is not None and not real_local:
        fail("--local-url goes with --real-local", 2)
    if real_local:
        if detach:
            fail("--real-local runs the demo here; it does not go with --detach", 2)
        _demo_real_local(settings(config), local_url, as_json)
        return
    s = msgspec.structs.replace(settings(config), scripted=True)
    if detach:
        url = runtime.resolve_url(s)
        if url is None:
            fail(
                "no deployment to submit to: run `BB_SCRIPTED=1 bb up` first, "
                "or plain `bb demo` to run everything here"
            )
        _submit_only(s, session.DEMO_GOAL, as_json)
        return
    here = runtime.running_here(s) if not s.nats.url else None
    if here is not None and not here.scripted:
        fail(
            f"a bb up with real models serves {s.data_dir} (pid {here.pid}): the "
            "demo would spend on them; restart it with BB_SCRIPTED=1, or stop it"
        )
    if here is not None and not as_json:
        typer.echo(
            f"using the bb up of {s.data_dir} (pid {here.pid}, {here.url})", err=True
        )
    # A running deployment answers the goal (its projector, its workers);
    # otherwise the engine runs here, on the configured or an embedded server.
    drive_goal(
        s,
        session.DEMO_GOAL,
        here.url if here is not None else runtime.resolve_url(s),
        here is None,
        {},
        whoami(s, None),
        as_json,
        demo=True,
    )


def _demo_real_local(base: config_mod.Settings, url: str | None, as_json: bool) -> None:
    """The demo with the local lane on the bundled model, in this process."""
    from agents import local_model, session
    from blackboard.runtime import connection as runtime

    if base.nats.url:
        # Its workers, if any, would take the local lane's work on their model.
        fail(
            "--real-local runs the demo on an embedded server here; unset"
            " BB_NATS_URL (or [nats] url) to run it"
        )
    here = runtime.running_here(base)
    if here is not None:
        fail(
            f"a bb up serves {base.data_dir} (pid {here.pid}): its workers would"
            " take the local lane's work; stop it, or set BB_DATA_DIR elsewhere"
        )
    server = None
    if url is None:
        if local_model.missing():
            fail(f"--real-local: {local_model.INSTALL}")
        data = Path(base.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        server = local_model.LocalModelServer(log=data / "local-model.log")
        if not as_json:
            typer.echo(
                f"starting {local_model.MODEL} (llama.cpp) at {server.base_url}"
                f"; its log: {server.log}",
                err=True,
            )
        try:
            url = server.start()
        except BlackboardError as e:
            fail(str(e))
    elif not url.startswith(("http://", "https://")):
        fail(f"--local-url {url!r}: give http://host:port/v1", 2)
    s = local_model.real_local_settings(base, url)
    problems = session.unreachable(s, ["local"])
    try:
        if problems:
            fail(problems[0])
        # In this process, always: a bb up's workers are not on this model.
        drive_goal(
            s,
            session.DEMO_GOAL,
            None,
            True,
            {},
            whoami(s, None),
            as_json,
            demo=True,
        )
    finally:
        if server is not None:
            server.stop()


def _submit_only(s: config_mod.Settings, text: str, as_json: bool) -> None:
    from blackboard.engine import submission as service

    event = service.goal_submitted(s, text, submitted_by=whoami(s, None))
    try:
        run(_append(s, event))
    except BlackboardError as e:
        fail(str(e))
    if as_json:
        emit_json({"goal_id": event.goal_id})
    else:
        typer.echo(event.goal_id)


@app.command(rich_help_panel=GETTING_STARTED)
def submit(
    text: Annotated[str, typer.Argument(help="The goal, in plain words.")],
    dag: Annotated[
        Path | None,
        typer.Option(help="JSON file with the goal's tasks, instead of a plan."),
    ] = None,
    max_depth: MaxDepth = None,
    max_tasks: MaxTasks = None,
    max_tokens: MaxTokens = None,
    max_cost: MaxCost = None,
    max_turns: MaxTurns = None,
    deadline: Deadline = None,
    tenant: Annotated[
        str,
        typer.Option(help="Tenant the goal belongs to ([tenants.X] weight)."),
    ] = "default",
    priority: Annotated[
        int,
        typer.Option(
            help="Higher goes first when a lane's window frees a slot (waiting "
            "raises it by one per [engine] aging_s)."
        ),
    ] = 0,
    by: ByOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Submit a goal; prints its id."""
    from blackboard.engine import submission as service

    s = settings(config)
    try:
        specs = service.load_dag(dag) if dag else ()
        event = service.goal_submitted(
            s,
            text,
            specs=specs,
            overrides=limit_overrides(
                max_depth, max_tasks, max_tokens, max_cost, max_turns, deadline
            ),
            tenant=tenant,
            priority=priority,
            submitted_by=whoami(s, by),
        )
    except BlackboardError as e:
        fail(str(e), 2)
    run(_append(s, event))
    if as_json:
        emit_json({"goal_id": event.goal_id, "tasks": len(event.tasks)})
    else:
        typer.echo(event.goal_id)


async def _append(s: config_mod.Settings, event: Any) -> None:
    from blackboard import telemetry
    from blackboard.runtime import connection as runtime

    async with runtime.open_store(s, name="bb-submit") as store:
        # The goal's trace starts here: its context travels with the event.
        await store.append(event, traceparent=telemetry.traceparent(event.goal_id))


@app.command(rich_help_panel=OPERATE)
def status(
    ctx: typer.Context,
    goal: Annotated[
        str | None, typer.Argument(help="A goal id; none: all goals.")
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Redraw as the goal moves, until it ends.")
    ] = False,
    lanes: Annotated[
        bool,
        typer.Option(
            "--lanes", help="Each lane's window: in flight, waiting, by tenant."
        ),
    ] = False,
    tenant: Annotated[
        str | None, typer.Option(help="Only this tenant's goals (and lane shares).")
    ] = None,
    breakers: Annotated[
        bool,
        typer.Option(
            "--breakers",
            help="The models' circuit breakers that are not closed (the fleet's).",
        ),
    ] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Show a goal's DAG with statuses and counts (or list every goal).

    With no goal, open and half-open circuit breakers are listed after the
    goals.
    """
    from blackboard.runtime import connection as runtime

    if goal is not None and (lanes or breakers or tenant is not None):
        fail("--lanes, --breakers and --tenant are for every goal: give no goal id", 2)
    if lanes and breakers:
        fail("--lanes or --breakers, not both", 2)
    s = settings(config)
    if not watch:
        one_shot(ctx)
    try:
        # Offline too: the data dir's log is served for the command's length.
        with runtime.log_server(s) as url:
            if lanes:
                run(_lanes(s, url, tenant, as_json))
            elif breakers:
                run(_breakers(s, url, as_json))
            else:
                run(_status(s, url, goal, watch, as_json, tenant))
    except BlackboardError as e:
        fail(str(e))


async def _status(
    s: config_mod.Settings,
    url: str,
    goal_id: str | None,
    watch: bool,
    as_json: bool,
    tenant: str | None = None,
) -> None:
    from blackboard.cli import display
    from blackboard.engine import control as client
    from blackboard.runtime import connection as runtime

    async with runtime.open_store(s, url, name="bb-status") as store:
        if goal_id is None:
            goals = [
                g
                for g in await client.goals(store)
                if tenant is None or g.submitted.tenant == tenant
            ]
            if as_json:
                emit_json([display.goal_json(g, tasks=False) for g in goals])
                return
            if not goals:
                typer.echo('no goals yet: bb submit "<goal>"')
            else:
                for g in goals:
                    typer.echo(display.goal_row(g))
            try:
                tripped = await _tripped(s, store)
            except BlackboardError as e:
                # The goals are what was asked for: a breaker that cannot
                # be read is a note, not a failure.
                typer.echo(f"circuit breakers not read: {e}", err=True)
                return
            for row in tripped:
                typer.echo(_breaker_line(row))
            return
        goal = await client.goal_state(store, goal_id)
        if not watch:
            if as_json:
                emit_json(display.goal_json(goal))
            else:
                typer.echo("\n".join(display.goal_tree(goal)))
            return
        await _watch(store, goal_id, as_json)


async def _lanes(
    s: config_mod.Settings, url: str, tenant: str | None, as_json: bool
) -> None:
    """Each lane's window as the log shows it now."""
    from blackboard.engine import control as client
    from blackboard.engine.dispatch import lane_loads
    from blackboard.runtime import connection as runtime
    from blackboard.runtime.inprocess import policy_from

    policy = policy_from(s)
    async with runtime.open_store(s, url, name="bb-status") as store:
        goals = await client.goals(store)
    loads = lane_loads(goals, policy.window)
    # A tenant's wait for a rate quota, as its goals' last notes say.
    waits = {
        g.submitted.tenant: g.throttled.reason
        for g in goals
        if g.status == "running" and g.throttled is not None
    }
    rows: list[dict[str, Any]] = [
        {
            "lane": load.lane,
            "window": load.window,
            "in_flight": load.in_flight,
            "waiting": load.waiting,
            "tenants": {
                t: {
                    "in_flight": f,
                    "waiting": w,
                    "weight": policy.weights.get(t, 1.0),
                    "max_in_flight": policy.quotas.get(t),
                    "tokens_per_minute": _rate(policy, t).tokens_per_minute,
                    "usd_per_day": _rate(policy, t).usd_per_day,
                    "throttled": waits.get(t),
                }
                for t, (f, w) in load.tenants.items()
                if tenant is None or t == tenant
            },
        }
        for load in loads
    ]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        typer.echo("no task is in flight or waiting")
    for row in rows:
        window = row["window"] or "no window"
        typer.echo(
            f"{row['lane']:<10} {row['in_flight']:>6} in flight (window {window}),"
            f" {row['waiting']:>6} waiting"
        )
        for t, share in row["tenants"].items():
            quota = share["max_in_flight"]
            typer.echo(
                f"  {t:<16} {share['in_flight']:>6} in flight {share['waiting']:>6}"
                f" waiting  weight {share['weight']:g}"
                + (f"  quota {quota} in flight" if quota is not None else "")
                + (
                    f"  {share['tokens_per_minute']} tokens/min"
                    if share["tokens_per_minute"] is not None
                    else ""
                )
                + (
                    f"  ${share['usd_per_day']:g}/day"
                    if share["usd_per_day"] is not None
                    else ""
                )
            )
            if share["throttled"]:
                typer.echo(f"    waiting: {share['throttled']}")


def _rate(policy: Policy, tenant: str) -> RateQuota:
    """The tenant's rate quotas (none: not limited)."""
    from blackboard.engine.quota import RateQuota

    return policy.rates.get(tenant, RateQuota())


async def _tripped(s: config_mod.Settings, store: Any) -> list[dict[str, Any]]:
    """The breakers of the configured lanes' models that are not closed."""
    from datetime import UTC, datetime

    from agents.fleet import read_breakers
    from agents.lanes import models_of

    rows = []
    for provider, model, b in await read_breakers(store.shared_state(), models_of(s)):
        if b.state == "closed":
            continue
        rows.append(
            {
                "provider": provider,
                "model": model,
                "state": b.state,
                "failures": b.failures,
                "since": datetime.fromtimestamp(b.since, UTC).isoformat(),
                "reason": b.reason,
            }
        )
    return rows


def _breaker_line(row: dict[str, Any]) -> str:
    since = row["since"][:19].replace("T", " ")
    return (
        f"breaker {row['state']:<9} {row['provider']}/{row['model']}"
        f"  {row['failures']} failures, since {since} UTC: {row['reason']}"
    )


async def _breakers(s: config_mod.Settings, url: str, as_json: bool) -> None:
    """The circuit breakers that are not closed, as the fleet shares them."""
    from blackboard.runtime import connection as runtime

    async with runtime.open_store(s, url, name="bb-status") as store:
        rows = await _tripped(s, store)
    if as_json:
        emit_json(rows)
    elif not rows:
        typer.echo("every model's circuit breaker is closed")
    else:
        for row in rows:
            typer.echo(_breaker_line(row))


async def _watch(store: Any, goal_id: str, as_json: bool) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from blackboard.cli import display
    from blackboard.engine import control as client

    if as_json:

        def emit(g: Any, _: Any) -> None:
            emit_json(display.goal_json(g, tasks=False))

        await client.wait_goal(store, goal_id, until=client.FINAL, on_batch=emit)
        return
    console = Console()
    with Live(Text("…"), console=console, auto_refresh=False) as live:

        def draw(g: Any, _: Any) -> None:
            live.update(Text("\n".join(display.goal_tree(g))), refresh=True)

        await client.wait_goal(store, goal_id, until=client.FINAL, on_batch=draw)


@app.command(rich_help_panel=OPERATE)
def approve(
    task: Annotated[str, typer.Argument(help="The task awaiting approval.")],
    goal: Annotated[
        str | None, typer.Option(help="Its goal (found from the log if omitted).")
    ] = None,
    deny: Annotated[bool, typer.Option("--deny", help="Refuse instead.")] = False,
    note: Annotated[str, typer.Option(help="Why; recorded with the decision.")] = "",
    by: ByOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Approve (or --deny) a task that waits for a human.

    A task stopped inside its run (a tool call or a cost gate the policy
    sends to a human) resumes where it stopped; a denied tool call is
    returned to the model as an error and the run goes on without it.
    """
    from blackboard.engine import control as client

    s = settings(config)
    who = whoami(s, by)

    async def go() -> Any:
        from blackboard.runtime import connection as runtime

        async with runtime.open_store(s, name="bb-approve") as store:
            return await client.approve(
                store, task, goal_id=goal, deny=deny, note=note, by=who
            )

    t = run(go())
    verdict = "denied" if deny else "approved"
    if as_json:
        emit_json(
            {
                "goal_id": t.goal_id,
                "task_id": task,
                "decision": verdict,
                "key": t.approval_key,
                "reason": t.approval_reason,
            }
        )
    else:
        typer.echo(f"{verdict} {task} ({t.task_type} on {t.lane}) of goal {t.goal_id}")
        if t.approval_key:
            after = (
                "the run goes on without it"
                if deny and t.approval_on_deny == "resume"
                else "the run resumes where it stopped"
                if not deny
                else "the task is cancelled"
            )
            typer.echo(f"  {t.approval_reason}: {after}")


@app.command(rich_help_panel=OPERATE)
def resume(
    goal: Annotated[str, typer.Argument(help="The halted goal.")],
    max_depth: MaxDepth = None,
    max_tasks: MaxTasks = None,
    max_tokens: MaxTokens = None,
    max_cost: MaxCost = None,
    max_turns: MaxTurns = None,
    deadline: Deadline = None,
    by: ByOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Raise a halted goal's limits (or extend its deadline); release its held tasks."""
    from blackboard.engine import control as client

    s = settings(config)
    overrides = limit_overrides(
        max_depth, max_tasks, max_tokens, max_cost, max_turns, deadline
    )
    if not any(v is not None for v in overrides.values()):
        fail(
            "say which limit to raise: --max-tasks, --max-depth, --max-tokens, "
            "--max-cost, --max-turns or --deadline",
            2,
        )

    who = whoami(s, by)

    async def go() -> Any:
        from blackboard.runtime import connection as runtime

        async with runtime.open_store(s, name="bb-resume") as store:
            return await client.resume(store, goal, overrides, by=who)

    g = run(go())
    held = [t.task_id for t in g.tasks.values() if t.status == "held"]
    if as_json:
        emit_json({"goal_id": goal, "released": held})
    else:
        typer.echo(
            f"resumed {goal} (halted by {g.halted_by}); released {len(held)} task(s)"
        )


CompensateOpt = Annotated[
    bool,
    typer.Option(
        "--compensate",
        help="Then undo its reversible effects, here (see `bb compensate`).",
    ),
]

NEEDS_HUMAN = 3
"""The exit code of a compensation that left something to a human."""


@app.command(rich_help_panel=OPERATE)
def cancel(
    goal: Annotated[str, typer.Argument(help="The goal to cancel.")],
    reason: Annotated[str, typer.Option(help="Recorded with the cancellation.")] = "",
    compensate: CompensateOpt = False,
    by: ByOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Cancel a goal: its open tasks are cancelled, running ones stopped.

    With --compensate, its reversible effects are then undone in this process
    (exit 3 if some undo failed or an effect needs a human), as `bb
    compensate` does.
    """
    from blackboard.engine import control as client

    s = settings(config)
    who = whoami(s, by)

    async def go() -> tuple[int, Any]:
        from blackboard.runtime import connection as runtime

        async with runtime.open_store(s, name="bb-cancel") as store:
            if compensate:
                was = (await client.goal_state(store, goal)).status
                if was in ("cancelled", "failed"):
                    fail(
                        f"goal {goal} is already {was}: `bb compensate {goal}`"
                        " undoes its effects"
                    )
            _, n = await client.cancel(
                store, goal, reason=reason, by=who, compensate=compensate
            )
            if not compensate:
                return n, None
            try:
                return n, await _compensate(store, s, goal, who)
            except BlackboardError as e:
                fail(
                    f"cancelled {goal}, but compensating failed: {e}; run"
                    f" `bb compensate {goal}` once that is fixed"
                )

    n, report = run(go())
    if as_json:
        doc: dict[str, Any] = {"goal_id": goal, "cancelled_tasks": n}
        if report is not None:
            doc["compensation"] = report.as_json()
        emit_json(doc)
    else:
        typer.echo(
            f"cancelled {goal} and its {n} open task(s); running handlers stop "
            "at their next step"
        )
        if report is not None:
            _show_compensation(report)
    if report is not None and not report.clean:
        raise typer.Exit(NEEDS_HUMAN)


@app.command(rich_help_panel=OPERATE)
def compensate(
    goal: Annotated[str, typer.Argument(help="A cancelled or failed goal.")],
    by: ByOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Undo a cancelled or failed goal's reversible effects, newest first.

    Workspace writes (and Python tools with a compensator) are undone with
    what their calls recorded, each undo recorded in the log; irreversible
    effects are listed as needing a human. Run it where the goal's workspace
    is (on Kubernetes: in a pod that mounts it). Running it again does nothing
    twice. Exit 0: everything was undone; 3: some undo failed or an effect
    needs a human; 1: nothing was done (the goal is open or done).
    """
    from blackboard.runtime import connection as runtime

    s = settings(config)
    who = whoami(s, by)

    async def go(url: str) -> Any:
        async with runtime.open_store(s, url, name="bb-compensate") as store:
            return await _compensate(store, s, goal, who)

    try:
        # Offline too: a goal that failed under `bb run` is in the data dir.
        with runtime.log_server(s) as url:
            report = run(go(url))
    except BlackboardError as e:
        fail(str(e))
    if as_json:
        emit_json(report.as_json())
    else:
        _show_compensation(report)
    if not report.clean:
        raise typer.Exit(NEEDS_HUMAN)


async def _compensate(store: Any, s: config_mod.Settings, goal: str, by: str) -> Any:
    from agents.compensate import compensate_goal

    return await compensate_goal(store, s, goal, by=by)


def _show_compensation(report: Any) -> None:
    """One line per undo, then what needs a human, then the counts."""
    from blackboard.cli.common import me

    goal = report.goal_id
    if report.nothing_to_do:
        typer.echo(f"nothing to undo for goal {goal}: it recorded no effect")
        return
    if not report.steps:
        left = " left" if report.already_undone else ""
        typer.echo(f"nothing{left} to undo for goal {goal}")
    for line in report.lines():
        typer.echo(line)
    undone = sum(st.outcome == "undone" for st in report.steps)
    humans = len(report.needs_human) + len(report.reported)
    before = f" ({report.already_undone} before)" if report.already_undone else ""
    typer.echo(
        f"{undone} undone{before}, {len(report.failed)} failed, {humans} left to a"
        f" human; every step is in the log: {me()} replay {goal}"
    )
