"""Retries, fallback, breakers, rate limits and cost accounting around models.

:class:`ResilientModel` is itself a :class:`~agents.models.ModelClient`. It
walks a fallback chain of ``(client, model_name)``: each model gets
``1 + max_retries_per_model`` tries while it fails retryably, then the next
model takes over; a model whose circuit breaker is open is passed over
without a call (agents/breaker.py). A terminal error stops at once: a 400 is
our bug, and another provider will not fix it. When the whole chain is
exhausted, the last :class:`~agents.models.RetryableModelError` is raised, so
the worker can nak the message and let the broker redeliver it later.

Every provider call, successful or not, is reported to ``on_call`` as a
:class:`~agents.models.CallRecord` and awaited before anything else happens
(no sleep, no retry, no return): the worker records a ``ModelCalled`` event the
moment a call returns, so a crash never loses a paid-for answer. (A 429 is
told to the model's rate limiter first, so that every process sharing the
limit stops at once; a refused call costs nothing.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from agents.cost import PriceTable, cost_usd
from agents.models import (
    CallRecord,
    ModelClient,
    ModelError,
    ModelRequest,
    ModelResponse,
    RetryableModelError,
    SupportsAclose,
    TerminalModelError,
    approx_tokens,
    input_text,
    request_body,
    request_hash,
)

if TYPE_CHECKING:
    from agents.breaker import Breaker, Transition
    from agents.ratelimit import Limiter
    from blackboard.log.events import Price

__all__ = ["OnBreaker", "OnCall", "ResilientModel"]

OnCall = Callable[[CallRecord], Awaitable[None]]
"""Awaited after every provider call, before anything else happens."""

OnBreaker = Callable[[str, str, "Transition"], Awaitable[None]]
"""Awaited with the provider, the model and each move of its circuit breaker
that a call of this chain made (the worker records a ``BreakerChanged``)."""

BeforeCall = Callable[[str, str, ModelRequest], Awaitable[bool]]
"""Awaited before every provider call with the provider, the model and the
request; False skips that model (the policy does not allow it). It may raise
to stop the call (an approval to wait for, a budget that would be crossed)."""


async def _ignore(record: CallRecord) -> None:
    """Drop the record: the default ``on_call``."""


class ResilientModel(ModelClient):
    """A fallback chain of models with retries, backoff and rate limits.

    Args:
        chain: ``(client, model_name)`` pairs, tried in order; the request's
            ``model`` is replaced by each name in turn.
        prices: Prices the answering model's tokens.
        limiters: A rate limiter per ``(client.provider, model)``, acquired
            before every call of that model: the process's own or the
            fleet's (agents/fleet.py). A 429 penalizes the model's limiter
            for its ``retry-after`` (or the backoff), so every caller that
            shares it waits too.
        breakers: A circuit breaker per ``(client.provider, model)``,
            consulted before each model of the chain: open, the model is
            skipped (no call, no retries); half-open, this call may be its one
            probe (a single try). Retryable failures count, terminal ones
            do not.
        on_breaker: Awaited with each move of a breaker this chain made.
        on_call: Awaited with the record of every provider call.
        max_retries_per_model: Retries of a model after its first try.
        backoff_base_s: The first backoff; it doubles on every retry.
        backoff_cap_s: The longest backoff. A ``retry-after`` longer than this
            skips the model's remaining retries and falls back at once.
        sleep: Awaitable sleep; injected by tests.
        monotonic: Monotonic seconds, to time calls; injected by tests.
        provider: The name this wrapper reports as its own provider.

    Raises:
        ValueError: The chain is empty or ``max_retries_per_model`` negative.
    """

    def __init__(
        self,
        chain: Sequence[tuple[ModelClient, str]],
        prices: PriceTable,
        *,
        limiters: Mapping[tuple[str, str], Limiter] | None = None,
        breakers: Mapping[tuple[str, str], Breaker] | None = None,
        on_breaker: OnBreaker | None = None,
        on_call: OnCall | None = None,
        before_call: BeforeCall | None = None,
        max_retries_per_model: int = 2,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        provider: str = "resilient",
    ) -> None:
        if not chain:
            msg = "a fallback chain needs at least one model"
            raise ValueError(msg)
        if max_retries_per_model < 0:
            msg = f"max_retries_per_model must be >= 0, not {max_retries_per_model}"
            raise ValueError(msg)
        self.provider = provider
        self.chain = tuple(chain)
        self.prices = prices
        self._limiters = dict(limiters or {})
        self._breakers = dict(breakers or {})
        self._on_breaker = on_breaker
        self._on_call = on_call or _ignore
        self._before = before_call
        self._max_retries = max_retries_per_model
        self._base = backoff_base_s
        self._cap = backoff_cap_s
        self._sleep = sleep
        self._monotonic = monotonic

    async def aclose(self) -> None:
        """Close every distinct client of the chain that holds connections."""
        seen: set[int] = set()
        for client, _ in self.chain:
            if id(client) not in seen and isinstance(client, SupportsAclose):
                seen.add(id(client))
                await client.aclose()

    def backoff(self, retry: int, retry_after: float | None) -> float:
        """Return the seconds to wait before retry number ``retry`` (0-based)."""
        if retry_after is not None:
            return retry_after
        return float(min(self._cap, self._base * 2**retry))

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Complete the request with the first model of the chain that answers.

        Args:
            request: The request; its ``model`` is replaced along the chain.

        Returns:
            The first successful response.

        Raises:
            TerminalModelError: A model refused the request; no fallback.
            RetryableModelError: Every model of the chain failed retryably
                (this is the last such error), or every one's breaker was
                open (``retry_after``: until the soonest may be probed).
        """
        call_index = 0
        last_error: RetryableModelError | None = None
        skipped: list[str] = []
        tripped: list[str] = []
        retry_in: list[float] = []
        for client, model in self.chain:
            sent = msgspec.structs.replace(request, model=model)
            context = _CallContext(
                provider=client.provider,
                model=model,
                request=request_body(sent),
                request_hash=request_hash(sent),
                prompt_version=sent.prompt_version,
            )
            limiter = self._limiters.get((client.provider, model))
            gate = self._breakers.get((client.provider, model))
            tries = self._max_retries + 1
            probe = False
            if gate is not None:
                verdict = await gate.before_call()
                await self._moved(client.provider, model, verdict.change)
                if verdict.verdict == "skip":
                    # Open: straight to the next model, no call, no retries.
                    tripped.append(model)
                    if verdict.retry_in is not None:
                        retry_in.append(verdict.retry_in)
                    continue
                probe = verdict.verdict == "probe"
                if probe:
                    tries = 1
            estimate = approx_tokens(input_text(sent)) + sent.max_tokens
            for retry in range(tries):
                if self._before is not None and not await self._before(
                    client.provider, model, sent
                ):
                    skipped.append(model)
                    if probe and gate is not None:
                        await gate.inconclusive()
                    break
                if limiter is not None:
                    await limiter.acquire(estimate)
                started = self._monotonic()
                try:
                    response = await client.complete(sent)
                except RetryableModelError as e:
                    latency_ms = (self._monotonic() - started) * 1000
                    if e.status == 429 and limiter is not None:
                        # Too many requests: everyone sharing the model's
                        # limit waits, not just this call; told first, since
                        # every moment others go on sending is a refusal.
                        await limiter.penalize(self.backoff(retry, e.retry_after))
                    await self._on_call(context.failed(e, latency_ms, call_index))
                    call_index += 1
                    last_error = e
                    if gate is not None:
                        state, change = await gate.failure(_reason(e))
                        await self._moved(client.provider, model, change)
                        if state == "open":
                            # This failure (or another process's) opened it:
                            # no more tries of a model the fleet now skips.
                            break
                    if retry == tries - 1:
                        break
                    if e.retry_after is not None and e.retry_after > self._cap:
                        # The provider asks for a longer pause than we would
                        # ever back off: another model is the faster way out.
                        break
                    await self._sleep(self.backoff(retry, e.retry_after))
                    continue
                except Exception as e:
                    latency_ms = (self._monotonic() - started) * 1000
                    await self._on_call(context.failed(e, latency_ms, call_index))
                    if gate is not None:
                        # A refusal (or our own bug) says nothing of the
                        # model's health: not counted, a probe handed back.
                        await gate.inconclusive()
                    raise
                latency_ms = (self._monotonic() - started) * 1000
                price = self._price(model, response)
                await self._on_call(
                    context.succeeded(response, price, latency_ms, call_index)
                )
                if gate is not None:
                    await self._moved(client.provider, model, await gate.success())
                if limiter is not None:
                    used = response.tokens_in + response.tokens_cached
                    await limiter.adjust(used + response.tokens_out - estimate)
                return response
        if last_error is None and tripped:
            raise RetryableModelError(
                f"the circuit breaker is open for {', '.join(tripped)}"
                + (f"; {', '.join(skipped)} refused by the policy" if skipped else ""),
                retry_after=min(retry_in) if retry_in else None,
            )
        if last_error is None:
            # Every model of the chain was skipped: none is allowed.
            raise TerminalModelError(
                f"no model of the chain may be called: {', '.join(skipped)}"
                " refused by the policy"
            )
        raise last_error

    async def _moved(
        self, provider: str, model: str, change: Transition | None
    ) -> None:
        """Report a move of a model's breaker that this call made."""
        if change is not None and self._on_breaker is not None:
            await self._on_breaker(provider, model, change)

    def _price(self, model: str, response: ModelResponse) -> Price:
        """Price by the configured name, else by the one the provider reported."""
        if self.prices.known(model) or not self.prices.known(response.model):
            return self.prices.price_for(model)
        return self.prices.price_for(response.model)


def _reason(error: RetryableModelError) -> str:
    """A failure as a breaker records why it opened."""
    status = f"status {error.status}" if error.status is not None else "no answer"
    return f"{status}: {error.message}"[:200]


class _CallContext(msgspec.Struct, frozen=True, kw_only=True):
    """What every record of one model in the chain shares."""

    provider: str
    model: str
    request: dict[str, Any]
    request_hash: str
    prompt_version: str

    def failed(
        self, error: Exception, latency_ms: float, call_index: int
    ) -> CallRecord:
        """Return the record of a call that raised ``error``."""
        return CallRecord(
            provider=self.provider,
            model=self.model,
            request=self.request,
            response={},
            latency_ms=round(latency_ms, 3),
            call_index=call_index,
            request_hash=self.request_hash,
            prompt_version=self.prompt_version,
            error=str(error) or type(error).__name__,
            scripted=isinstance(error, ModelError) and error.scripted,
        )

    def succeeded(
        self,
        response: ModelResponse,
        price: Price,
        latency_ms: float,
        call_index: int,
    ) -> CallRecord:
        """Return the record of a call that answered with ``response``."""
        return CallRecord(
            provider=response.provider,
            model=self.model,
            request=self.request,
            response=response.raw,
            text=response.text,
            stop_reason=response.stop_reason,
            tool_calls=tuple(msgspec.to_builtins(c) for c in response.tool_calls),
            tokens_in=response.tokens_in,
            tokens_out=response.tokens_out,
            tokens_cached=response.tokens_cached,
            cost_usd=cost_usd(
                price, response.tokens_in, response.tokens_out, response.tokens_cached
            ),
            price=price,
            latency_ms=round(latency_ms, 3),
            call_index=call_index,
            request_hash=self.request_hash,
            prompt_version=self.prompt_version,
            error=None,
            scripted=response.scripted,
        )
