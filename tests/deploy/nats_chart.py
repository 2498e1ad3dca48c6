"""The NATS server as the chart configures it: its users, their permissions,
their passwords.

Offline the NATS subchart is not vendored (`helm dependency build` needs the
network), so its ConfigMap cannot be rendered. What this chart gives it is in
its values as Helm merges them: `nats.config.merge` and `nats.container.env`.
The NATS chart writes `config.merge` into nats.conf as JSON and turns each
`"<< $VAR >>"` into a bare `$VAR`, which nats-server reads from its
environment (`nats.formatConfig`, nats-io/k8s helm/charts/nats/templates/
_helpers.tpl); the container's env maps those variables to the chart's Secret.
These helpers do the same, so a test's nats-server runs the exact block a
release would.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm

CHART = Path(__file__).resolve().parents[2] / "helm" / "blackboard"
Json = dict[str, Any]


def nats_values(values: Json | None = None) -> Json:
    """The subchart's values, as Helm merges the chart's defaults and ``values``."""
    merged = helm.Chart.load(str(CHART)).merge_values(values or {})
    nats: Json = merged["nats"]
    return nats


def nats_conf(nats: Json) -> str:
    """``config.merge`` as the NATS chart writes it into nats.conf.

    Pretty-printed JSON, as the chart's ``toPrettyRawJson`` (its greedy
    pattern relies on one value a line); ``key: <JSON>`` per key rather than
    one object, so that it goes after a test server's other settings.
    """
    return "".join(
        f"{key}: "
        + re.sub(r'"<<\s+(.*)\s+>>"', r"\1", json.dumps(value, indent=2))
        + "\n"
        for key, value in nats["config"]["merge"].items()
    )


def nats_env(nats: Json, docs: list[Json]) -> dict[str, str]:
    """The NATS container's variables, valued from the rendered Secrets."""
    secrets = {
        d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"
    }
    env: dict[str, str] = {}
    for var, spec in nats["container"]["env"].items():
        ref = spec["valueFrom"]["secretKeyRef"]
        env[var] = secrets[ref["name"]][ref["key"]]
    return env


def permissions(nats: Json) -> dict[str, Json]:
    """Each user's permissions, by user name."""
    users = nats["config"]["merge"]["authorization"]["users"]
    return {u["user"]: u["permissions"] for u in users}
