"""The chart's metrics API serves the HPA from a real pod: `helm install` with the default
images on a real node registers the APIService `v1beta1.external.metrics.k8s.io`; the API
server's aggregation layer reaches the pod through the chart's Service (the host routes the
cluster's Service range through a node's kube-proxy, as a control-plane node would), so the
APIService becomes Available; and an autoscaled AgentPool on real pods, reconciled by the
chart's operator pod, scales up on `agentpool_queue_backlog` served by that pod, and back down
when its queue drains.

Nothing here runs on the host but the control plane, Redis and the task client: not the
operator, not the metrics API (the other HPA tests use a host process behind an ExternalName
Service, `tests/plugins/metrics_api.py`).
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agent_runtime.config import parse_config
from agent_runtime.sdk.client import TaskClient
from agentpool_dev import realnode
from agentpool_dev.cluster import Cluster
from agentpool_dev.services import ServiceSettings
from tests.plugins.chart import CHART, Helm
from tests.plugins.operator import Pools
from tests.plugins.realpods import REAL_NODE_POD, RealNodes
from tests.waiting import eventually, eventually_async

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

APISERVICE = "v1beta1.external.metrics.k8s.io"
NAME = "hpa"
MAX_PODS = 3
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"


@pytest.fixture(scope="module")
def pod_images(real_node: realnode.RealNode, real_nodes: RealNodes) -> dict[str, str]:
    """The chart's default image, and the test handlers' for the pool, on the real nodes."""
    return real_nodes.images("operator", "test-handlers")


@pytest.fixture
def release(cluster: Cluster, helm: Helm, namespace: str, pod_images: dict[str, str],
            agentpool_crd: dict[str, Any]) -> Iterator[str]:
    """The chart installed with its defaults (APIService included), its pods on real nodes."""
    name = f"ap-{uuid.uuid4().hex[:5]}"
    placement = {"nodeSelector": REAL_NODE_POD["nodeSelector"],
                 "tolerations": REAL_NODE_POD["tolerations"]}
    values = {"crds": {"enabled": False},  # the session's CRD (kubectl) stays as it is
              # Pools go Ready through the operator's watches, not a periodic resync.
              "operator": {"resyncSeconds": 600, **placement},
              # One replica, so the APIService's Service has one endpoint to check.
              "metricsApi": {"replicas": 1, **placement}}
    try:
        helm.run("install", name, str(CHART), "--namespace", namespace,
                 "-f", helm.values_file(values), "--wait", "--timeout", "180s", timeout=240)
        yield name
    finally:
        _print_state(cluster, namespace, name)
        helm.run("uninstall", name, "--namespace", namespace, "--wait", check=False)
    # An APIService left behind would break every later user of the external metrics API.
    eventually(lambda: cluster.kubectl("get", "apiservice", APISERVICE,
                                       check=False).returncode != 0, timeout=60)


def _print_state(cluster: Cluster, namespace: str, release: str) -> None:
    """For a failing test: the pools, HPAs and pods, and the chart's pods' log tails."""
    print(cluster.kubectl("get", "agentpools,hpa,pods", "-n", namespace, "-o", "wide",
                          check=False).stdout)
    for component in ("operator", "metrics-api"):
        logs = cluster.kubectl("logs", "-n", namespace, "--tail=30", "-l",
                               f"{INSTANCE}={release},{COMPONENT}={component}", check=False)
        print(f"--- {component} log tail ---\n{logs.stdout}{logs.stderr}")


def _pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "pods", "-n", namespace, "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod["status"].get("conditions") or [])


def _served(pod: dict[str, Any]) -> float:
    """External metrics requests the metrics API pod answered with 200, from its /metrics."""
    url = f"http://{pod['status']['podIP']}:8081/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    match = re.search(r'^agentpool_metrics_api_requests_total\{code="200"\} (\S+)$', text,
                      re.MULTILINE)
    assert match, text[-1000:]
    return float(match.group(1))


def _available(cluster: Cluster) -> dict[str, Any] | None:
    found = cluster.kubectl("get", "apiservice", APISERVICE, "-o", "json", check=False)
    if found.returncode != 0:
        return None
    service: dict[str, Any] = json.loads(found.stdout)
    conditions = service.get("status", {}).get("conditions") or []
    return service if any(c["type"] == "Available" and c["status"] == "True"
                          for c in conditions) else None


def _backlog(cluster: Cluster, namespace: str) -> Any:
    """The pool's backlog as the HPA controller reads it: through the API server."""
    selector = urllib.parse.quote(f"agentpool.dev/pool={NAME}")
    found = cluster.kubectl("get", "--raw", f"/apis/external.metrics.k8s.io/v1beta1/namespaces/"
                            f"{namespace}/agentpool_queue_backlog?labelSelector={selector}",
                            check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def _assert_served_by_the_pod(cluster: Cluster, namespace: str, release: str
                              ) -> dict[str, Any]:
    """The APIService is Available and points at the chart's Service, whose one endpoint is
    the metrics API pod on a real node; returns that pod."""
    apiservice = eventually(lambda: _available(cluster), timeout=90)
    service = apiservice["spec"]["service"]
    assert service["namespace"] == namespace, service
    [pod] = [p for p in _pods(cluster, namespace, f"{INSTANCE}={release},{COMPONENT}=metrics-api")
             if _ready(p)]
    assert pod["spec"]["nodeName"] in cluster.real_nodes
    slices = cluster.kubectl_json("get", "endpointslices", "-n", namespace, "-l",
                                  f"kubernetes.io/service-name={service['name']}")["items"]
    addresses = {a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]}
    assert addresses == {pod["status"]["podIP"]}
    return pod


async def test_the_charts_metrics_api_pod_serves_the_hpa_of_a_real_pod_pool(
    cluster: Cluster, release: str, namespace: str, pod_images: dict[str, str],
    pod_services: ServiceSettings,
) -> None:
    metrics_pod = _assert_served_by_the_pod(cluster, namespace, release)

    # The chart's operator pod reconciles the pool (and publishes its queue for the metrics
    # API pod); its HPA asks for the backlog through the aggregation layer.
    pools = Pools(cluster, namespace)
    pools.secret(f"{NAME}-redis", {"url": pod_services.redis_url})
    pools.create(NAME, with_secret=False, image=pod_images["test-handlers"],
                 handler="tests.e2e.pod_handlers:dispatch", minReplicas=1,
                 maxReplicas=MAX_PODS, workers={"perPod": 1, "concurrency": 2},
                 resources={"requests": {"cpu": "50m", "memory": "96Mi"},
                            "limits": {"memory": "256Mi"}},
                 autoscaling={"enabled": True, "targetBacklogPerWorker": 1,
                              "scaleDown": {"stabilizationWindowSeconds": 5, "policies": [
                                  {"type": "Percent", "value": 100, "periodSeconds": 15}]}},
                 pod=REAL_NODE_POD)
    pools.wait_ready(NAME, timeout=120)
    answer = eventually(lambda: _backlog(cluster, namespace), timeout=60)
    assert answer["items"][0]["value"] == "0", answer
    served_before = _served(metrics_pod)

    config_map = pools.get("configmap", f"{NAME}-config") or {}
    pool_pods = f"{INSTANCE}={NAME}"
    [first] = _pods(cluster, namespace, pool_pods)
    async with await TaskClient.connect(pod_services.redis_url,
                                        parse_config(config_map["data"]["runtime.yaml"])
                                        ) as client:
        started = time.monotonic()
        burst = await client.submit_many({"do": "sleepy", "seconds": 3} for _ in range(30))

        async def scaled_up() -> list[dict[str, Any]] | None:
            ready = [p for p in _pods(cluster, namespace, pool_pods) if _ready(p)]
            return ready if len(ready) == MAX_PODS else None

        pods = await eventually_async(scaled_up, within=120)
        print(f"REACTION burst -> {MAX_PODS} ready real pods: {time.monotonic() - started:.1f}s")
        assert {p["spec"]["nodeName"] for p in pods} <= set(cluster.real_nodes)
        hpa = pools.get("hpa", NAME) or {}
        [metric] = hpa["status"]["currentMetrics"]
        assert metric["external"]["metric"]["name"] == "agentpool_queue_backlog"
        active = {c["type"]: c for c in hpa["status"]["conditions"]}["ScalingActive"]
        assert (active["status"], active["reason"]) == ("True", "ValidMetricFound"), active
        results = await client.wait_many(burst, max_wait=240)

    assert {r.status for r in results.values()} == {"succeeded"}
    new_pods = {p["metadata"]["name"] for p in pods} - {first["metadata"]["name"]}
    assert {r.worker.rsplit("-", 2)[0] for r in results.values()} & new_pods, \
        "no task ran on a pod the HPA added"

    async def scaled_down() -> list[dict[str, Any]] | None:
        alive = _pods(cluster, namespace, pool_pods)
        return alive if len(alive) == 1 else None

    await eventually_async(scaled_down, within=120)
    # The HPA controller's reads went to the pod: it answered them.
    assert _served(metrics_pod) > served_before
