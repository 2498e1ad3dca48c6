"""KEDA's nats-jetstream scaler, ported step by step, against the chart as shipped.

The chart is rendered; its ScaledObject's trigger metadata goes, unchanged,
into a Python port of KEDA's scaler; the scaler's HTTP requests go through an
emulation of the Kubernetes network the official NATS chart creates (its
Services, its pods' DNS names) onto a real 3-node nats-server cluster on
loopback that runs the chart's NATS settings: its users (the chart's Secret),
``no_advertise``, server names equal to pod names. The work stream and the
lane consumer are R3 and made by the engine's own code, with work piled up and
some of it in flight; the lag KEDA computes must equal that backlog.
"""

from __future__ import annotations

import asyncio
import copy
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from blackboard.engine.worker import Worker, WorkerSettings, consumer_name
from blackboard.log import codec, subjects
from blackboard.log.server import EmbeddedCluster
from blackboard.log.store import JetStreamEventStore, StoreSettings, connect
from tests.contract.test_cluster import eventually
from tests.deploy.nats_chart import nats_conf, nats_env, nats_values
from tests.deploy.test_chart import CHART, by_kind, render

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from nats.aio.client import Client as NatsClient

RELEASE, NAMESPACE = "rel", "bb"  # what test_chart.render() uses

# --- KEDA's scaler, in Python -------------------------------------------------

pytestmark = pytest.mark.integration


KEDA_SOURCE = (
    "kedacore/keda v2.20.2 (68a5b5028f35b22d50597c69819ab32c4e92f21a), "
    "pkg/scalers/nats_jetstream_scaler.go"
)

Json = dict[str, Any]


class ScalerError(Exception):
    """What the Go scaler returns as ``err`` (KEDA then reports no metric)."""


def go_query_encode(params: dict[str, str]) -> str:
    """Go's url.Values.Encode(): keys sorted, QueryEscape on keys and values."""
    return "&".join(
        f"{urllib.parse.quote_plus(k)}={urllib.parse.quote_plus(v)}"
        for k, v in sorted(params.items())
    )


class NatsJetStreamScaler:
    """A port of ``natsJetStreamScaler`` (see KEDA_SOURCE for file and commit).

    Each method names the Go function it follows; the order of requests, the
    URLs built, the caching of the leader and the errors are the Go code's.
    ``http_get`` plays ``s.httpClient.Do`` plus ``json.NewDecoder(...).Decode``.
    """

    def __init__(self, trigger: dict[str, str], http_get: Callable[[str], Json]):
        # parseNATSJetStreamMetadata (fields of natsJetStreamMetadata).
        self.account = trigger.get("account", "")
        self.account_id = trigger.get("accountID", "")
        self.stream_name = trigger["stream"]
        self.consumer = trigger["consumer"]
        self.lag_threshold = int(trigger.get("lagThreshold", "10"))
        self.activation_lag_threshold = int(trigger.get("activationLagThreshold", "0"))
        self.use_https = trigger.get("useHttps", "false").lower() in ("true", "1")
        endpoint = trigger["natsServerMonitoringEndpoint"]
        if not self.account and not self.account_id:
            raise ScalerError("no account name or id given")
        if not self.account_id:
            self.account_id = self.account
        self.monitoring_url = self.get_monitoring_url(
            self.use_https, endpoint, self.account_id
        )
        self.consumer_leader = ""
        self.monitoring_leader_url = ""
        self.cluster_size = 0
        # NewNATSJetStreamScaler: stream: &streamDetail{} (empty, not nil).
        self.stream: Json | None = {}
        self.http_get = http_get

    @staticmethod
    def get_monitoring_url(use_https: bool, endpoint: str, account_id: str) -> str:
        """getNATSJetStreamMonitoringURL."""
        scheme = "https" if use_https else "http"
        query = go_query_encode(
            {"acc": account_id, "consumers": "true", "config": "true"}
        )
        return f"{scheme}://{endpoint}/jsz?{query}"

    def get_metrics_and_activity(self) -> tuple[int, bool]:
        """GetMetricsAndActivity: (lag, active) or ScalerError."""
        self.get_monitoring_data(self.monitoring_url)
        if self.stream is None:
            raise ScalerError("stream not found")
        total_lag = self.get_max_msg_lag()
        return total_lag, total_lag > self.activation_lag_threshold

    def get_monitoring_data(self, monitoring_url: str) -> None:
        """getNATSJetstreamMonitoringData."""
        cached_consumer_leader = self.consumer_leader
        url = self.monitoring_leader_url or monitoring_url
        resp = self.http_get(url)
        consumer_found = self.set_monitoring_data(resp, "")
        if cached_consumer_leader and not consumer_found:
            self.invalidate_cached_monitoring_data()
        if (
            consumer_found
            and cached_consumer_leader
            and cached_consumer_leader == self.consumer_leader
        ):
            return
        if self.cluster_size > 1:
            server = self.http_get(self.get_monitoring_server_url(""))
            is_node_advertised = True
            cluster_urls = list(server.get("connect_urls") or [])
            if not cluster_urls:
                is_node_advertised = False
                cluster_urls = list((server.get("cluster") or {}).get("urls") or [])
            for cluster_url in cluster_urls:
                if is_node_advertised:
                    node_hostname = cluster_url.split(":")[0]
                    info = self.http_get(self.get_monitoring_server_url(node_hostname))
                    node = info.get("server_name", "")
                    node_url = self.get_monitoring_node_url(node_hostname)
                else:
                    node = cluster_url.split(".")[0]
                    node_url = self.get_monitoring_node_url_by_node(node)
                resp = self.http_get(node_url)
                for account in resp.get("account_details") or []:
                    if not self.is_account(account):
                        continue
                    for stream in account.get("stream_detail") or []:
                        if stream.get("name") != self.stream_name:
                            continue
                        for consumer in stream.get("consumer_detail") or []:
                            leader = (consumer.get("cluster") or {}).get("leader", "")
                            if consumer.get("name") == self.consumer and node == leader:
                                self.set_monitoring_data(resp, node_url)
                                return
            raise ScalerError(f"leader node not found for consumer {self.consumer}")

    def set_monitoring_data(self, resp: Json, leader_url: str) -> bool:
        """setNATSJetStreamMonitoringData."""
        self.cluster_size = int((resp.get("meta_cluster") or {}).get("cluster_size", 0))
        for account in resp.get("account_details") or []:
            if not self.is_account(account):
                continue
            for stream in account.get("stream_detail") or []:
                if stream.get("name") == self.stream_name:
                    self.stream = stream
                    for consumer in stream.get("consumer_detail") or []:
                        if consumer.get("name") == self.consumer:
                            cluster = consumer.get("cluster") or {}
                            self.consumer_leader = cluster.get("leader", "")
                            if leader_url:
                                self.monitoring_leader_url = leader_url
                            return True
        return False

    def invalidate_cached_monitoring_data(self) -> None:
        """invalidateNATSJetStreamCachedMonitoringData."""
        self.consumer_leader = ""
        self.monitoring_leader_url = ""
        self.stream = None

    def get_monitoring_server_url(self, node_hostname: str) -> str:
        """getNATSJetStreamMonitoringServerURL."""
        js_url = urllib.parse.urlsplit(self.monitoring_url)
        host = js_url.netloc
        if node_hostname:
            host = node_hostname
            if js_url.port is not None:
                host = f"{host}:{js_url.port}"
        return f"{js_url.scheme}://{host}/varz"

    def get_monitoring_node_url(self, node_hostname: str) -> str:
        """getNATSJetStreamMonitoringNodeURL."""
        js_url = urllib.parse.urlsplit(self.monitoring_url)
        if js_url.port is not None:
            node_hostname = f"{node_hostname}:{js_url.port}"
        query = go_query_encode(dict(urllib.parse.parse_qsl(js_url.query)))
        return f"{js_url.scheme}://{node_hostname}{js_url.path}?{query}"

    def get_monitoring_node_url_by_node(self, node: str) -> str:
        """getNATSJetStreamMonitoringNodeURLByNode: <node>.<endpoint host:port>."""
        js_url = urllib.parse.urlsplit(self.monitoring_url)
        query = go_query_encode(dict(urllib.parse.parse_qsl(js_url.query)))
        return f"{js_url.scheme}://{node}.{js_url.netloc}{js_url.path}?{query}"

    def get_max_msg_lag(self) -> int:
        """getMaxMsgLag: num_pending + num_ack_pending of the consumer (2.20+)."""
        assert self.stream is not None
        for consumer in self.stream.get("consumer_detail") or []:
            if consumer.get("name") == self.consumer:
                return int(consumer.get("num_pending", 0)) + int(
                    consumer.get("num_ack_pending", 0)
                )
        raise ScalerError(
            f'consumer "{self.consumer}" not found in stream "{self.stream_name}"'
        )

    def is_account(self, account: Json) -> bool:
        """natsJetStreamMetadata.IsAccount."""
        return bool(
            account.get("id") == self.account_id or account.get("name") == self.account
        )


# --- the network the official NATS chart makes, on loopback -------------------


class KubeNetwork:
    """DNS and Services of the official NATS chart (nats-io/k8s, nats 1.2.x).

    What it encodes, from helm/charts/nats at tag nats-1.2.11:

    - templates/_helpers.tpl ``nats.fullname``: ``<release>-nats``; the pods of
      the StatefulSet are ``<fullname>-<i>``, its serviceName is the headless
      Service ``<fullname>-headless`` (files/stateful-set/stateful-set.yaml),
      so each pod is ``<pod>.<fullname>-headless.<ns>.svc.cluster.local``;
    - files/service.yaml: the Service ``<fullname>`` exposes the monitoring
      port only with ``service.ports.monitor.enabled`` (false in values.yaml);
      files/headless-service.yaml exposes it whenever
      ``config.monitor.enabled``;
    - files/config/cluster.yaml: ``no_advertise: true`` and the routes
      ``nats://<fullname>-<i>.<fullname>-headless:6222``, which /varz lists
      under ``cluster.urls``. On loopback the routes are 127.0.0.1 ports, so
      /varz's ``cluster.urls`` is given back as the chart's route hosts, in the
      same (node) order: the one rewrite of a server answer here.

    A Service's name reaches a different pod on each request (the scaler must
    not depend on which one answers first); ``first`` picks where to start.
    """

    def __init__(
        self,
        cluster: EmbeddedCluster,
        nats_values: Json,
        *,
        first: int = 0,
        service_monitor_port: bool = False,
    ) -> None:
        self.cluster = cluster
        self.fullname = f"{RELEASE}-nats"
        self.headless = f"{self.fullname}-headless"
        self.pods = [f"{self.fullname}-{i}" for i in range(len(cluster.nodes))]
        assert cluster.server_names == self.pods, "server_name is the pod name"
        monitor = nats_values["config"]["monitor"]
        self.monitor_port = int(monitor["port"]) if monitor["enabled"] else None
        self.service_ports = {4222}
        if self.monitor_port and service_monitor_port:
            self.service_ports.add(self.monitor_port)
        self.headless_ports = {4222} | (
            {self.monitor_port} if self.monitor_port else set()
        )
        self.next = first
        self.requests: list[str] = []

    def _names(self, name: str) -> list[str]:
        return [f"{name}.{NAMESPACE}.svc.cluster.local", f"{name}.{NAMESPACE}.svc"]

    def resolve(self, host: str, port: int) -> int:
        """The pod (node index) a connection to host:port reaches, or raise."""
        if host in self._names(self.fullname):
            pods, ports = list(range(len(self.pods))), self.service_ports
        elif host in self._names(self.headless):
            pods, ports = list(range(len(self.pods))), self.headless_ports
        else:
            pods = [
                i
                for i, pod in enumerate(self.pods)
                if host in self._names(f"{pod}.{self.headless}")
            ]
            ports = self.headless_ports | {6222}
            if not pods:
                raise ScalerError(f"dial tcp: lookup {host}: no such host")
        if port not in ports:
            raise ScalerError(f"dial tcp {host}:{port}: connect: connection refused")
        pod = pods[self.next % len(pods)] if len(pods) > 1 else pods[0]
        self.next += 1
        return pod

    def get(self, url: str) -> Json:
        """GET url as KEDA's HTTP client would, and decode the JSON body."""
        self.requests.append(url)
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        pod = self.resolve(parts.hostname, parts.port)
        real = f"{self.cluster.monitor_urls[pod]}{parts.path}?{parts.query}"
        try:
            with urllib.request.urlopen(real, timeout=5) as r:
                body: Json = json.loads(r.read())
        except urllib.error.URLError as e:
            raise ScalerError(str(e)) from e
        if parts.path == "/varz":
            port_of = {
                f"127.0.0.1:{p}": i for i, p in enumerate(self.cluster.route_ports)
            }
            routes = body["cluster"]["urls"]
            body["cluster"]["urls"] = [
                f"{self.pods[port_of[r]]}.{self.headless}:6222" for r in routes
            ]
        return body


# --- the test -----------------------------------------------------------------


async def publish_work(store: JetStreamEventStore, lane: str, n: int) -> None:
    """Work items as the scheduler publishes them (Scheduler._send_work)."""
    for i in range(n):
        item = codec.WorkItem(
            goal_id="G1",
            task_id=f"{lane}-{i}",
            lane=lane,
            task_type="noop",
            dispatch=1,
            ready_seq=i + 1,
        )
        await store.js.publish(
            store.subjects.work(lane),
            codec.encode(item),
            headers={subjects.H_MSG_ID: f"work:G1:{lane}-{i}:1"},
        )


async def consumer_leader(nc: NatsClient) -> str:
    info = await nc.jetstream().consumer_info(subjects.WORK_STREAM, "bb-local")
    assert info.cluster is not None and info.cluster.leader
    return str(info.cluster.leader)


async def test_keda_reads_the_local_lanes_backlog_on_the_chart_as_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    docs = render()
    (so,) = by_kind(docs, "ScaledObject").values()
    (trigger,) = so["spec"]["triggers"]
    meta: dict[str, str] = trigger["metadata"]
    assert meta["consumer"] == consumer_name("local")
    worker_local = by_kind(docs, "Deployment")[f"{RELEASE}-blackboard-worker-local"]
    assert "replicas" not in worker_local["spec"]  # KEDA's HPA owns the count

    # The NATS pods as the chart makes them: its users, passwords from the
    # chart's Secret through the env the chart maps, server_name = pod name.
    nats = nats_values()
    secret = by_kind(docs, "Secret")["blackboard-nats-auth"]["stringData"]
    for var, value in nats_env(nats, docs).items():
        monkeypatch.setenv(var, value)
    replicas = int(nats["config"]["cluster"]["replicas"])
    # Plus a user of the test's own: moving the consumer's leader is an
    # administrator's call, which no role of the chart may make.
    admin = copy.deepcopy(nats)
    admin["config"]["merge"]["authorization"]["users"].append(
        {"user": "test-admin", "password": "test-admin"}
    )
    cluster = EmbeddedCluster(
        tmp_path / "nats",
        size=replicas,
        server_names=[f"{RELEASE}-nats-{i}" for i in range(replicas)],
        no_advertise=True,
        config=nats_conf(admin),
    )
    cluster.start()
    try:
        sched = await connect(
            cluster.url, user="scheduler", password=secret["scheduler"]
        )
        work = await connect(cluster.url, user="worker", password=secret["worker"])
        root = await connect(cluster.url, user="test-admin", password="test-admin")
        try:
            await _scenario(cluster, nats, meta, sched, work, root)
        finally:
            await root.close()
            await work.close()
            await sched.close()
    finally:
        cluster.stop()


async def _scenario(
    cluster: EmbeddedCluster,
    nats: Json,
    meta: dict[str, str],
    sched: NatsClient,
    work: NatsClient,
    root: NatsClient,
) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    settings = StoreSettings(replicas=int(values["streams"]["replicas"]))
    assert settings.replicas == 3
    store = JetStreamEventStore(sched, settings)
    await eventually(store.ensure, attempt_s=20, timeout_s=40)

    # Before any worker ran, the consumer does not exist: KEDA 2.20 errors
    # (it used to count the whole stream and scale to the maximum).
    await publish_work(store, "local", 30)
    await publish_work(store, "frontier", 7)  # same stream, another consumer
    with pytest.raises(ScalerError, match="consumer bb-local"):
        KedaProbe(cluster, nats, meta).lag()

    # The worker makes its consumer (R3, like its stream) and takes five
    # items: it finishes two, three stay in flight.
    worker_store = JetStreamEventStore(work, settings)
    await eventually(Worker(worker_store, WorkerSettings(lane="local")).ensure_consumer)
    sub = await worker_store.js.pull_subscribe_bind(
        "bb-local", worker_store.work_stream
    )
    msgs = await eventually(lambda: sub.fetch(5, timeout=2))
    assert len(msgs) == 5
    for m in msgs[:2]:
        await m.ack_sync()
    backlog = 30 - 2
    # The work stream (a work queue) keeps what is not acked yet: the backlog,
    # beside the other lane's work that a stream-wide count would add.
    # An ack reaches the R3 stream through the consumer's leader: the stream's
    # count settles a moment after ack_sync returns.
    for _ in range(100):
        stream = await sched.jetstream().stream_info(
            subjects.WORK_STREAM, subjects_filter=store.subjects.work("local")
        )
        if stream.state.subjects == {store.subjects.work("local"): backlog}:
            break
        await asyncio.sleep(0.1)
    assert stream.state.subjects == {store.subjects.work("local"): backlog}
    assert stream.state.messages == backlog + 7
    info = await work.jetstream().consumer_info(subjects.WORK_STREAM, "bb-local")
    assert info.config.num_replicas in (0, 3)  # 0: inherits the stream's R3
    assert info.cluster is not None and len(info.cluster.replicas or []) == 2

    leader = await consumer_leader(work)
    for first in range(len(cluster.nodes)):  # whichever pod the Service picks
        probe = KedaProbe(cluster, nats, meta, first=first)
        assert probe.lag() == backlog
        assert probe.network.requests[-1].startswith(
            f"http://{leader}.{RELEASE}-nats-headless.{NAMESPACE}.svc.cluster.local:8222"
            "/jsz?acc=%24G&config=true&consumers=true"
        ), probe.network.requests
        # The next poll asks the cached leader only.
        probe.network.requests.clear()
        assert probe.lag() == backlog
        assert len(probe.network.requests) == 1
    # What the leader lookup is for: the followers do not report the backlog.
    follower_lags = [
        _lag_seen_by(cluster, i, meta)
        for i, name in enumerate(cluster.server_names)
        if name != leader
    ]
    assert any(lag != backlog for lag in follower_lags), follower_lags

    # The consumer's leader moves: the scaler finds the new one.
    probe = KedaProbe(cluster, nats, meta)
    assert probe.lag() == backlog
    await root.request(
        f"$JS.API.CONSUMER.LEADER.STEPDOWN.{subjects.WORK_STREAM}.bb-local", b"", 5
    )
    moved = await eventually(lambda: _new_leader(work, leader), timeout_s=30)
    # Until every node has applied the change, the old leader's own /jsz can
    # name itself for a moment; KEDA would then read it once more (a brief,
    # real race, not what this test is about).
    await eventually(lambda: _all_nodes_name(cluster, meta, moved), timeout_s=30)
    assert probe.lag() == backlog
    assert probe.network.requests[-1].startswith(f"http://{moved}.")

    # The endpoint the chart used to render, the plain Service: no monitoring
    # port there by default, and even with one, <pod>.<release>-nats... does
    # not resolve (the pods live under the headless Service).
    old = {**meta, "natsServerMonitoringEndpoint": "rel-nats.bb.svc.cluster.local:8222"}
    with pytest.raises(ScalerError, match="connection refused"):
        KedaProbe(cluster, nats, old).lag()
    with pytest.raises(ScalerError, match="no such host"):
        KedaProbe(cluster, nats, old, service_monitor_port=True).lag()


class KedaProbe:
    """One ScaledObject's scaler on the emulated network."""

    def __init__(
        self,
        cluster: EmbeddedCluster,
        nats: Json,
        meta: dict[str, str],
        *,
        first: int = 0,
        service_monitor_port: bool = False,
    ) -> None:
        self.network = KubeNetwork(
            cluster, nats, first=first, service_monitor_port=service_monitor_port
        )
        self.scaler = NatsJetStreamScaler(meta, self.network.get)

    def lag(self) -> int:
        lag, active = self.scaler.get_metrics_and_activity()
        assert active == (lag > 0)
        return lag


def _consumer_seen_by(cluster: EmbeddedCluster, i: int, meta: dict[str, str]) -> Json:
    """The lane consumer in one node's own /jsz (no leader lookup)."""
    query = go_query_encode(
        {"acc": meta["account"], "consumers": "true", "config": "true"}
    )
    with urllib.request.urlopen(f"{cluster.monitor_urls[i]}/jsz?{query}") as r:
        jsz = json.loads(r.read())
    (account,) = jsz["account_details"]
    (stream,) = [s for s in account["stream_detail"] if s["name"] == meta["stream"]]
    (c,) = [c for c in stream["consumer_detail"] if c["name"] == meta["consumer"]]
    return c  # type: ignore[no-any-return]


def _lag_seen_by(cluster: EmbeddedCluster, i: int, meta: dict[str, str]) -> int:
    c = _consumer_seen_by(cluster, i, meta)
    return int(c["num_pending"]) + int(c["num_ack_pending"])


async def _all_nodes_name(
    cluster: EmbeddedCluster, meta: dict[str, str], leader: str
) -> None:
    for i in range(len(cluster.nodes)):
        if _consumer_seen_by(cluster, i, meta)["cluster"]["leader"] != leader:
            raise TimeoutError(f"{cluster.server_names[i]} has not seen {leader} lead")


async def _new_leader(nc: NatsClient, old: str) -> str:
    leader = await consumer_leader(nc)
    if leader == old:
        raise TimeoutError(f"{old} still leads")
    return leader
