"""The Helm chart, rendered by Helm's own engine (helm-python-sdk), linted,
validated against the Kubernetes schemas, and run: the scheduler, the
projector and the lane workers as separate processes with exactly the args
and env the chart gives their containers, against one nats-server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from blackboard.engine.worker import consumer_name
from blackboard.log import roles
from blackboard.log.server import EmbeddedServer
from blackboard.log.subjects import matches
from tests.deploy.nats_chart import nats_conf, nats_env, nats_values, permissions
from tests.e2e.test_cli_basics import bb
from tests.waiting import bb_status_until, until

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "blackboard"
EXTERNAL = {
    "nats": {"enabled": False},
    "externalNats": {
        "url": "nats://nats.example:4222",
        "monitoringEndpoint": "nats.example:8222",
    },
}


def render(
    values: dict[str, Any] | None = None, name: str = "rel", namespace: str = "bb"
) -> list[dict[str, Any]]:
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values or {}, name=name, namespace=namespace)
    return [d for text in out.values() for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(c, dict)
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def validate(docs: list[dict[str, Any]]) -> None:
    for d in docs:
        if d["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: its fields are checked below
        kubernetes_validate.validate(d, "1.30", strict=True)


def test_default_values_render_valid_objects():
    docs = render()
    validate(docs)
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {
        "rel-blackboard-scheduler",
        "rel-blackboard-projector",
        "rel-blackboard-worker-frontier",
        "rel-blackboard-worker-local",
    }
    assert deployments["rel-blackboard-scheduler"]["spec"]["replicas"] == 2
    projector = deployments["rel-blackboard-projector"]
    assert projector["spec"]["replicas"] == 1
    assert projector["spec"]["strategy"]["type"] == "Recreate"
    assert "rel-blackboard-projector" in by_kind(docs, "PersistentVolumeClaim")
    for d in deployments.values():
        c = container(d)
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["resources"]["requests"]
        assert c["securityContext"]["runAsNonRoot"] is True
        env = env_of(c)
        assert env["BB_HEALTH_PORT"] == "8080"
        assert env["BB_NATS_URL"] == "nats://rel-nats:4222"
        assert env["BB_NATS_REPLICAS"] == "3"
        assert env["BB_NATS_PASSWORD"]["secretKeyRef"]["name"] == "blackboard-nats-auth"
    workers = [d for n, d in deployments.items() if "worker" in n]
    for w in workers:
        env = env_of(container(w))
        assert (
            env["ANTHROPIC_API_KEY"]["secretKeyRef"]["name"]
            == "rel-blackboard-api-keys"
        )
        assert env["BB_NATS_USER"] == "worker"
    assert "ANTHROPIC_API_KEY" not in env_of(
        container(deployments["rel-blackboard-scheduler"])
    )
    assert by_kind(docs, "NetworkPolicy")


def test_keda_scales_the_local_lane_on_the_consumer_the_code_creates():
    (so,) = by_kind(render(), "ScaledObject").values()
    assert so["spec"]["scaleTargetRef"]["name"] == "rel-blackboard-worker-local"
    assert so["spec"]["minReplicaCount"] >= 1
    assert so["spec"]["maxReplicaCount"] == 20
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    meta = trigger["metadata"]
    assert meta["stream"] == "BB_WORK"
    assert meta["consumer"] == consumer_name("local")
    # The NATS chart's headless Service: the plain one has no 8222 by default,
    # and only under the headless one does <pod>.<endpoint> resolve.
    assert (
        meta["natsServerMonitoringEndpoint"]
        == "rel-nats-headless.bb.svc.cluster.local:8222"
    )
    assert meta["account"] == "$G"  # the chart's users: no `accounts` block
    assert "useHttps" not in meta
    assert {"account", "lagThreshold"} <= set(meta)
    # KEDA's HPA owns the scaled lane's replica count, the others keep theirs.
    workers = by_kind(render(), "Deployment")
    assert "replicas" not in workers["rel-blackboard-worker-local"]["spec"]
    assert workers["rel-blackboard-worker-frontier"]["spec"]["replicas"] == 1
    unscaled = by_kind(render({"keda": {"enabled": False}}), "Deployment")
    assert unscaled["rel-blackboard-worker-local"]["spec"]["replicas"] == 1


def test_keda_endpoint_follows_the_nats_charts_names_and_settings():
    def trigger(values: dict[str, Any], name: str = "rel") -> dict[str, str]:
        (so,) = by_kind(render(values, name, "ns"), "ScaledObject").values()
        meta: dict[str, str] = so["spec"]["triggers"][0]["metadata"]
        return meta

    # The NATS chart's fullname drops "-nats" when the release name has it.
    assert trigger({}, name="my-nats")["natsServerMonitoringEndpoint"] == (
        "my-nats-headless.ns.svc.cluster.local:8222"
    )
    scheduler = by_kind(render({}, "my-nats", "ns"), "Deployment")[
        "my-nats-blackboard-scheduler"
    ]
    assert env_of(container(scheduler))["BB_NATS_URL"] == "nats://my-nats:4222"
    custom = trigger(
        {
            "nats": {
                "fullnameOverride": "queue",
                "config": {
                    "monitor": {"port": 9222, "tls": {"enabled": True}},
                    "cluster": {"routeURLs": {"k8sClusterDomain": "corp.local"}},
                },
            }
        }
    )
    assert custom["natsServerMonitoringEndpoint"] == (
        "queue-headless.ns.svc.corp.local:9222"
    )
    assert custom["useHttps"] == "true"
    with pytest.raises(helm.HelmError, match=r"config\.monitor\.enabled"):
        trigger({"nats": {"config": {"monitor": {"enabled": False}}}})
    with pytest.raises(helm.HelmError, match="serverNamePrefix"):
        trigger({"nats": {"config": {"serverNamePrefix": "east-"}}})


def test_custom_values_three_lanes_vllm_external_nats():
    values = {
        **EXTERNAL,
        "scripted": True,
        "streams": {"replicas": 1},
        "lanes": {
            "frontier": {
                "replicas": 1,
                "concurrency": 2,
                "resources": {"requests": {"cpu": "100m"}},
            },
            "local": {
                "replicas": 2,
                "concurrency": 32,
                "resources": {"requests": {"cpu": "100m"}},
            },
            "bulk": {
                "replicas": 3,
                "concurrency": 64,
                "resources": {"requests": {"cpu": "1"}},
            },
        },
        "vllm": {"enabled": True, "gpus": 2},
        "keda": {"maxReplicas": 50},
        "natsAuth": {"enabled": False},
        "scheduler": {"snapshotEvery": 20000},
    }
    docs = render(values)
    validate(docs)
    deployments = by_kind(docs, "Deployment")
    bulk = container(deployments["rel-blackboard-worker-bulk"])
    assert bulk["args"] == ["worker", "--lane", "bulk", "--concurrency", "64"]
    assert deployments["rel-blackboard-worker-bulk"]["spec"]["replicas"] == 3
    vllm = container(deployments["rel-blackboard-vllm"])
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert "rel-blackboard-vllm" in by_kind(docs, "Service")
    env = env_of(bulk)
    assert env["BB_LOCAL_BASE_URL"] == "http://rel-blackboard-vllm:8000/v1"
    assert env["BB_NATS_URL"] == "nats://nats.example:4222"
    assert env["BB_SCRIPTED"] == "1" and env["BB_NATS_REPLICAS"] == "1"
    assert "BB_NATS_USER" not in env
    scheduler = env_of(container(deployments["rel-blackboard-scheduler"]))
    assert scheduler["BB_SNAPSHOT_EVERY"] == "20000"
    assert "BB_SNAPSHOT_EVERY" not in env  # the scheduler's alone
    (so,) = by_kind(docs, "ScaledObject").values()
    assert so["spec"]["maxReplicaCount"] == 50
    assert (
        so["spec"]["triggers"][0]["metadata"]["natsServerMonitoringEndpoint"]
        == "nats.example:8222"
    )


def test_external_nats_needs_a_url():
    with pytest.raises(helm.HelmError, match=r"externalNats\.url is required"):
        render({"nats": {"enabled": False}})


def test_lint_finds_no_error():
    report = helm.lint(str(CHART), EXTERNAL, strict=False)
    assert report["errors"] == []
    severe = [m for m in report["messages"] if m["severity"] >= 3]
    assert severe == []
    # Offline, the NATS dependency is not vendored (`helm dependency build`).
    warnings = [m["error"] for m in report["messages"] if m["severity"] == 2]
    assert all("dependencies: nats" in w for w in warnings)


# --- the NATS roles ------------------------------------------------------------

STREAMS = (
    "BB_EVENTS",
    "BB_WORK",
    "OBJ_bb_blobs",
    "KV_bb_locks",
    "KV_bb_limits",
    "OBJ_bb_snapshots",
)
GUARDED = {
    **{f"$JS.API.STREAM.{op}.{s}": "" for op in ("DELETE", "PURGE") for s in STREAMS},
    **{f"$JS.API.STREAM.MSG.DELETE.{s}": "" for s in STREAMS},
    **{f"$JS.API.STREAM.UPDATE.{s}": "" for s in STREAMS},
    "$JS.API.STREAM.UPDATE.BB_EVENTS": "scheduler",  # moves the older layout
    "$JS.API.STREAM.CREATE.KV_bb_locks": "scheduler",  # its lease
    "$JS.API.CONSUMER.DELETE.BB_WORK.bb-local": "",
    "$JS.API.CONSUMER.DELETE.BB_EVENTS.bb-projector": "projector",  # its own
    "$JS.API.CONSUMER.LEADER.STEPDOWN.BB_WORK.bb-local": "",
    "$JS.API.ACCOUNT.PURGE.$G": "",
    "bb.work.local": "scheduler",  # only dispatched work reaches a lane
    "$KV.bb_locks.scheduler": "scheduler",
    "$JS.API.STREAM.CREATE.KV_bb_limits": "worker",  # the fleet's limits
    "$KV.bb_limits.rate.openai.gpt-5": "worker",
    "$KV.bb_limits.breaker.openai.gpt-5": "worker",
    # The scheduler's snapshots: only it writes them, and replacing one
    # purges the old one's chunks.
    "$JS.API.STREAM.CREATE.OBJ_bb_snapshots": "scheduler",
    "$JS.API.STREAM.PURGE.OBJ_bb_snapshots": "scheduler",
    "$O.bb_snapshots.M.c2NoZWR1bGVy": "scheduler",  # base64url("scheduler")
}
"""Subjects that delete, purge, reconfigure or take over, and the one role
that may publish each ("": none)."""


def test_each_nats_role_may_publish_exactly_its_event_kinds():
    perms = permissions(nats_values())
    assert set(perms) == set(roles.WRITES)
    for role, p in perms.items():
        kinds = {s for s in p["publish"] if s.startswith(("bb.in.evt.", "bb.evt."))}
        assert kinds == roles.event_subjects(role), role
    # What a human decides is written by an operator only; a goal ends by the
    # scheduler only (a worker cannot declare it done).
    for kind in ("approval_granted", "approval_denied", "goal_resumed"):
        assert roles.writers(kind) == {"operator"}, kind
    assert roles.writers("goal_cancelled") == {"operator"}
    assert roles.writers("goal_completed") == roles.writers("goal_failed")
    assert roles.writers("goal_completed") == {"scheduler"}
    assert roles.writers("goal_submitted") == {"operator", "submitter"}


def test_no_nats_role_may_delete_purge_or_take_over_what_it_does_not_own():
    perms = permissions(nats_values())
    for role, p in perms.items():
        allowed = {s for s in GUARDED if any(matches(a, s) for a in p["publish"])}
        assert allowed == {s for s, owner in GUARDED.items() if owner == role}, role
    # Readers subscribe to the public subjects; a worker only to cancellations.
    assert "bb.evt.>" in perms["reader"]["subscribe"]
    assert set(perms["worker"]["subscribe"]) == {
        "_INBOX.>",
        "bb.evt.*.*.goal_cancelled",
    }


# --- the chart's processes, for real ------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
@pytest.mark.parametrize("partitions", [1, 2])
def test_processes_with_the_charts_args_and_env_complete_a_goal(
    tmp_path, monkeypatch, partitions
):
    values = {
        **EXTERNAL,
        "scripted": True,
        "streams": {"replicas": 1},
        "scheduler": {"partitions": partitions},
    }
    docs = render(values)
    secrets = {name: d["stringData"] for name, d in by_kind(docs, "Secret").items()}
    users = secrets["blackboard-nats-auth"]
    # The NATS config the chart gives its NATS: each process below connects
    # as its role and may do only what that role may.
    nats = nats_values(values)
    for var, value in nats_env(nats, docs).items():
        monkeypatch.setenv(var, value)
    server = EmbeddedServer(tmp_path / "nats", config=nats_conf(nats))
    server.start()
    procs: list[subprocess.Popen[bytes]] = []
    health: dict[str, int] = {}
    try:
        for name, d in sorted(by_kind(docs, "Deployment").items()):
            c = container(d)
            data = tmp_path / name
            data.mkdir()
            env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
            for e in c["env"]:
                if "value" in e:
                    env[e["name"]] = e["value"]
                else:
                    ref = e["valueFrom"]["secretKeyRef"]
                    env[e["name"]] = secrets[ref["name"]][ref["key"]]
            # What differs on one machine: the server's address, the paths,
            # and a port per process (in the cluster each pod has its own).
            env["BB_NATS_URL"] = server.url
            env["BB_DATA_DIR"] = str(data)
            health[name] = free_port()
            env["BB_HEALTH_PORT"] = str(health[name])
            args = [a.replace("/data", str(data)) for a in c["args"]]
            with (tmp_path / f"{name}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "blackboard.cli", *args],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=ROOT,
                    )
                )
        for name, port in health.items():
            _until(lambda p=port: _get(p, "/readyz") == 200)
            assert _get(port, "/healthz") == 200, name

        def cli(role: str) -> dict[str, str]:
            return {
                "PATH": "/usr/bin:/bin",
                "BB_NATS_URL": server.url,
                "BB_NATS_USER": role,
                "BB_NATS_PASSWORD": users[role],
                "BB_DATA_DIR": str(tmp_path / "cli"),
            }

        reader = cli("reader")
        r = bb(["demo", "--detach", "--json"], cli("operator"))
        assert r.returncode == 0, r.stderr
        goal = json.loads(r.stdout)["goal_id"]
        status = bb_status_until(reader, goal, timeout_s=90)
        assert status["status"] == "done", status.get("reason")
        # The projector answers SQL from its volume.
        _until(lambda: _tasks_projected(reader, goal) == 30)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        server.stop()
    logs = "".join(f.read_text() for f in tmp_path.glob("*.log"))
    assert "Traceback" not in logs
    # Every publish the goal took was one its writer's role allows.
    assert "Violation" not in server.log_path.read_text()


def _tasks_projected(env: dict[str, str], goal: str) -> int:
    r = bb(
        [
            "sql",
            f"select count(*) as n from tasks where goal_id = '{goal}' and status = 'done'",
            "--format",
            "json",
        ],
        env,
    )
    return int(json.loads(r.stdout)[0]["n"]) if r.returncode == 0 else -1


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}{path}", timeout=2
        ) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def _until(predicate: Any, timeout: float = 60) -> None:
    until(predicate, timeout_s=timeout)


def test_pods_spread_over_nodes_and_drains_take_one_at_a_time():
    """On the cluster the chart defaults to: R3 streams on three NATS pods,
    one per Kubernetes node, a drain taking one NATS pod, one scheduler (of
    the leader and its standby) and one worker of a lane at a time."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    nats = values["nats"]
    assert nats["config"]["cluster"]["replicas"] == 3
    assert values["streams"]["replicas"] == 3
    assert nats["podDisruptionBudget"]["enabled"] is True
    assert nats["podTemplate"]["topologySpreadConstraints"] == {
        "kubernetes.io/hostname": {"maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"}
    }

    docs = render()
    validate(docs)
    deployments = by_kind(docs, "Deployment")
    budgets = by_kind(docs, "PodDisruptionBudget")
    scheduler = deployments["rel-blackboard-scheduler"]
    assert budgets["rel-blackboard-scheduler"]["spec"]["minAvailable"] == 1
    # The KEDA-scaled lane has a budget; a lane of one pod does not need one.
    assert budgets["rel-blackboard-worker-local"]["spec"]["maxUnavailable"] == 1
    assert "rel-blackboard-worker-frontier" not in budgets
    for name, budget in budgets.items():
        pods = deployments[name]["spec"]["template"]["metadata"]["labels"]
        selector = budget["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pods.items(), name  # it counts its own pods
        assert selector == deployments[name]["spec"]["selector"]["matchLabels"]
    for name, d in deployments.items():
        if name == "rel-blackboard-projector":
            continue  # one pod with its volume: nothing to spread
        pod = d["spec"]["template"]
        [spread] = pod["spec"]["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
        mine = spread["labelSelector"]["matchLabels"]
        assert mine.items() <= pod["metadata"]["labels"].items(), name
        assert mine == d["spec"]["selector"]["matchLabels"], name

    hard = by_kind(render({"scheduling": {"spread": "hard"}}), "Deployment")
    [spread] = hard["rel-blackboard-scheduler"]["spec"]["template"]["spec"][
        "topologySpreadConstraints"
    ]
    assert spread["whenUnsatisfiable"] == "DoNotSchedule"
    off = render(
        {
            "scheduling": {"spread": "off", "podDisruptionBudgets": False},
            "scheduler": {"replicas": 1},
        }
    )
    validate(off)
    assert by_kind(off, "PodDisruptionBudget") == {}
    assert all(
        "topologySpreadConstraints" not in d["spec"]["template"]["spec"]
        for d in by_kind(off, "Deployment").values()
    )
    assert scheduler["spec"]["replicas"] == 2


def test_each_scheduler_partition_is_a_deployment_with_its_own_budget():
    docs = render({"scheduler": {"partitions": 2}})
    validate(docs)
    deployments = by_kind(docs, "Deployment")
    budgets = by_kind(docs, "PodDisruptionBudget")
    assert "rel-blackboard-scheduler" not in deployments
    for i in (0, 1):
        name = f"rel-blackboard-scheduler-{i}"
        d = deployments[name]
        c = container(d)
        assert c["args"] == ["scheduler", "--partition", str(i)]
        assert env_of(c)["BB_PARTITIONS"] == "2"
        assert d["spec"]["replicas"] == 2  # a leader and a standby each
        selector = d["spec"]["selector"]["matchLabels"]
        assert selector["blackboard.dev/partition"] == str(i)
        assert budgets[name]["spec"]["selector"]["matchLabels"] == selector
        [spread] = d["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert spread["labelSelector"]["matchLabels"] == selector
    # One partition: the Deployment of before, its selector unchanged.
    one = by_kind(render(), "Deployment")["rel-blackboard-scheduler"]
    assert "blackboard.dev/partition" not in one["spec"]["selector"]["matchLabels"]
    assert container(one)["args"] == ["scheduler"]
    # The roles allow the partitions streams the chart can ask for, no more.
    scheduler = permissions(nats_values())["scheduler"]["publish"]
    for n in (2, 3, 4):
        assert f"$JS.API.STREAM.CREATE.BB_EVENTS_P{n}" in scheduler
    with pytest.raises(Exception, match="give 1 to 4"):
        render({"scheduler": {"partitions": 5}})
