"""``bb policy``: the active policy, and which rule decides a case."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from blackboard.cli.common import OPERATE, JsonOpt, app, emit_json, fail, settings

if TYPE_CHECKING:
    from blackboard.runtime.config import Settings

policy_app = typer.Typer(
    help="The policy agents run under ([policy] in bb.toml, or $BB_POLICY)."
)
app.add_typer(policy_app, name="policy", rich_help_panel=OPERATE)


@policy_app.command()
def show(as_json: JsonOpt = False) -> None:
    """Print the active policy, where it comes from and its hash."""
    from blackboard.engine import policy

    rules = settings().policy
    described = policy.describe(rules)
    if as_json:
        emit_json(described)
        return
    typer.echo(f"policy {described['hash']} from {described['source']}")
    typer.echo(f"default: {rules.default}")
    typer.echo(
        "on failure: "
        + (
            "compensate (a failed goal's reversible effects are undone)"
            if rules.compensates_failures
            else "keep (effects stay until bb compensate)"
        )
    )
    if not rules.rules:
        typer.echo("no rules")
    for i, rule in enumerate(described["rules"], 1):
        when = rule.pop("when", {})
        conds = " ".join(f"{k}={_shown(v)}" for k, v in when.items()) or "always"
        name, decision = rule.pop("name"), rule.pop("decision")
        reason = rule.pop("reason", "")
        extra = " ".join(f"{k}={_shown(v)}" for k, v in rule.items())
        line = f"{i:>3}. {name}: when {conds} -> {decision} {extra}".rstrip()
        typer.echo(line + (f"  # {reason}" if reason else ""))


@policy_app.command()
def check(
    tenant: Annotated[str, typer.Option(help="The goal's tenant.")] = "default",
    lane: Annotated[str, typer.Option(help="The task's lane.")] = "",
    task_type: Annotated[
        str, typer.Option("--task-type", help="The task's type.")
    ] = "execute",
    tool: Annotated[
        str | None, typer.Option(help="A tool call (server.tool): decide it.")
    ] = None,
    effect: Annotated[
        str | None,
        typer.Option(help="The tool's effect class (default: the tool's own)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="A model call to this model: decide it.")
    ] = None,
    cost: Annotated[
        float | None,
        typer.Option("--cost", help="The call's estimated worst-case cost, USD."),
    ] = None,
    depth: Annotated[int, typer.Option(help="The task's depth.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Explain which rule decides a case: a task (default), a tool or model call.

    The tool's effect class is looked up among the tools the lane offers
    when not given.
    """
    from blackboard.engine import policy

    if tool is not None and (model is not None or cost is not None):
        fail("give --tool or --model/--cost, not both: a call is one or the other", 2)
    if depth < 0:
        fail(f"--depth {depth}: give 0 or more", 2)
    s = settings()
    if lane and lane not in s.lanes:
        fail(f"--lane {lane!r}: configured lanes are {', '.join(s.lanes)}", 2)
    lane = lane or next(iter(s.lanes), "")
    point: policy.Point = "task"
    if tool is not None:
        point = "tool"
        effect = effect or _effect_of(s, tool)
    elif model is not None or cost is not None:
        point = "model"
        model = model or s.lanes[lane].model
    facts = policy.Facts(
        point=point,
        tenant=tenant,
        lane=lane,
        task_type=task_type,
        depth=depth,
        tool=tool,
        effect=effect,
        model=model,
        estimated_cost_usd=cost,
    )
    verdict = policy.evaluate(s.policy, facts)
    if as_json:
        emit_json(
            {
                "point": point,
                "facts": {
                    k: v
                    for k, v in vars_of(facts).items()
                    if v is not None and k != "point"
                },
                "decision": verdict.decision,
                "rule": verdict.rule,
                "reason": verdict.reason,
                "constraints": verdict.constraints,
                "policy_hash": verdict.policy_hash,
            }
        )
        return
    subject = {"tool": tool, "model": model, "task": f"a {task_type} task"}[point]
    typer.echo(f"{point} {subject} for tenant {tenant} on lane {lane}:")
    typer.echo(f"  {verdict.explain()}")


def _shown(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def vars_of(facts: object) -> dict[str, object]:
    """The fields of a slotted dataclass, by name."""
    return {k: getattr(facts, k) for k in getattr(facts, "__slots__", ())}


def _effect_of(s: Settings, tool: str) -> str:
    """The effect class of a configured tool; ``irreversible`` when unknown.

    Only tools known without starting anything are looked up (the workspace's
    and Python functions); an MCP tool's class comes from its server, so give
    --effect for it.
    """
    from agents.toolbox import known_effects

    return known_effects(s).get(tool, "irreversible")
