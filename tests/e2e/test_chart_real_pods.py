"""The Helm chart with its default image on a real node: the operator and the metrics API run
as real pods, under the chart's ServiceAccounts and RBAC, with in-cluster configuration (the
`kubernetes` Service, through kube-proxy), `helm test` finds both answering through their
Services, and they survive `helm upgrade`; `helm uninstall` removes them.

The pools the chart's operator reconciles here run on KWOK (what matters is that the
operator, in its pod, reconciles them); the metrics API pod reads their queue from the Redis
on the cluster bridge and is asked for a backlog the way the HPA controller asks.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentpool_dev import realnode
from agentpool_dev.cluster import Cluster
from agentpool_dev.services import ServiceSettings
from tests.plugins.chart import CHART, Helm, forbidden_requests
from tests.plugins.operator import OperatorProcess, Pools
from tests.plugins.realpods import REAL_NODE_POD, RealNodes
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

INSTANCE = "app.kubernetes.io/instance"


@pytest.fixture(scope="module")
def operator_image(real_node: realnode.RealNode, real_nodes: RealNodes) -> str:
    """The operator image (the chart's default), loaded into the real nodes."""
    return real_nodes.images("operator")["operator"]


@pytest.fixture
def only_the_charts_operator(operator: OperatorProcess) -> Iterator[None]:
    """The harness's operator paused: pools become Ready only through the chart's pod."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()


def _values(**operator: Any) -> dict[str, Any]:
    placement = {"nodeSelector": REAL_NODE_POD["nodeSelector"],
                 "tolerations": REAL_NODE_POD["tolerations"]}
    return {
        # The session's CRD is already installed (by kubectl); the release leaves it alone.
        "crds": {"enabled": False},
        "operator": {"resyncSeconds": 2, **placement, **operator},
        # One APIService per cluster, and the session's metrics API tests register theirs.
        "metricsApi": {"apiService": {"create": False}, **placement},
    }


def _helm(helm: Helm, verb: str, release: str, namespace: str, values: dict[str, Any]) -> None:
    helm.run(verb, release, str(CHART), "--namespace", namespace,
             "-f", helm.values_file(values), "--wait", "--timeout", "180s", timeout=240)


def _pods(cluster: Cluster, namespace: str, release: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "pods", "-n", namespace, "-l", f"{INSTANCE}={release}")["items"]
    return pods


def _running(pods: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Component -> pod, for pods whose every container really started and is ready."""
    found = {}
    for pod in pods:
        statuses = pod["status"].get("containerStatuses") or []
        if statuses and all(s["ready"] and "running" in s["state"] for s in statuses):
            found[_component(pod)] = pod
    return found


def _component(pod: dict[str, Any]) -> str:
    component: str = pod["metadata"]["labels"]["app.kubernetes.io/component"]
    return component


def _reader_token(cluster: Cluster, namespace: str) -> str:
    """A token of an identity allowed to read external metrics, like the HPA controller."""
    cluster.kubectl("create", "serviceaccount", "hpa-reader", "-n", namespace)
    name = f"external-metrics-reader-{namespace}"
    manifests = [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": name},
         "rules": [{"apiGroups": ["external.metrics.k8s.io"], "resources": ["*"],
                    "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": "hpa-reader",
                       "namespace": namespace}]},
    ]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                          "items": manifests}))
    return cluster.kubectl("create", "token", "hpa-reader", "-n", namespace).stdout.strip()


def _backlog(pod: dict[str, Any], ca: Path, namespace: str, pool: str, token: str
             ) -> tuple[int, Any]:
    """The metrics API pod asked at its pod IP, over TLS verified against the chart's CA."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # the certificate names the Service, not the pod IP
    selector = urllib.parse.quote(f"agentpool.dev/pool={pool}")
    url = (f"https://{pod['status']['podIP']}:6443/apis/external.metrics.k8s.io/v1beta1/"
           f"namespaces/{namespace}/agentpool_queue_backlog?labelSelector={selector}")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, repr(error)


def test_the_chart_runs_the_operator_and_metrics_api_as_real_pods(
    cluster: Cluster, helm: Helm, operator_image: str, pod_services: ServiceSettings,
    agentpool_crd: dict[str, Any], only_the_charts_operator: None, namespace: str,
    tmp_path: Path,
) -> None:
    release = f"ap-{uuid.uuid4().hex[:5]}"
    fullname = f"{release}-agentpool-operator"
    try:
        _helm(helm, "install", release, namespace, _values())

        def both_running() -> dict[str, dict[str, Any]] | None:
            found = _running(_pods(cluster, namespace, release))
            return found if len(found) == 2 else None

        pods = eventually(both_running, timeout=120)
        for component, pod in pods.items():
            assert pod["spec"]["nodeName"].startswith("real-node-"), component
            [container] = pod["spec"]["containers"]
            assert container["image"] == operator_image
        assert pods["operator"]["spec"]["serviceAccountName"] == fullname
        # `helm test`: its pod (on the real node, like the operator) finds both Services
        # answering /readyz (it exits non-zero otherwise), and is deleted once it succeeded.
        tested = helm.run("test", release, "--namespace", namespace, "--timeout", "120s",
                          timeout=180)
        assert f"TEST SUITE:     {fullname}-test" in tested.stdout, tested.stdout
        assert "Phase:          Succeeded" in tested.stdout, tested.stdout

        # The operator pod reconciles a pool to Ready, talking to the API server through
        # the `kubernetes` Service with its ServiceAccount's token.
        pools = Pools(cluster, namespace)
        pools.secret("alpha-redis", {"url": pod_services.redis_url})
        pools.create("alpha", with_secret=False, replicas=1)
        pools.wait_ready("alpha", timeout=90)
        # Of the operator's replicas, the one holding the Lease reconciled it.
        # (Its identity: the pod's name and a random suffix, as client-go makes it.)
        leader = cluster.kubectl_json("get", "lease", fullname, "-n", namespace)["spec"][
            "holderIdentity"].rsplit("_", 1)[0]
        assert leader in {p["metadata"]["name"] for p in _pods(cluster, namespace, release)}
        log = cluster.kubectl("logs", "-n", namespace, leader).stdout
        assert "alpha" in log, log[-2000:]

        # The metrics API pod authenticates (TokenReview) and authorises (SubjectAccessReview)
        # the caller through the API server, then reads the queue from Redis.
        # The serving certificate the operator pod issued (the chart renders the Secret empty).
        def issued() -> dict[str, Any] | None:
            found: dict[str, Any] = cluster.kubectl_json(
                "get", "secret", f"{fullname}-metrics-api-serving-cert", "-n", namespace)
            return found if found.get("data") else None

        secret = eventually(issued, timeout=60)
        ca = tmp_path / "ca.crt"
        ca.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
        token = _reader_token(cluster, namespace)
        def answered() -> Any:
            code, body = _backlog(pods["metrics-api"], ca, namespace, "alpha", token)
            # An empty list until the operator pod has published the pool's queue.
            return body if code == 200 and body["items"] else None

        body = eventually(answered, timeout=60)
        assert body["items"][0]["value"] == "0"
        code, _ = _backlog(pods["metrics-api"], ca, namespace, "alpha", "not-a-token")
        assert code == 401

        # helm upgrade rolls the operator's pod; the new one reconciles too.
        # (Two replicas: the old ones may still be terminating, and ready, when --wait returns.)
        before = {p["metadata"]["uid"] for p in _pods(cluster, namespace, release)}
        _helm(helm, "upgrade", release, namespace, _values(logLevel="DEBUG"))

        def rolled() -> dict[str, dict[str, Any]] | None:
            live = [p for p in _pods(cluster, namespace, release)
                    if not p["metadata"].get("deletionTimestamp")]
            operators = [p for p in live if _component(p) == "operator"]
            if not operators or any(p["metadata"]["uid"] in before for p in operators):
                return None
            found = _running(live)
            return found if "operator" in found else None

        upgraded = eventually(rolled, timeout=120)
        assert "--log-level=DEBUG" in upgraded["operator"]["spec"]["containers"][0]["args"]
        pools.create("beta", replicas=1, with_secret=False)
        pools.secret("beta-redis", {"url": pod_services.redis_url})
        pools.wait_ready("beta", timeout=90)

        for account in (fullname, f"{fullname}-metrics-api"):
            user = f"system:serviceaccount:{namespace}:{account}"
            assert not forbidden_requests(cluster, user), user
    finally:
        helm.run("uninstall", release, "--namespace", namespace, "--wait", check=False)
        cluster.kubectl("delete", "clusterrolebinding,clusterrole",
                        f"external-metrics-reader-{namespace}", "--ignore-not-found",
                        check=False)
    # helm uninstall removed the pods (their containers stopped on the node).
    eventually(lambda: not _pods(cluster, namespace, release), timeout=90)
