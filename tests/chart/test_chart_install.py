"""`helm install`, `helm upgrade` and `helm uninstall` into the real test control plane.

The pods of the chart's Deployments are simulated by KWOK (Running, but nothing runs), so each
test runs the real operator and the real metrics API server as local processes with exactly
what the chart gives their pods: the container's arguments and environment from the installed
Deployment, and the chart's ServiceAccount (a token from the TokenRequest API). The chart's
RBAC is then exactly what they run with: the operator must reconcile AgentPools to Ready and
set pod deletion costs, the metrics API must authenticate and authorise a request and answer
it for the pools of every served namespace (pools it cannot read next to them never get in
the way), and the API server's audit log and the processes' logs must show no refused
request. Run cluster-wide and
namespaced; the harness's own operator is paused meanwhile, so the chart's operator is the only
one reconciling.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from agentpool_dev.cluster import Cluster
from agentpool_dev.procs import free_port
from agentpool_dev.services import ServiceSettings
from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.crd import CRD_NAME
from agentpool_operator.deletioncost import POD_DELETION_COST
from agentpool_operator.queues import queue_keys
from tests.plugins.chart import (
    CHART,
    ChartProcess,
    Helm,
    container_of,
    forbidden_in_log,
    forbidden_requests,
    service_account_kubeconfig,
)
from tests.plugins.operator import OperatorProcess, Pools
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

RESYNC_SECONDS = 2


@pytest.fixture(scope="module")
def only_the_charts_operator(operator: OperatorProcess) -> Iterator[None]:
    """Pause the harness's cluster-wide operator, so pools become Ready only through the
    chart's; it restarts afterwards for the tests that use it."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()


@pytest.fixture
def scratch_namespaces(cluster: Cluster) -> Iterator[list[str]]:
    """Fresh namespaces a test creates on demand; deleted afterwards."""
    created: list[str] = []
    yield created
    for name in created:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def new_namespace(cluster: Cluster, created: list[str], prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    created.append(name)
    return name


def adopt_crd(cluster: Cluster, release: str, namespace: str) -> None:
    """Let the release take over a CRD other tests installed with kubectl (Helm adopts an
    object that carries its release's ownership metadata)."""
    found = cluster.kubectl("get", "crd", CRD_NAME, "--ignore-not-found", "-o", "name")
    if not found.stdout.strip():
        return
    cluster.kubectl("annotate", "crd", CRD_NAME, "--overwrite",
                    f"meta.helm.sh/release-name={release}",
                    f"meta.helm.sh/release-namespace={namespace}")
    cluster.kubectl("label", "crd", CRD_NAME, "--overwrite", "app.kubernetes.io/managed-by=Helm")


def release_values(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "operator": {"resyncSeconds": RESYNC_SECONDS, "deletionCostSeconds": 1},
        # The APIService would make the aggregator dial the Service's (simulated) pod IPs;
        # the server is reached on loopback instead.
        "metricsApi": {"apiService": {"create": False}, "refreshSeconds": 1},
        "serviceMonitor": {"additionalLabels": {"release": "kube-prometheus-stack"}},
    }
    for key, value in overrides.items():
        values[key] = {**values.get(key, {}), **value}
    return values


@dataclass
class Release:
    """One installed release and the local processes standing in for its pods."""

    cluster: Cluster
    helm: Helm
    name: str
    namespace: str
    work: Path
    operator: ChartProcess | None = None
    metrics_api: ChartProcess | None = None
    metrics_port: int = 0
    secure_port: int = 0

    @property
    def fullname(self) -> str:
        return f"{self.name}-agentpool-operator"

    @property
    def metrics_api_name(self) -> str:
        return f"{self.fullname}-metrics-api"

    def install(self, values: dict[str, Any], verb: str = "install") -> dict[str, Any]:
        self.helm.run(verb, self.name, str(CHART), "--namespace", self.namespace,
                      "-f", self.helm.values_file(values), "--wait", "--timeout", "120s")
        status: dict[str, Any] = json.loads(self.helm.run(
            "status", self.name, "--namespace", self.namespace, "-o", "json").stdout)
        return status

    def deployment(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.cluster.kubectl_json(
            "get", "deployment", name, "-n", self.namespace)
        return found

    def start_operator(self) -> ChartProcess:
        port = free_port()
        self.operator = ChartProcess(
            "agentpool_operator", container_of(self.deployment(self.fullname), "operator"),
            service_account_kubeconfig(self.cluster, self.namespace, self.fullname,
                                       self.work / "operator.kubeconfig"),
            self.work / "operator.log",
            extra_args=("--health-host=127.0.0.1", f"--health-port={port}"),
            health_url=f"http://127.0.0.1:{port}/readyz")
        self.operator.start()
        return self.operator

    def start_metrics_api(self) -> ChartProcess:
        # The operator fills the serving certificate's Secret (the chart makes it empty).
        def filled() -> dict[str, Any] | None:
            found = self.serving_secret()
            return found if found.get("data") else None

        secret = eventually(filled, timeout=30)
        for key in ("tls.crt", "tls.key", "ca.crt"):
            path = self.work / key
            path.write_bytes(base64.b64decode(secret["data"][key]))
            path.chmod(0o600)
        self.secure_port, self.metrics_port = free_port(), free_port()
        self.metrics_api = ChartProcess(
            "agentpool_operator.metrics_api",
            container_of(self.deployment(self.metrics_api_name), "metrics-api"),
            service_account_kubeconfig(self.cluster, self.namespace, self.metrics_api_name,
                                       self.work / "metrics-api.kubeconfig"),
            self.work / "metrics-api.log",
            extra_args=("--bind-address=127.0.0.1", f"--secure-port={self.secure_port}",
                        "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
                        f"--tls-cert-file={self.work / 'tls.crt'}",
                        f"--tls-private-key-file={self.work / 'tls.key'}"),
            health_url=f"http://127.0.0.1:{self.metrics_port}/readyz")
        self.metrics_api.start()
        return self.metrics_api

    def serving_secret(self) -> dict[str, Any]:
        found: dict[str, Any] = self.cluster.kubectl_json(
            "get", "secret", f"{self.metrics_api_name}-serving-cert", "-n", self.namespace)
        return found

    def query_backlog(self, namespace: str, pool: str | None, token: str) -> tuple[int, Any]:
        """Ask the metrics API for a pool's backlog (None: every pool of the namespace) the way
        the HPA controller does, over TLS verified against the CA the chart generated."""
        context = ssl.create_default_context(cafile=str(self.work / "ca.crt"))
        context.check_hostname = False  # the certificate names the Service, not 127.0.0.1
        url = (f"https://127.0.0.1:{self.secure_port}/apis/external.metrics.k8s.io/v1beta1/"
               f"namespaces/{namespace}/agentpool_queue_backlog"
               + (f"?labelSelector=agentpool.dev%2Fpool%3D{pool}" if pool else ""))
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                return int(response.status), json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def stop(self) -> None:
        for process in (self.operator, self.metrics_api):
            if process is not None:
                process.stop()

    def wait_ready(self, pools: Pools, name: str) -> None:
        """Wait for a pool to become Ready; on timeout, say what the API server refused."""
        try:
            pools.wait_ready(name)
        except pytest.fail.Exception:
            refused = forbidden_requests(
                self.cluster, f"system:serviceaccount:{self.namespace}:{self.fullname}")
            log = self.operator.log() if self.operator else ""
            reads = [line[:600] for line in forbidden_in_log(log)][:3]
            pytest.fail(f"AgentPool {name} not Ready; refused writes: {refused}; refused "
                        f"requests in the operator's log: {reads}")

    def assert_nothing_refused(self) -> None:
        for account in (self.fullname, self.metrics_api_name):
            user = f"system:serviceaccount:{self.namespace}:{account}"
            assert not forbidden_requests(self.cluster, user), user
        for process in (self.operator, self.metrics_api):
            if process is not None:
                assert not forbidden_in_log(process.log()), process.log()[-4000:]


@pytest.fixture
def release(cluster: Cluster, helm: Helm, namespace: str, tmp_path: Path) -> Iterator[Release]:
    installed = Release(cluster, helm, f"ap-{uuid.uuid4().hex[:5]}", namespace, tmp_path)
    try:
        yield installed
    finally:
        installed.stop()
        helm.run("uninstall", installed.name, "--namespace", namespace, "--wait",
                 check=False)


def pool(cluster: Cluster, namespace: str, name: str, redis_url: str) -> Pools:
    pools = Pools(cluster, namespace)
    pools.secret(f"{name}-redis", {"url": redis_url})
    pools.create(name, with_secret=False)
    return pools


def hpa_reader_token(cluster: Cluster, namespace: str) -> str:
    """A token of an identity allowed to read external metrics, like the HPA controller."""
    cluster.kubectl("create", "serviceaccount", "hpa-reader", "-n", namespace)
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": f"external-metrics-reader-{namespace}"},
            "rules": [{"apiGroups": ["external.metrics.k8s.io"], "resources": ["*"],
                       "verbs": ["get", "list"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": f"external-metrics-reader-{namespace}"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": f"external-metrics-reader-{namespace}"},
               "subjects": [{"kind": "ServiceAccount", "name": "hpa-reader",
                             "namespace": namespace}]}
    for manifest in (role, binding):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    return cluster.kubectl("create", "token", "hpa-reader", "-n", namespace).stdout.strip()


def drop_hpa_reader(cluster: Cluster, namespace: str) -> None:
    name = f"external-metrics-reader-{namespace}"
    cluster.kubectl("delete", "clusterrolebinding,clusterrole", name, "--ignore-not-found",
                    check=False)


def exercise_autoscaling_children(cluster: Cluster, release: Release, pools: Pools) -> None:
    """Make the operator create, change and prune every optional child kind: a KEDA
    ScaledObject with its TriggerAuthentication and Secret, then an HPA, then nothing."""
    def set_autoscaling(value: dict[str, Any]) -> None:
        cluster.kubectl("-n", pools.namespace, "patch", "agentpool", "beta", "--type=merge",
                        "-p", json.dumps({"spec": {"minReplicas": 1, "autoscaling": value}}))

    set_autoscaling({"enabled": True, "provider": "keda"})
    eventually(lambda: pools.get("scaledobject.keda.sh", "beta"), timeout=30)
    assert pools.get("triggerauthentication.keda.sh", "beta-keda") is not None
    set_autoscaling({"enabled": True, "provider": "builtin"})
    eventually(lambda: pools.get("hpa", "beta"), timeout=30)
    eventually(lambda: pools.get("scaledobject.keda.sh", "beta") is None, timeout=30)
    eventually(lambda: pools.get("secret", "beta-keda") is None, timeout=30)
    set_autoscaling({"enabled": False})
    eventually(lambda: pools.get("hpa", "beta") is None, timeout=30)
    release.wait_ready(pools, "beta")


def test_cluster_wide_install_upgrade_and_uninstall(
        cluster: Cluster, release: Release, services: ServiceSettings,
        monitoring_crds: list[str], keda_crds: list[str], only_the_charts_operator: None,
        scratch_namespaces: list[str]) -> None:
    adopt_crd(cluster, release.name, release.namespace)
    status = release.install(release_values(operator={"watchAllNamespaces": True}))
    assert status["info"]["status"] == "deployed"
    assert status["version"] == 1
    notes = status["info"]["notes"]
    assert "It reconciles AgentPools in every namespace (operator.watchAllNamespaces" in notes
    assert "ServiceMonitor: installed" in notes
    assert "PrometheusRule: installed" in notes
    assert "agentpool_queue_backlog" in notes  # the prometheus-adapter rules, no APIService
    # The cluster serves the Prometheus Operator's APIs, so the monitors and rules are there.
    for kind in ("servicemonitor", "prometheusrule"):
        cluster.kubectl("get", kind, release.fullname, "-n", release.namespace)
    dashboards = cluster.kubectl_json("get", "configmaps", "-n", release.namespace,
                                      "-l", "grafana_dashboard=1")["items"]
    assert len(dashboards) == 5

    release.start_operator()
    team = new_namespace(cluster, scratch_namespaces, "team")
    pools = pool(cluster, team, "alpha", services.redis_url)
    release.wait_ready(pools, "alpha")

    release.start_metrics_api()
    token = hpa_reader_token(cluster, release.namespace)


    def answered() -> Any:
        code, body = release.query_backlog(team, "alpha", token)
        # An empty list until the operator has published the pool's queue to the directory.
        return body if code == 200 and body["items"] else None

    try:
        body = eventually(answered, timeout=30)
    finally:
        drop_hpa_reader(cluster, release.namespace)
    assert body["items"][0]["value"] == "0"
    # The server checked the caller with a TokenReview and a SubjectAccessReview, as itself.
    metrics_user = f"system:serviceaccount:{release.namespace}:{release.metrics_api_name}"
    reviews = {e["objectRef"]["resource"] for e in cluster.audit_events()
               if e["user"]["username"] == metrics_user and e["verb"] == "create"}
    if cluster.audit_log.exists():
        assert {"tokenreviews", "subjectaccessreviews"} <= reviews

    tls_before = release.serving_secret()["data"]
    directory = f"{release.metrics_api_name}-queues"
    published = cluster.kubectl_json("get", "secret", directory, "-n", release.namespace)
    assert published.get("data"), "the operator published no queue directory"
    upgraded = release.install(release_values(operator={"logLevel": "DEBUG",
                                                        "watchAllNamespaces": True},
                                              prometheusRule={"ruleLabels": {"team": "ops"}}),
                               verb="upgrade")
    assert upgraded["version"] == 2
    args = container_of(release.deployment(release.fullname), "operator")["args"]
    assert "--log-level=DEBUG" in args
    rule = cluster.kubectl_json("get", "prometheusrule", release.fullname,
                                "-n", release.namespace)
    assert all(r["labels"]["team"] == "ops" for g in rule["spec"]["groups"]
               for r in g["rules"])
    # The serving certificate the operator keeps survives upgrades (the APIService trusts
    # its CA), and so does what it published in the chart's queue directory Secret.
    assert release.serving_secret()["data"] == tls_before
    assert cluster.kubectl_json("get", "secret", directory, "-n", release.namespace)[
        "data"] == published["data"]

    # The new pod, as the Deployment's Recreate strategy would run it.
    release.stop()
    release.start_operator()
    release.wait_ready(pool(cluster, team, "beta", services.redis_url), "beta")
    exercise_autoscaling_children(cluster, release, Pools(cluster, team))
    release.stop()
    release.assert_nothing_refused()

    release.helm.run("uninstall", release.name, "--namespace", release.namespace, "--wait")
    # crds.keep: the CRD, and with it every AgentPool, outlives the release.
    cluster.kubectl("get", "crd", CRD_NAME)
    assert pools.get("agentpool", "alpha") is not None
    assert not cluster.kubectl("get", "clusterrole", release.fullname,
                               "--ignore-not-found", "-o", "name").stdout.strip()


def test_namespaced_install_serves_its_namespaces_and_only_them(
        cluster: Cluster, release: Release, services: ServiceSettings,
        agentpool_crd: dict[str, Any], only_the_charts_operator: None,
        scratch_namespaces: list[str]) -> None:
    watched = [new_namespace(cluster, scratch_namespaces, "watched") for _ in range(2)]
    other = new_namespace(cluster, scratch_namespaces, "unwatched")
    # A second install next to a CRD someone else manages.
    notes = release.install(release_values(operator={"watchNamespaces": watched},
                                           crds={"enabled": False}))["info"]["notes"]
    assert f"the namespaces {', '.join(watched)}" in notes
    assert "did not install the AgentPool CRD" in notes
    operator_args = container_of(release.deployment(release.fullname), "operator")["args"]
    assert [a for a in operator_args if a.startswith("--namespace")] == [
        f"--namespace={n}" for n in watched]

    release.start_operator()
    release.start_metrics_api()
    for index, namespace in enumerate(watched):
        release.wait_ready(pool(cluster, namespace, f"p{index}", services.redis_url),
                           f"p{index}")
    # Next to them, pools whose queue cannot be read: a Redis URL no client can use (with a
    # password in it), and a Redis URL Secret that does not exist.
    broken = Pools(cluster, watched[0])
    broken.secret("badurl-redis", {"url": "redis://:hidden-pw@redis:no-port/0"})
    broken.create("badurl", with_secret=False)
    broken.create("lost", with_secret=False)
    stranger = pool(cluster, other, "stranger", services.redis_url)
    # Several resyncs later the operator has still not touched a pool it may not see.
    time.sleep(3 * RESYNC_SECONDS)
    assert not (stranger.get("agentpool", "stranger") or {}).get("status")
    assert stranger.get("deployment", "stranger") is None

    token = hpa_reader_token(cluster, release.namespace)
    try:
        assert_backlog_served(release, token, watched, other)
    finally:
        drop_hpa_reader(cluster, release.namespace)
    assert_gauges_of_every_served_pool(release, watched, other)
    assert_busy_pod_costs_more(cluster, release, services, watched[0], "p0")
    release.stop()
    release.assert_nothing_refused()
    for process in (release.operator, release.metrics_api):
        assert process is not None
        assert "hidden-pw" not in process.log()


def assert_backlog_served(release: Release, token: str, watched: list[str],
                          other: str) -> None:
    """The metrics API answers for the pools of every served namespace, and for no other."""
    for index, namespace in enumerate(watched):
        def answered(namespace: str = namespace, index: int = index) -> Any:
            code, body = release.query_backlog(namespace, f"p{index}", token)
            return body if code == 200 and body["items"] else None

        body = eventually(answered, timeout=30)
        assert [(i["metricLabels"], i["value"]) for i in body["items"]] == [
            ({"agentpool.dev/pool": f"p{index}"}, "0")]
    # The unreadable pool's own metric fails (the HPA then keeps its scale), saying why and
    # naming no credential; the one without a Secret is not served at all.
    def refused() -> Any:
        code, body = release.query_backlog(watched[0], "badurl", token)
        return body if code == 503 else None

    body = eventually(refused, timeout=30)
    assert "Redis URL cannot be used" in body
    assert "hidden-pw" not in body
    assert release.query_backlog(watched[0], "lost", token)[1]["items"] == []
    # Nothing of an unserved namespace.
    code, body = release.query_backlog(other, "stranger", token)
    assert (code, body["items"]) == (200, [])


def scraped(release: Release) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{release.metrics_port}/metrics",
                                timeout=5) as response:
        text: str = response.read().decode()
    return text


def assert_gauges_of_every_served_pool(release: Release, watched: list[str],
                                       other: str) -> None:
    """The queue gauges of the watched pools are there, the unreadable pools next to them
    notwithstanding; nothing of another namespace is."""
    wanted = [f'agentpool_queue_backlog{{agentpool="p{index}",namespace="{namespace}"}}'
              for index, namespace in enumerate(watched)]

    def gauges() -> str | None:
        text = scraped(release)
        return text if all(series in text for series in wanted) else None

    text = eventually(gauges, timeout=30)
    assert other not in text
    assert 'agentpool="badurl"' not in text
    assert 'agentpool="lost"' not in text


def assert_busy_pod_costs_more(cluster: Cluster, release: Release, services: ServiceSettings,
                               namespace: str, name: str) -> None:
    """The operator (not the metrics API) sets a pod's deletion cost to the tasks it runs."""
    pools = Pools(cluster, namespace)
    spec = AgentPoolSpec.model_validate((pools.get("agentpool", name) or {})["spec"])
    keys = queue_keys(name, namespace, spec)
    pods = cluster.kubectl_json("-n", namespace, "get", "pods", "-l",
                                f"app.kubernetes.io/instance={name}")["items"]
    busy = pods[0]["metadata"]["name"]
    client = redis.Redis.from_url(services.redis_url, decode_responses=True)
    try:
        client.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
        for i in range(2):
            client.xadd(keys.stream, {"n": str(i)})
        # Under the consumer name the runtime gives a worker of that pod.
        client.xreadgroup(keys.group, f"{busy}-0a1b2c-0.1", {keys.stream: ">"}, count=2)

        def cost() -> str | None:
            found = pools.get("pod", busy) or {}
            return (found.get("metadata", {}).get("annotations") or {}).get(POD_DELETION_COST)

        eventually(lambda: cost() == "2", timeout=30)
        # The metrics API's gauge refresh keeps going too: it shows the two tasks.
        series = f'agentpool_queue_in_flight_tasks{{agentpool="{name}",namespace="{namespace}"}}'
        eventually(lambda: f"{series} 2.0" in scraped(release), timeout=30)
    finally:
        client.delete(keys.stream)
        client.close()
