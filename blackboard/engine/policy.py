"""The policy: what agents may do, decided by a pure function. Pure.

A policy is a default and an ordered list of rules. Each rule names
conditions (``when``: globs over tenant, lane, task type, tool, effect class
and model; thresholds over estimated cost and depth) and a decision:
``allow``, ``deny``, ``require_approval`` or ``allow_with`` constraints (a lane
the task is moved to, a model allow-list, a cap on ``max_tokens``).

Decisions are taken at three points: ``task`` (the scheduler admits a task),
``model`` (a worker is about to call a model) and ``tool`` (a model asked for a
tool). A rule takes part in a decision when every condition it names is known
at that point (``tool`` and ``effect`` only at a tool call; ``model`` and
``cost_over`` only at a model call) and, for ``allow_with``, when one of its
constraints applies there (``lane`` at admission; ``models`` and
``max_tokens`` at a model call). The first rule that takes part and matches
decides; when none does, the default does.

The policy's hash is over its normalised content (sorted JSON of the parsed
rules), so reformatting the file does not change it and any change of meaning
does; every recorded decision carries it.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec

from blackboard.errors import ConfigError

Decision = Literal["allow", "deny", "require_approval", "allow_with"]
Point = Literal["task", "model", "tool"]
OnFailure = Literal["keep", "compensate"]

DECISIONS: Final = ("allow", "deny", "require_approval", "allow_with")
_TOOL_ONLY: Final = ("tool", "effect")
_MODEL_ONLY: Final = ("model", "cost_over")


class When(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Conditions of a rule; every one named must hold. Globs: ``*``, ``?``."""

    tenant: list[str] | None = None
    lane: list[str] | None = None
    task_type: list[str] | None = None
    tool: list[str] | None = None
    effect: list[str] | None = None
    model: list[str] | None = None
    cost_over: float | None = None
    """The call's estimated worst-case cost in USD is above this."""
    depth_over: int | None = None
    """The task's depth (0: the goal's first tasks) is above this."""


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One rule: conditions, a decision and, for ``allow_with``, constraints."""

    name: str
    decision: Decision
    when: When = When()
    reason: str = ""
    lane: str | None = None
    """``allow_with``: the task runs on this lane."""
    models: list[str] | None = None
    """``allow_with``: only these models (globs) may be called."""
    max_tokens: int | None = None
    """``allow_with``: no call asks for more output tokens than this."""


class PolicySet(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole policy: a default and rules, first match wins."""

    default: Decision = "allow"
    rules: list[Rule] = msgspec.field(default_factory=list)
    on_failure: OnFailure = "keep"
    """What becomes of a failed goal's reversible effects: ``keep`` them (until
    someone runs ``bb compensate``) or ``compensate`` them at once."""
    source: str = ""
    """Where it was read from (``bb.toml``, a ``BB_POLICY`` file): not hashed."""

    @property
    def allows_all(self) -> bool:
        """No rule and an ``allow`` default: nothing to ask, nothing to record."""
        return not self.rules and self.default == "allow"

    @property
    def compensates_failures(self) -> bool:
        """Whether a failed goal's reversible effects are undone at once."""
        return self.on_failure == "compensate"

    @property
    def hash(self) -> str:
        """``sha256:`` and 16 hex digits of the normalised content."""
        return content_hash(self)


@dataclass(frozen=True, slots=True)
class Facts:
    """What is known at one decision point; ``None``: not known there."""

    point: Point
    tenant: str = "default"
    lane: str = ""
    task_type: str = ""
    depth: int = 0
    tool: str | None = None
    effect: str | None = None
    model: str | None = None
    estimated_cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for one set of facts, and why."""

    decision: Decision
    rule: str
    """The rule's name; ``default`` when no rule matched."""
    policy_hash: str
    reason: str = ""
    constraints: dict[str, Any] = field(default_factory=dict)

    @property
    def plain_allow(self) -> bool:
        """Nothing to record: allowed, with nothing imposed."""
        return self.decision == "allow"

    def explain(self) -> str:
        """One line: the decision, the rule and the reason."""
        what: str = self.decision
        if self.constraints:
            what += " " + ", ".join(
                f"{k}={v}" for k, v in sorted(self.constraints.items())
            )
        why = f": {self.reason}" if self.reason else ""
        return f"{what} (rule {self.rule}, policy {self.policy_hash}){why}"


def content_hash(policy: PolicySet) -> str:
    """The hash of what a policy says, not of how its file is written."""
    said: dict[str, Any] = {
        "default": policy.default,
        "rules": msgspec.to_builtins(policy.rules),
    }
    if policy.on_failure != "keep":
        # Only when set: a policy that keeps effects hashes as it did before
        # on_failure existed, so the hashes older logs recorded still match.
        said["on_failure"] = policy.on_failure
    body = msgspec.json.encode(said, order="sorted")
    return "sha256:" + hashlib.sha256(body).hexdigest()[:16]


def _globs(value: object) -> object:
    # A single glob is accepted where a list is: `tenant = "eu-*"`.
    if isinstance(value, str):
        return [value]
    return value


def parse(raw: object, source: str = "") -> PolicySet:
    """Read a policy from its TOML form (``default``, ``[[rules]]``).

    Raises:
        ConfigError: An unknown key, a wrong type, an unknown decision, an
            ``allow_with`` without constraints, constraints on another
            decision, two rules of one name, or a rule that can never take
            part in a decision (it names both a tool and a model condition).
    """
    where = f"policy ({source})" if source else "policy"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, not {type(raw).__name__}")
    data = dict(raw)
    rules = data.get("rules", [])
    if not isinstance(rules, list):
        raise ConfigError(f"{where}: rules must be a list ([[policy.rules]])")
    fixed = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise ConfigError(f"{where}: rule {i + 1} is not a table")
        rule = dict(rule)
        when = rule.get("when")
        if isinstance(when, dict):
            rule["when"] = {k: _globs(v) for k, v in when.items()}
        if isinstance(rule.get("models"), str):
            rule["models"] = [rule["models"]]
        rule.setdefault("name", f"rule-{i + 1}")
        fixed.append(rule)
    data["rules"] = fixed
    data["source"] = source
    try:
        policy = msgspec.convert(data, PolicySet)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{where}: {e}") from e
    seen: set[str] = set()
    for rule in policy.rules:
        _check(rule, where, seen)
    return policy


def _check(rule: Rule, where: str, seen: set[str]) -> None:
    name = f"{where}: rule {rule.name!r}"
    if rule.name in seen:
        raise ConfigError(f"{name} is defined twice: rule names identify decisions")
    seen.add(rule.name)
    constrained = [
        k for k in ("lane", "models", "max_tokens") if getattr(rule, k) is not None
    ]
    if rule.decision == "allow_with" and not constrained:
        raise ConfigError(f"{name}: allow_with needs lane, models or max_tokens")
    if rule.decision != "allow_with" and constrained:
        raise ConfigError(
            f"{name}: {', '.join(constrained)} only apply to allow_with,"
            f" not {rule.decision}"
        )
    if rule.max_tokens is not None and rule.max_tokens < 1:
        raise ConfigError(f"{name}: max_tokens must be at least 1")
    named = {k for k, v in msgspec.structs.asdict(rule.when).items() if v is not None}
    if named & set(_TOOL_ONLY) and named & set(_MODEL_ONLY):
        raise ConfigError(
            f"{name}: a rule cannot name both a tool condition (tool, effect)"
            " and a model condition (model, cost_over): no decision knows both"
        )
    if rule.decision == "allow_with" and named & set(_TOOL_ONLY):
        raise ConfigError(f"{name}: allow_with constraints do not apply to tool calls")


def _points(rule: Rule) -> frozenset[Point]:
    """The decision points a rule can take part in."""
    w = rule.when
    if w.tool is not None or w.effect is not None:
        points: frozenset[Point] = frozenset({"tool"})
    elif w.model is not None or w.cost_over is not None:
        points = frozenset({"model"})
    else:
        points = frozenset({"task", "model", "tool"})
    if rule.decision == "allow_with":
        applies: set[Point] = set()
        if rule.lane is not None:
            applies.add("task")
        if rule.models is not None or rule.max_tokens is not None:
            applies.add("model")
        points &= applies
    return points


def _any(patterns: list[str] | None, value: str | None) -> bool:
    if patterns is None:
        return True
    if value is None:
        return False
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def matches(rule: Rule, facts: Facts) -> bool:
    """Whether ``rule`` takes part in this decision and its conditions hold."""
    if facts.point not in _points(rule):
        return False
    w = rule.when
    if w.cost_over is not None and (
        facts.estimated_cost_usd is None or facts.estimated_cost_usd <= w.cost_over
    ):
        return False
    if w.depth_over is not None and facts.depth <= w.depth_over:
        return False
    return (
        _any(w.tenant, facts.tenant)
        and _any(w.lane, facts.lane)
        and _any(w.task_type, facts.task_type)
        and _any(w.tool, facts.tool)
        and _any(w.effect, facts.effect)
        and _any(w.model, facts.model)
    )


def constraints(rule: Rule) -> dict[str, Any]:
    """What an ``allow_with`` rule imposes."""
    out: dict[str, Any] = {}
    if rule.lane is not None:
        out["lane"] = rule.lane
    if rule.models is not None:
        out["models"] = list(rule.models)
    if rule.max_tokens is not None:
        out["max_tokens"] = rule.max_tokens
    return out


def evaluate(policy: PolicySet, facts: Facts) -> Verdict:
    """The decision for ``facts``: the first rule that matches, else the default."""
    digest = policy.hash
    for rule in policy.rules:
        if matches(rule, facts):
            return Verdict(
                rule.decision, rule.name, digest, rule.reason, constraints(rule)
            )
    return Verdict(policy.default, "default", digest, "the policy's default")


def model_allowed(verdict: Verdict, model: str) -> bool:
    """Whether an ``allow_with`` model allow-list admits ``model``."""
    allowed = verdict.constraints.get("models")
    return allowed is None or any(fnmatch.fnmatchcase(model, p) for p in allowed)


def describe(policy: PolicySet) -> dict[str, Any]:
    """The policy as ``bb policy show --json`` prints it."""
    return {
        "source": policy.source or "built-in (no policy configured)",
        "hash": policy.hash,
        "default": policy.default,
        "on_failure": policy.on_failure,
        "rules": [_plain(msgspec.to_builtins(r)) for r in policy.rules],
    }


def _plain(rule: dict[str, Any]) -> dict[str, Any]:
    """A rule without the conditions and constraints it leaves unset."""
    when = {k: v for k, v in rule.get("when", {}).items() if v is not None}
    out = {k: v for k, v in rule.items() if v not in (None, "") and k != "when"}
    return {**out, "when": when} if when else out


ALLOW_ALL: Final = PolicySet()
"""No policy configured: everything is allowed (the stated default)."""
