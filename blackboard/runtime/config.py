"""Settings: ``bb.toml`` (or ``$BB_CONFIG``) overlaid by environment variables.

Every process reads the same settings the same way, so a deployment is
configured once. Environment variables win over the file; the file wins over
the defaults below.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from blackboard.engine import policy
from blackboard.engine.policy import ALLOW_ALL, PolicySet
from blackboard.errors import ConfigError
from blackboard.log.events import Limits
from blackboard.log.ports import StoreSettings
from blackboard.log.server import check_sync_interval
from blackboard.log.subjects import check_token


class NatsSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where NATS is and how the streams are laid out."""

    url: str | None = None
    prefix: str = "bb"
    replicas: int = 1
    sync_interval: str | None = None
    """The embedded server's JetStream ``sync_interval`` (``bb up``):
    ``always`` fsyncs each write before acknowledging it; None is the
    server's default (2 minutes). A server of your own has its own setting."""
    blob_threshold: int = 256 * 1024
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None
    nkey_seed: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


PROVIDERS = ("anthropic", "openai", "openai-compatible", "scripted")
"""Provider kinds a lane or a fallback may name."""


class ModelRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A model of another provider, as a fallback: ``{provider, model, base_url}``."""

    provider: str
    model: str
    base_url: str | None = None


class LaneSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One model lane: which provider and model serve it, and how many at once.

    ``fallbacks`` are tried in order when the lane's model keeps failing
    retryably: a plain name is another model of the same provider, a table
    names another provider. ``rpm``/``tpm`` limit the requests and tokens per
    minute of each model of the lane's provider in the chain, shared by every
    worker process of the deployment (agents/fleet.py).
    """

    provider: str = "scripted"
    model: str = "scripted"
    base_url: str | None = None
    api_key_env: str | None = None
    """The variable holding the key (default: the provider's usual one)."""
    fallbacks: list[str | ModelRef] = msgspec.field(default_factory=list)
    concurrency: int = 8
    max_ack_pending: int = 1000
    rpm: int | None = None
    tpm: int | None = None
    max_retries: int = 2
    """Retries of one model before the next of the chain takes over."""
    timeout_s: float = 120.0
    tools: list[str] = msgspec.field(default_factory=lambda: ["*"])
    """Glob patterns of the tools this lane's agents are offered
    (``["workspace.*", "orders.*"]``); ``[]`` offers none."""
    escalate_to: str | None = None
    """The lane an ``execute`` task's work goes to when it is still not what
    the task promised after one redo (default: the task fails)."""
    max_tokens: int | None = None
    """A cap on every call's ``max_tokens`` on this lane (a small model's
    context, or its speed); a prompt asking for fewer keeps its own."""
    breaker_failures: int = 5
    """Retryable failures in a row of one model (across the fleet) that open
    its circuit breaker: calls then skip it for the next model of the chain
    until ``breaker_cooldown_s`` has passed and one probe call succeeds.
    0: no breaker."""
    breaker_cooldown_s: float = 30.0
    """How long an open breaker skips its model before one call probes it."""
    window: int = 64
    """Tasks of this lane the scheduler lets be ready or running at once; the
    rest wait in its ready set, where priority, age and tenant decide what
    goes next (``engine.dispatch``). Set it near the lane's workers' total
    concurrency: what is beyond it waits in the lane's queue in FIFO order.
    0: no window (everything ready goes out at once)."""


class McpServerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One MCP server: a command over stdio, or a URL over streamable HTTP."""

    command: str | None = None
    """The program to start (stdio); ``python`` means this interpreter."""
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    """Extra environment of the stdio process (the worker's own is inherited)."""
    cwd: str | None = None
    url: str | None = None
    """A streamable-HTTP endpoint (``http://host:port/mcp``)."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timeout_s: float = 30.0
    """Seconds one tool call may take before it fails (and is recorded so)."""

    def check(self, name: str) -> None:
        """Raise ConfigError unless exactly one transport is given."""
        if (self.command is None) == (self.url is None):
            raise ConfigError(
                f"[tools.mcp.{name}]: give either command (stdio) or url"
                " (streamable HTTP), not both or neither"
            )


class ToolSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where agents' tools come from: the workspace, Python, MCP servers."""

    workspace: bool = True
    """Offer the built-in workspace tools (read, write, list, search files)."""
    workspace_dir: str | None = None
    """Root of the per-goal workspaces (default ``<data_dir>/workspaces``)."""
    python: list[str] = msgspec.field(default_factory=list)
    """``module:attribute`` naming a function or a list of functions."""
    mcp: dict[str, McpServerSettings] = msgspec.field(default_factory=dict)
    """MCP servers by name; their tools are offered as ``name.tool``."""
    timeout_s: float = 120.0
    """Seconds any one tool call may take; past it the call fails (recorded,
    and the model is told), so a hung tool holds its task, not a worker slot
    for ever."""


class ApprovalSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which tasks wait for a human before they run."""

    task_types: list[str] = msgspec.field(default_factory=list)
    lanes: list[str] = msgspec.field(default_factory=list)


class EngineSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Leases, retries and the scheduler lock."""

    lease_s: float = 30.0
    max_attempts: int = 3
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    lock_ttl_s: float = 10.0
    aging_s: float = 60.0
    """Seconds of waiting that raise a ready task's priority by one."""
    on_deadline: Literal["halt", "fail"] = "halt"
    """A goal past its deadline halts (``bb resume --deadline`` goes on) or
    fails."""
    preempt: Literal["off", "requeue"] = "off"
    """``requeue``: when a lane's window is full and better work waits, a task
    dispatched to it that no worker has claimed yet gives its slot up and
    waits again (``TaskPreempted``). A running task is never touched."""
    snapshot_every: int = 50_000
    """Events between snapshots of the scheduler's fold, at least (and a
    quarter of the history: see engine/scheduler.py); a scheduler taking the
    lead starts from the latest one and reads only the log after it. 0: no
    snapshots."""
    partitions: int = 1
    """Scheduler partitions: each goal belongs to one (a hash of its id), and
    each partition has its own leader (``bb scheduler --partition``), reading
    only its goals' events. Every scheduler of a deployment must be given the
    same number."""


def _default_lanes() -> dict[str, LaneSettings]:
    return {
        "frontier": LaneSettings(
            provider="anthropic", model="claude-sonnet-4-5", concurrency=4
        ),
        "local": LaneSettings(
            provider="openai-compatible",
            model="qwen2.5-7b-instruct",
            base_url="http://localhost:8000/v1",
            concurrency=16,
        ),
    }


class TenantSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One tenant's share of the fleet."""

    weight: float = 1.0
    """Its share of each lane against other tenants' (2 gets twice 1's)."""
    max_in_flight: int | None = None
    """A quota: at most this many of its tasks ready or running on any one
    lane; the rest wait (never dropped). ``None``: no quota."""
    tokens_per_minute: int | None = None
    """A quota: while its calls of the last 60 s used this many tokens, its
    work waits (see :mod:`blackboard.engine.quota`). ``None``: none."""
    usd_per_day: float | None = None
    """A quota: once its calls since midnight UTC cost this many dollars, its
    work waits for the next day. ``None``: none."""


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """All settings of a Blackboard process."""

    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    data_dir: str = ".bb"
    limits: Limits = Limits(
        max_depth=6,
        max_tasks=1000,
        max_tokens=5_000_000,
        max_cost_usd=50.0,
        max_turns=20,
    )
    lanes: dict[str, LaneSettings] = msgspec.field(default_factory=_default_lanes)
    approvals: ApprovalSettings = msgspec.field(default_factory=ApprovalSettings)
    engine: EngineSettings = msgspec.field(default_factory=EngineSettings)
    prices: dict[str, dict[str, float]] = msgspec.field(default_factory=dict)
    scripted: bool = False
    script: str | None = None
    redact: list[str] = msgspec.field(default_factory=list)
    tools: ToolSettings = msgspec.field(default_factory=ToolSettings)
    tenants: dict[str, TenantSettings] = msgspec.field(default_factory=dict)
    """``[tenants.<name>]``: weights; a tenant not named weighs 1."""
    policy: PolicySet = ALLOW_ALL
    """``[policy]`` of the file, or the file ``$BB_POLICY`` names."""


def _policy(data: dict[str, Any], file: Path, env: Mapping[str, str]) -> PolicySet:
    """The policy: ``$BB_POLICY``'s file, else the config file's ``[policy]``.

    A ``BB_POLICY`` file holds the policy itself (``default``, ``[[rules]]``)
    or a ``[policy]`` table; it replaces the config file's, as environment
    variables override the file everywhere else.
    """
    named = env.get("BB_POLICY")
    if named:
        path = Path(named)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"BB_POLICY: policy file {path} not found") from e
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"BB_POLICY: cannot read {path}: {e}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"BB_POLICY: {path} is not valid TOML: {e}") from e
        return policy.parse(raw.get("policy", raw), source=str(path))
    if "policy" in data:
        return policy.parse(data["policy"], source=f"{file} [policy]")
    return ALLOW_ALL


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Translate the documented environment variables into a settings dict."""
    out: dict[str, Any] = {}
    nats: dict[str, Any] = {}
    if env.get("BB_NATS_URL"):
        nats["url"] = env["BB_NATS_URL"]
    if env.get("BB_PREFIX"):
        nats["prefix"] = env["BB_PREFIX"]
    if env.get("BB_NATS_REPLICAS"):
        nats["replicas"] = int(env["BB_NATS_REPLICAS"])
    if env.get("BB_NATS_SYNC_INTERVAL"):
        nats["sync_interval"] = env["BB_NATS_SYNC_INTERVAL"]
    for key in (
        "user",
        "password",
        "token",
        "creds",
        "nkey_seed",
        "tls_ca",
        "tls_cert",
        "tls_key",
    ):
        if env.get(f"BB_NATS_{key.upper()}"):
            nats[key] = env[f"BB_NATS_{key.upper()}"]
    if nats:
        out["nats"] = nats
    if env.get("BB_DATA_DIR"):
        out["data_dir"] = env["BB_DATA_DIR"]
    if env.get("BB_SCRIPTED", "").lower() in ("1", "true", "yes"):
        out["scripted"] = True
    if env.get("BB_SCRIPT"):
        out["script"] = env["BB_SCRIPT"]
    engine: dict[str, Any] = {}
    if env.get("BB_LEASE_SECONDS"):
        engine["lease_s"] = float(env["BB_LEASE_SECONDS"])
    if env.get("BB_LOCK_TTL_SECONDS"):
        engine["lock_ttl_s"] = float(env["BB_LOCK_TTL_SECONDS"])
    if env.get("BB_SNAPSHOT_EVERY"):
        engine["snapshot_every"] = int(env["BB_SNAPSHOT_EVERY"])
    if env.get("BB_PARTITIONS"):
        engine["partitions"] = _int(env["BB_PARTITIONS"], "BB_PARTITIONS")
    if engine:
        out["engine"] = engine
    lanes: dict[str, dict[str, Any]] = {}
    if env.get("BB_FRONTIER_MODEL"):
        lanes.setdefault("frontier", {})["model"] = env["BB_FRONTIER_MODEL"]
    if env.get("BB_LOCAL_MODEL"):
        lanes.setdefault("local", {})["model"] = env["BB_LOCAL_MODEL"]
    if env.get("BB_LOCAL_BASE_URL"):
        lanes.setdefault("local", {})["base_url"] = env["BB_LOCAL_BASE_URL"]
    if lanes:
        out["lanes"] = lanes
    return out


MAX_PARTITIONS = 64
"""The most scheduler partitions: each is a leader lock, a snapshot and a
reader of the partitions stream."""


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: give a whole number") from None


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(
    path: Path | str | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Load settings from a TOML file and the environment.

    The file is ``path``, else ``$BB_CONFIG``, else ``./bb.toml`` if present.
    A malformed file or an unknown key raises ConfigError naming it.
    """
    env = os.environ if env is None else env
    base: dict[str, Any] = msgspec.to_builtins(Settings())
    file = Path(path) if path else Path(env.get("BB_CONFIG", "bb.toml"))
    data: dict[str, Any] = {}
    if path is not None or env.get("BB_CONFIG") or file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"config file {file} not found") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {file} is not valid TOML: {e}") from e
        base = _merge(base, data)
    base.pop("policy", None)
    rules = _policy(data, file, env)
    base = _merge(base, _env_overrides(env))
    if "compensate_on_failure" in base.get("tools", {}):
        raise ConfigError(
            "[tools] compensate_on_failure is now part of the policy: [policy]"
            ' on_failure = "compensate"'
        )
    try:
        settings = msgspec.convert(base, Settings)
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid settings: {e}") from e
    settings.policy = rules
    try:
        check_sync_interval(settings.nats.sync_interval)
    except ConfigError as e:
        raise ConfigError(f"[nats] sync_interval / BB_NATS_SYNC_INTERVAL: {e}") from e
    for rule in rules.rules:
        if rule.lane is not None and rule.lane not in settings.lanes:
            raise ConfigError(
                f"policy rule {rule.name!r}: lane = {rule.lane!r} is not a"
                f" configured lane ({', '.join(settings.lanes)})"
            )
    if not 1 <= settings.engine.partitions <= MAX_PARTITIONS:
        raise ConfigError(
            f"[engine] partitions = {settings.engine.partitions}: give 1 to"
            f" {MAX_PARTITIONS}"
        )
    if settings.engine.partitions > 1:
        rated = [
            name
            for name, t in settings.tenants.items()
            if t.tokens_per_minute is not None or t.usd_per_day is not None
        ]
        if rated:
            raise ConfigError(
                f"[tenants.{rated[0]}] tokens_per_minute / usd_per_day need one"
                " scheduler that sees every model call: they cannot be used with"
                f" [engine] partitions = {settings.engine.partitions}"
            )
    if settings.engine.snapshot_every < 0:
        raise ConfigError(
            f"[engine] snapshot_every = {settings.engine.snapshot_every}: give a"
            " number of events, or 0 for no snapshots"
        )
    for lane, lane_settings in settings.lanes.items():
        # A lane's name is the last token of its work subject.
        try:
            check_token(lane, "lane name", id_like=False)
        except ValueError as e:
            raise ConfigError(f"[lanes]: {e}") from e
        target = lane_settings.escalate_to
        if target is not None and (target == lane or target not in settings.lanes):
            others = ", ".join(n for n in settings.lanes if n != lane) or "none"
            raise ConfigError(
                f"[lanes.{lane}] escalate_to = {target!r}: name another"
                f" configured lane ({others})"
            )
        if lane_settings.breaker_failures < 0:
            raise ConfigError(
                f"[lanes.{lane}] breaker_failures = {lane_settings.breaker_failures}:"
                " give 0 (no breaker) or the failures in a row that open it"
            )
        if not lane_settings.breaker_cooldown_s > 0:
            raise ConfigError(
                f"[lanes.{lane}] breaker_cooldown_s must be above 0 seconds"
            )
        if lane_settings.window < 0:
            raise ConfigError(
                f"[lanes.{lane}] window = {lane_settings.window}: give 0 (no"
                " window) or how many tasks may be in flight at once"
            )
    for name, tenant in settings.tenants.items():
        if not tenant.weight > 0:
            raise ConfigError(f"[tenants.{name}] weight must be above 0")
        if tenant.max_in_flight is not None and tenant.max_in_flight < 1:
            raise ConfigError(f"[tenants.{name}] max_in_flight must be 1 or more")
        if tenant.tokens_per_minute is not None and tenant.tokens_per_minute < 1:
            raise ConfigError(f"[tenants.{name}] tokens_per_minute must be 1 or more")
        if tenant.usd_per_day is not None and not tenant.usd_per_day > 0:
            raise ConfigError(f"[tenants.{name}] usd_per_day must be above 0")
    if not settings.engine.aging_s > 0:
        raise ConfigError("[engine] aging_s must be above 0 seconds")
    for name, server in settings.tools.mcp.items():
        # A server's name is the first part of its tools' names.
        try:
            check_token(name, "MCP server name", id_like=False)
        except ValueError as e:
            raise ConfigError(f"[tools.mcp]: {e}") from e
        server.check(name)
    return settings


def store_settings(settings: Settings) -> StoreSettings:
    """The store's layout settings from the process settings."""
    return StoreSettings(
        prefix=settings.nats.prefix,
        replicas=settings.nats.replicas,
        blob_threshold=settings.nats.blob_threshold,
    )
