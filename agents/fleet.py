"""What every worker process of a deployment shares about a model.

:class:`FleetBreaker` is a model's circuit breaker for the whole fleet
(agents/breaker.py, pure, is its state machine), under
``breaker.<provider>.<model>`` in the same bucket: every process counts its
failures into it and skips the model while it is open; a compare-and-set
claims its one probe.

:class:`FleetLimiter` is a model's rate limit for the whole fleet: its GCRA
timeline (agents/gcra.py, pure) lives in the deployment's shared state (the
``bb_limits`` key-value bucket) under ``rate.<provider>.<model>``, and every
reservation is a compare-and-set of it, so N worker processes queue on one
timeline and together stay within ``rpm``/``tpm``; a 429 blocks that
timeline for everyone (:meth:`FleetLimiter.penalize`).

The shared state is in front of every model call, so losing it must not stop
the work: when the bucket cannot be reached (or stays contended), the call
falls back to the process's own limiter, with one warning line, and the
next call tries the bucket again. A process on its own limiter only knows
its own calls, so N of them may together reach N times the limit until the
bucket is back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, TypeVar

from agents import breaker, gcra
from blackboard import telemetry
from blackboard.errors import StateConflict, StoreError
from blackboard.log.subjects import state_key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from agents.ratelimit import Limiter
    from blackboard.log.ports import SharedState

__all__ = [
    "MAX_CONFLICTS",
    "FleetBreaker",
    "FleetLimiter",
    "compare_and_set",
    "read_breakers",
]

log = logging.getLogger("blackboard.agents")

T = TypeVar("T")
S = TypeVar("S")

MAX_CONFLICTS = 50
"""Compare-and-set attempts of one decision before it gives up (a contended
key: every attempt lost to another process's write)."""


async def compare_and_set(
    shared: SharedState,
    key: str,
    decode: Callable[[bytes | None], S],
    encode: Callable[[S], bytes],
    decide: Callable[[S], tuple[S | None, T]],
    *,
    max_conflicts: int = MAX_CONFLICTS,
) -> T:
    """Read a key, decide on it, and write the decision if nobody wrote first.

    ``decide`` gets the decoded value (``decode(None)`` when the key is
    absent) and returns the new value (None: nothing to write) and what to
    return. A lost race reads again and decides again.

    Raises:
        StateConflict: Every one of ``max_conflicts`` attempts lost.
        StoreError: The shared state could not be reached.
    """
    for attempt in range(max_conflicts):
        found = await shared.get(key)
        new, out = decide(decode(found.value if found is not None else None))
        if new is None:
            return out
        try:
            if found is None:
                await shared.create(key, encode(new))
            else:
                await shared.update(key, encode(new), found.revision)
        except StateConflict:
            # Another process wrote in between: a short random pause so that
            # the same few do not collide again in lockstep.
            await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            continue
        return out
    raise StateConflict(key, -1)


async def read_breakers(
    shared: SharedState, models: Iterable[tuple[str, str]]
) -> list[tuple[str, str, breaker.BreakerState]]:
    """The breakers of these ``(provider, model)``, as the fleet has them.

    A model whose breaker was never written is closed.
    """
    out = []
    for provider, model in models:
        found = await shared.get(state_key("breaker", provider, model))
        out.append((provider, model, breaker.decode(found.value if found else None)))
    return out


def _timeline(data: bytes | None) -> gcra.LimitState:
    return gcra.decode(data) if data is not None else gcra.LimitState()


class FleetLimiter:
    """A model's requests and tokens per minute, shared by the whole fleet.

    Args:
        shared: The deployment's shared state.
        provider: The provider the calls are recorded under.
        model: The model.
        rpm: Requests per minute; ``None`` means unlimited.
        tpm: Tokens per minute; ``None`` means unlimited.
        local: The process's own limiter, used while ``shared`` cannot be
            reached.
        clock: Wall-clock seconds (the timeline is compared across hosts).
        sleep: Awaitable sleep; injected by tests.
        max_conflicts: Compare-and-set attempts before falling back.
    """

    def __init__(
        self,
        shared: SharedState,
        provider: str,
        model: str,
        *,
        rpm: float | None,
        tpm: float | None,
        local: Limiter,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_conflicts: int = MAX_CONFLICTS,
    ) -> None:
        self.shared = shared
        self.provider = provider
        self.model = model
        self.limits = gcra.Limits(rpm=rpm, tpm=tpm)
        self.key = state_key("rate", provider, model)
        self.local = local
        self._clock = clock
        self._sleep = sleep
        self._max_conflicts = max_conflicts
        # The process's own calls take turns at the key; only other
        # processes' writes can then make a compare-and-set lose.
        self._turn = asyncio.Lock()
        self.degraded = False
        """True while the last call had to use the process's own limiter."""

    async def _decide(
        self, decide: Callable[[gcra.LimitState, float], tuple[gcra.LimitState, T]]
    ) -> T:
        def step(state: gcra.LimitState) -> tuple[gcra.LimitState | None, T]:
            return decide(state, self._clock())

        async with self._turn:
            out = await compare_and_set(
                self.shared,
                self.key,
                _timeline,
                gcra.encode,
                step,
                max_conflicts=self._max_conflicts,
            )
        if self.degraded:
            self.degraded = False
            log.info("fleet rate limit of %s/%s: shared again", *self._names)
        return out

    @property
    def _names(self) -> tuple[str, str]:
        return self.provider, self.model

    def _fall_back(self, error: StoreError) -> None:
        if not self.degraded:
            self.degraded = True
            log.warning(
                "fleet rate limit of %s/%s unavailable (%s): limiting this"
                " process alone until it is back",
                self.provider,
                self.model,
                error,
            )

    async def acquire(self, tokens_estimate: int = 0) -> float:
        """Reserve the fleet's next slot for this call and sleep until it.

        Args:
            tokens_estimate: Tokens the request is expected to use.

        Returns:
            The seconds this call slept.
        """
        waited = 0.0
        while True:
            try:
                blocks, wait = await self._decide(self._reserve(tokens_estimate))
            except StoreError as e:
                self._fall_back(e)
                return waited + await self.local.acquire(tokens_estimate)
            if wait <= 0:
                return waited
            await self._sleep(wait)
            waited += wait
            # A 429 while this call slept blocks the slot it had: take a new
            # one after the block, spaced like every other.
            if not await self._blocked_since(blocks):
                return waited

    def _reserve(
        self, tokens: int
    ) -> Callable[[gcra.LimitState, float], tuple[gcra.LimitState, tuple[int, float]]]:
        def decide(
            state: gcra.LimitState, now: float
        ) -> tuple[gcra.LimitState, tuple[int, float]]:
            new, wait = gcra.acquire(state, now, self.limits, tokens)
            return new, (state.blocks, wait)

        return decide

    async def _blocked_since(self, blocks: int) -> bool:
        """Whether a 429 blocked the timeline since it read ``blocks``."""
        try:
            found = await self.shared.get(self.key)
        except StoreError:
            return False
        return found is not None and _timeline(found.value).blocks != blocks

    async def adjust(self, tokens_delta: int) -> None:
        """Correct the fleet's token timeline with a call's real usage."""
        if self.limits.tpm is None or tokens_delta == 0:
            return
        try:
            await self._decide(
                lambda s, _: (gcra.adjust(s, self.limits, tokens_delta), None)
            )
        except StoreError as e:
            self._fall_back(e)
            await self.local.adjust(tokens_delta)

    async def penalize(self, seconds: float) -> None:
        """Stop the whole fleet's calls to this model for ``seconds``.

        The process's own limiter is blocked too, so a fallback to it
        meanwhile honours the provider's answer as well.
        """
        await self.local.penalize(seconds)
        try:
            await self._decide(lambda s, now: (gcra.penalize(s, now, seconds), None))
        except StoreError as e:
            self._fall_back(e)


class FleetBreaker:
    """A model's circuit breaker, shared by the whole fleet.

    When the shared state cannot be reached the breaker stays out of the way
    (every call is allowed, nothing is counted), with one warning line: a
    breaker that cannot be read must not stop a model that may be healthy.

    Args:
        shared: The deployment's shared state.
        provider: The provider the calls are recorded under.
        model: The model.
        config: When it opens, and for how long.
        clock: Wall-clock seconds (the state is compared across hosts).
    """

    def __init__(
        self,
        shared: SharedState,
        provider: str,
        model: str,
        config: breaker.BreakerConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.shared = shared
        self.provider = provider
        self.model = model
        self.config = config
        self.key = state_key("breaker", provider, model)
        self._clock = clock
        self.degraded = False
        """True while the last call could not reach the shared state."""

    async def _decide(
        self,
        decide: Callable[[breaker.BreakerState], tuple[breaker.BreakerState | None, T]],
        default: T,
    ) -> T:
        def step(state: breaker.BreakerState) -> tuple[breaker.BreakerState | None, T]:
            new, out = decide(state)
            # The gauge shows the state this process last saw or made.
            seen = new if new is not None else state
            telemetry.get().breaker_state(self.provider, self.model, seen.state)
            return new, out

        try:
            out = await compare_and_set(
                self.shared, self.key, breaker.decode, breaker.encode, step
            )
        except StoreError as e:
            if not self.degraded:
                self.degraded = True
                log.warning(
                    "circuit breaker of %s/%s unavailable (%s): calling the"
                    " model regardless until it is back",
                    self.provider,
                    self.model,
                    e,
                )
            return default
        if self.degraded:
            self.degraded = False
            log.info("circuit breaker of %s/%s: shared again", *self._names)
        return out

    @property
    def _names(self) -> tuple[str, str]:
        return self.provider, self.model

    async def before_call(self) -> breaker.Gate:
        """Whether to call the model now; a probe is claimed for this call."""

        def decide(
            state: breaker.BreakerState,
        ) -> tuple[breaker.BreakerState | None, breaker.Gate]:
            gate, new = breaker.before_call(state, self._clock(), self.config)
            return new, gate

        return await self._decide(decide, breaker.Gate("allow"))

    async def failure(
        self, reason: str
    ) -> tuple[breaker.State, breaker.Transition | None]:
        """Count a retryable failure: the state after it, and any move."""

        def decide(
            state: breaker.BreakerState,
        ) -> tuple[
            breaker.BreakerState | None,
            tuple[breaker.State, breaker.Transition | None],
        ]:
            new = breaker.on_failure(state, self._clock(), self.config, reason)
            return new, (new.state, breaker.transition(state, new))

        return await self._decide(decide, ("closed", None))

    async def success(self) -> breaker.Transition | None:
        """The model answered: the breaker closes (the move, if it moved)."""

        def decide(
            state: breaker.BreakerState,
        ) -> tuple[breaker.BreakerState | None, breaker.Transition | None]:
            new = breaker.on_success(state, self._clock())
            return new, breaker.transition(state, new) if new is not None else None

        return await self._decide(decide, None)

    async def inconclusive(self) -> None:
        """A call that says nothing of the model: a probe is handed back."""

        def decide(
            state: breaker.BreakerState,
        ) -> tuple[breaker.BreakerState | None, None]:
            return breaker.on_inconclusive(state), None

        await self._decide(decide, None)
