"""The policy and the budget where the agents act: before each call.

The decisions are the pure ``blackboard.engine.policy``; this module gathers
the facts (the goal's tenant, the task's lane, type and depth, the model or
the tool, the call's worst-case cost), records every decision that is not a
plain allow (once per key, with the rule and the policy's hash), and turns
decisions into what happens:

- a model the policy denies, or leaves out of an ``allow_with`` allow-list,
  is skipped in the lane's fallback chain (none left: the task fails);
- ``allow_with max_tokens`` caps every request of the conversation;
- ``require_approval`` on a model call (a cost gate) or a tool call stops the
  task until a human answers (``bb approve``); the run resumes where it
  stopped, on any worker;
- a denied tool call is returned to the model as a tool error;
- before each model call the call's worst case is reserved in the goal's
  budget; a call that could cross a limit is not made and the goal halts.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import msgspec

from agents.models import ModelRequest, request_body
from blackboard import ids
from blackboard.engine import budget, policy
from blackboard.engine.handlers import GuardrailBreached, NeedsApproval
from blackboard.engine.transcript import ToolOutcome
from blackboard.log.events import PolicyDecided

if TYPE_CHECKING:
    from agents.cost import PriceTable
    from blackboard.engine.context import TaskContext
    from blackboard.engine.policy import Facts, PolicySet, Verdict


class Governor:
    """The policy and the budget of one worker process."""

    def __init__(self, rules: PolicySet, prices: PriceTable) -> None:
        self.rules = rules
        self.prices = prices
        self._recorded: weakref.WeakKeyDictionary[Any, set[str]] = (
            weakref.WeakKeyDictionary()
        )

    async def facts(self, ctx: TaskContext, point: policy.Point, **more: Any) -> Facts:
        """What is known of the task at a decision point."""
        goal = await ctx.goal()
        task = await ctx.task()
        return policy.Facts(
            point=point,
            tenant=goal.tenant,
            lane=ctx.lane,
            task_type=ctx.task_type,
            depth=task.depth,
            **more,
        )

    async def record(
        self, ctx: TaskContext, verdict: Verdict, point: str, subject: str, key: str
    ) -> None:
        """Record a decision that is not a plain allow, once per key."""
        if verdict.plain_allow:
            return
        done = self._recorded.setdefault(ctx, set())
        if key in done or key in (await ctx.history()).policy_keys:
            return
        done.add(key)
        goal_id, task_id, actor = ctx.goal_id, ctx.task_id, ctx.worker

        def make(event_id: str) -> PolicyDecided:
            return PolicyDecided(
                event_id=event_id,
                goal_id=goal_id,
                task_id=task_id,
                at=ids.utcnow(),
                actor=actor,
                point=point,
                subject=subject,
                decision=verdict.decision,
                rule=verdict.rule,
                policy_hash=verdict.policy_hash,
                constraints=verdict.constraints,
                reason=verdict.reason,
                key=key,
            )

        await ctx.append(make)

    # --- model calls --------------------------------------------------------

    async def shape(self, ctx: TaskContext, request: ModelRequest) -> ModelRequest:
        """The request with an ``allow_with max_tokens`` applied.

        Applied once, when the conversation starts, so a resumed run sends (and
        finds recorded) exactly the requests the first run did.
        """
        if self.rules.allows_all:
            return request
        verdict = policy.evaluate(
            self.rules, await self.facts(ctx, "model", model=request.model)
        )
        cap = verdict.constraints.get("max_tokens")
        if verdict.decision != "allow_with" or not isinstance(cap, int):
            return request
        if cap >= request.max_tokens:
            return request
        await self.record(
            ctx, verdict, "model", request.model, f"max_tokens:{request.model}"
        )
        return msgspec.structs.replace(request, max_tokens=cap)

    def worst_case(self, model: str, request: ModelRequest) -> tuple[int, float]:
        """The most tokens and USD one call of ``request`` to ``model`` can use."""
        size = len(msgspec.json.encode(request_body(request)))
        price = self.prices.price_for(model)
        return budget.worst_case(size, len(request.messages), request.max_tokens, price)

    async def before_call(
        self, ctx: TaskContext, model: str, request: ModelRequest
    ) -> tuple[bool, str]:
        """Whether ``model`` may be called, and the reservation it is made under.

        Raises:
            NeedsApproval: A ``require_approval`` rule matches the call (a cost
                gate) and nobody has answered yet.
            GuardrailBreached: The call's worst case could cross the goal's
                ``max_tokens`` or ``max_cost_usd``.
        """
        tokens, usd = self.worst_case(model, request)
        if not self.rules.allows_all:
            verdict = policy.evaluate(
                self.rules,
                await self.facts(ctx, "model", model=model, estimated_cost_usd=usd),
            )
            if not await self._model_allowed(ctx, verdict, model, usd):
                return False, ""
        reserved = await ctx.reserve(tokens, usd, model)
        if isinstance(reserved, budget.Refused):
            raise GuardrailBreached(
                reserved.guardrail, reserved.limit, reserved.observed, reserved.detail
            )
        return True, reserved

    async def _model_allowed(
        self, ctx: TaskContext, verdict: Verdict, model: str, usd: float
    ) -> bool:
        if verdict.decision == "deny" or not policy.model_allowed(verdict, model):
            await self.record(ctx, verdict, "model", model, f"model:{model}")
            return False
        if verdict.decision != "require_approval":
            return True
        # One answer covers the task's calls: a gate before its first call.
        key = f"model:{ctx.task_id}"
        answer = (await ctx.history()).approvals.get(key)
        if answer is not None and answer.granted:
            return True
        await self.record(ctx, verdict, "model", model, key)
        raise NeedsApproval(
            f"a call to {model} may cost up to ${usd:.4f}; {verdict.explain()}",
            policy=f"rule:{verdict.rule}",
            key=key,
            on_deny="cancel",
        )

    # --- tool calls ---------------------------------------------------------

    async def before_tool(
        self, ctx: TaskContext, tool: str, effect: str, key: str
    ) -> ToolOutcome | None:
        """None when the call may run; else the outcome the model is shown.

        Raises:
            NeedsApproval: A ``require_approval`` rule matches and nobody has
                answered yet; the task waits, and resumes here.
        """
        if self.rules.allows_all:
            return None
        verdict = policy.evaluate(
            self.rules, await self.facts(ctx, "tool", tool=tool, effect=effect)
        )
        if verdict.decision in ("allow", "allow_with"):
            return None
        await self.record(ctx, verdict, "tool", tool, f"tool:{key}")
        if verdict.decision == "deny":
            return ToolOutcome(
                error=f"{tool} is denied by policy: {verdict.explain()}", refused=True
            )
        answer = (await ctx.history()).approvals.get(f"tool:{key}")
        if answer is None:
            raise NeedsApproval(
                f"tool call {tool} ({effect}) needs approval: {verdict.explain()}",
                policy=f"rule:{verdict.rule}",
                key=f"tool:{key}",
                on_deny="resume",
            )
        if answer.granted:
            return None
        note = f": {answer.note}" if answer.note else ""
        return ToolOutcome(
            error=f"{tool} was denied by {answer.by or 'an approver'}{note}",
            refused=True,
        )
