"""pytest fixtures and helpers for installing the chart's releases into the test control plane
and running their processes (`tests/chart/test_chart_install.py`, `test_chart_releases.py`).

A `Release` is one `helm install`ed release plus the local processes standing in for its pods
(`ChartProcess`: the rendered container's flags, the chart's ServiceAccount). The harness's
own cluster-wide operator is paused (`only_the_charts_operator`) so the chart's operators are
the only ones reconciling.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentpool_dev.cluster import Cluster
from agentpool_dev.procs import free_port
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


def disown_crd(cluster: Cluster) -> None:
    """The AgentPool CRD as `kubectl apply -f crds/` leaves it: without a Helm release's
    ownership marks (an earlier test's release, uninstalled with crds.keep, left its own)."""
    cluster.kubectl("annotate", "crd", "agentpools.agentpool.dev",
                    "meta.helm.sh/release-name-", "meta.helm.sh/release-namespace-")
    cluster.kubectl("label", "crd", "agentpools.agentpool.dev", "app.kubernetes.io/managed-by-")


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

    def install(self, values: dict[str, Any], verb: str = "install", *flags: str
                ) -> dict[str, Any]:
        self.helm.run(verb, self.name, str(CHART), "--namespace", self.namespace,
                      "-f", self.helm.values_file(values), "--wait", "--timeout", "120s",
                      *flags)
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
