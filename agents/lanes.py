"""Model lanes: which clients, models, fallbacks and limits serve each lane.

Built once per process from the settings. SDK clients are created on first
use and shared by every task of the process (their connection pools, and the
per-model rate limiters, are meant to be shared). A process with a store (a
worker) shares each model's limits and circuit breaker with the whole fleet
through the store's shared state (agents/fleet.py); without one, the limits
are the process's own and there are no breakers. With ``scripted`` on
(``BB_SCRIPTED=1``), every lane answers from the bundled script, or from
``BB_SCRIPT``, so a deployment can be exercised with no model at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from agents.breaker import BreakerConfig
from agents.cost import PriceTable
from agents.fleet import FleetBreaker, FleetLimiter
from agents.models import ModelClient, SupportsAclose
from agents.ratelimit import limiter_for
from agents.resilient import BeforeCall, OnBreaker, OnCall, ResilientModel
from agents.scripted import ScriptedModel
from blackboard.errors import ConfigError
from blackboard.runtime.config import PROVIDERS, LaneSettings, ModelRef, Settings

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from agents.breaker import Breaker
    from agents.ratelimit import Limiter
    from blackboard.log.ports import SharedState

__all__ = [
    "BUNDLED_SCRIPT",
    "Lanes",
    "missing_setup",
    "models_of",
    "recorded_provider",
]

BUNDLED_SCRIPT = Path(__file__).parent / "scripts" / "demo.json"
"""The scripted models' answers: the demo goal, and a generic plan for others."""

KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
LOCAL_KEY_ENV = "BB_LOCAL_API_KEY"


def recorded_provider(kind: str) -> str:
    """The provider name a call is recorded under for a provider kind."""
    return "local" if kind == "openai-compatible" else kind


def _refs(lane: LaneSettings) -> list[ModelRef]:
    """The lane's model and its fallbacks, in the order they are tried."""
    first = ModelRef(provider=lane.provider, model=lane.model, base_url=lane.base_url)
    out = [first]
    for fb in lane.fallbacks:
        if isinstance(fb, str):
            out.append(
                ModelRef(provider=lane.provider, model=fb, base_url=lane.base_url)
            )
        else:
            out.append(fb)
    return out


def models_of(settings: Settings) -> list[tuple[str, str]]:
    """``(provider, model)`` of every model the lanes may call, as recorded.

    What the fleet's limits and breakers are keyed by, without building a
    client (no API key needed): ``bb status`` reads the breakers with it.
    """
    seen: dict[tuple[str, str], None] = {}
    for lane in settings.lanes.values():
        refs = _refs(lane)[:1] if settings.scripted else _refs(lane)
        for ref in refs:
            provider = "scripted" if settings.scripted else ref.provider
            seen[(recorded_provider(provider), ref.model)] = None
    return list(seen)


def unpriced(settings: Settings, prices: PriceTable) -> list[str]:
    """``lane: model`` for every model a dollar budget could not count.

    With a dollar budget (``[limits] max_cost_usd``) every call's worst case
    is reserved at its model's price before it is made; a model with no price
    would be counted as free, and the budget would not hold.
    """
    if settings.scripted or settings.limits.max_cost_usd is None:
        return []
    return [
        f"{name}: {ref.model}"
        for name, lane in settings.lanes.items()
        for ref in _refs(lane)
        if not prices.known(ref.model)
    ]


def _key_env(ref: ModelRef, lane: LaneSettings) -> str | None:
    if ref.provider == "openai-compatible":
        return None
    if ref.provider == lane.provider and lane.api_key_env:
        return lane.api_key_env
    return KEY_ENV.get(ref.provider)


def missing_setup(
    settings: Settings, lanes: Iterable[str], env: Mapping[str, str] | None = None
) -> list[str]:
    """What must be set before these lanes can call a model (empty: nothing).

    Only the lane's own model is checked: fallbacks are optional extras.
    """
    env = os.environ if env is None else env
    if settings.scripted:
        return []
    out: list[str] = []
    for name in lanes:
        lane = settings.lanes[name]
        ref = _refs(lane)[0]
        if ref.provider not in PROVIDERS:
            out.append(
                f"lane {name}: unknown provider {ref.provider!r}"
                f" (one of {', '.join(PROVIDERS)})"
            )
            continue
        var = _key_env(ref, lane)
        if var and not env.get(var):
            out.append(f"lane {name} ({ref.provider} {ref.model}): set {var}")
        if ref.provider == "openai-compatible" and not ref.base_url:
            out.append(f"lane {name} ({ref.model}): set BB_LOCAL_BASE_URL")
    return out


class Lanes:
    """The model chains of every configured lane, for one process.

    Args:
        settings: The process settings (lanes, prices, scripted mode).
        env: Where API keys are read from (default: the environment).
    """

    def __init__(
        self, settings: Settings, env: Mapping[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.env = os.environ if env is None else env
        self.prices = PriceTable.default().with_prices(settings.prices)
        self.scripted = settings.scripted
        self._clients: dict[tuple[str, str | None], ModelClient] = {}
        self._fleet: dict[tuple[str, str], FleetLimiter] = {}
        self._breakers: dict[tuple[str, str, BreakerConfig], FleetBreaker] = {}

    @property
    def names(self) -> list[str]:
        """The configured lanes."""
        return list(self.settings.lanes)

    def lane(self, name: str) -> LaneSettings:
        """A lane's settings, or ConfigError naming the known ones."""
        found = self.settings.lanes.get(name)
        if found is None:
            known = ", ".join(self.settings.lanes)
            raise ConfigError(f"unknown lane {name!r}; configured: {known}")
        return found

    def chain(self, name: str) -> list[tuple[ModelClient, str]]:
        """``(client, model)`` pairs of a lane, tried in order."""
        lane = self.lane(name)
        if self.scripted:
            return [
                (self._client(ModelRef(provider="scripted", model=""), lane), m.model)
                for m in _refs(lane)[:1]
            ]
        return [(self._client(ref, lane), ref.model) for ref in _refs(lane)]

    def limiters(
        self,
        name: str,
        chain: Sequence[tuple[ModelClient, str]],
        shared: SharedState | None = None,
    ) -> dict[tuple[str, str], Limiter]:
        """The rate limiter of each model of the chain the lane's limits cover.

        ``rpm``/``tpm`` are the limits of each model of the lane's own
        provider (providers set them per model); a fallback of another
        provider is not limited by them. With ``shared`` (the process has a
        store), the limits are the fleet's; the process's own limiter is what
        a call falls back on when the shared state cannot be reached.
        """
        lane = self.lane(name)
        if lane.rpm is None and lane.tpm is None:
            return {}
        own = "scripted" if self.scripted else recorded_provider(lane.provider)
        out: dict[tuple[str, str], Limiter] = {}
        for client, model in chain:
            if client.provider != own:
                continue
            try:
                local = limiter_for(f"{own}/{model}", lane.rpm, lane.tpm)
            except ValueError as e:
                raise ConfigError(f"lane {name}: {e}") from e
            out[(own, model)] = (
                local if shared is None else self._shared(shared, own, model, lane)
            )
        return out

    def _shared(
        self, shared: SharedState, provider: str, model: str, lane: LaneSettings
    ) -> FleetLimiter:
        """The fleet limiter of a model, one per process and shared state."""
        found = self._fleet.get((provider, model))
        if found is None or found.shared is not shared:
            found = FleetLimiter(
                shared,
                provider,
                model,
                rpm=lane.rpm,
                tpm=lane.tpm,
                local=limiter_for(f"{provider}/{model}", lane.rpm, lane.tpm),
            )
            self._fleet[(provider, model)] = found
        return found

    def breakers(
        self,
        name: str,
        chain: Sequence[tuple[ModelClient, str]],
        shared: SharedState | None = None,
    ) -> dict[tuple[str, str], Breaker]:
        """The fleet's circuit breaker of every model of the chain.

        None without shared state (a breaker that only one process sees would
        open for it alone), nor with ``breaker_failures = 0``.
        """
        lane = self.lane(name)
        if shared is None or lane.breaker_failures == 0:
            return {}
        config = BreakerConfig(
            failures=lane.breaker_failures,
            cooldown_s=lane.breaker_cooldown_s,
            # A probe holds its claim for as long as a call may take.
            probe_s=lane.timeout_s + 5.0,
        )
        out: dict[tuple[str, str], Breaker] = {}
        for client, model in chain:
            key = (client.provider, model, config)
            found = self._breakers.get(key)
            if found is None or found.shared is not shared:
                found = FleetBreaker(shared, client.provider, model, config)
                self._breakers[key] = found
            out[(client.provider, model)] = found
        return out

    def model(
        self,
        name: str,
        on_call: OnCall,
        before_call: BeforeCall | None = None,
        shared: SharedState | None = None,
        on_breaker: OnBreaker | None = None,
    ) -> ResilientModel:
        """The lane's chain with retries, fallback, limits and cost accounting.

        Args:
            name: The lane.
            on_call: Awaited with the record of every provider call.
            before_call: Awaited before every provider call (the policy).
            shared: The deployment's shared state: limits and breakers are
                the fleet's.
            on_breaker: Awaited with each move of a breaker a call made.
        """
        lane = self.lane(name)
        chain = self.chain(name)
        return ResilientModel(
            chain,
            self.prices,
            limiters=self.limiters(name, chain, shared),
            breakers=self.breakers(name, chain, shared),
            on_breaker=on_breaker,
            on_call=on_call,
            before_call=before_call,
            max_retries_per_model=lane.max_retries,
        )

    def _client(self, ref: ModelRef, lane: LaneSettings) -> ModelClient:
        key = (ref.provider, ref.base_url)
        client = self._clients.get(key)
        if client is None:
            client = self._build(ref, lane)
            self._clients[key] = client
        return client

    def _build(self, ref: ModelRef, lane: LaneSettings) -> ModelClient:
        if ref.provider == "scripted":
            path = (
                Path(self.settings.script) if self.settings.script else BUNDLED_SCRIPT
            )
            try:
                return ScriptedModel.from_file(path)
            except (OSError, ValueError) as e:
                raise ConfigError(f"cannot load the model script {path}: {e}") from e
        var = _key_env(ref, lane)
        key = self.env.get(var, "") if var else self.env.get(LOCAL_KEY_ENV, "")
        if var and not key:
            raise ConfigError(
                f"{var} is not set: the {ref.provider} model {ref.model} needs it"
                " (or set BB_SCRIPTED=1 to use scripted models)"
            )
        if ref.provider == "anthropic":
            from agents.anthropic_client import AnthropicModel

            return AnthropicModel(
                api_key=key, base_url=ref.base_url, timeout=lane.timeout_s
            )
        if ref.provider in ("openai", "openai-compatible"):
            from agents.openai_client import OpenAICompatibleModel

            if ref.provider == "openai-compatible" and not ref.base_url:
                raise ConfigError(
                    f"the local model {ref.model} needs a server: set BB_LOCAL_BASE_URL"
                )
            return OpenAICompatibleModel(
                api_key=key or "not-needed",
                base_url=ref.base_url,
                provider=recorded_provider(ref.provider),
                timeout=lane.timeout_s,
                max_tokens_param=(
                    "max_completion_tokens"
                    if ref.provider == "openai"
                    else "max_tokens"
                ),
            )
        raise ConfigError(
            f"unknown provider {ref.provider!r}; one of {', '.join(PROVIDERS)}"
        )

    async def aclose(self) -> None:
        """Close every SDK client this process opened."""
        for client in self._clients.values():
            if isinstance(client, SupportsAclose):
                await client.aclose()
        self._clients.clear()
