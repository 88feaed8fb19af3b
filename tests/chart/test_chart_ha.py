"""The chart's replicas against the real scheduler and eviction API: the operator's and the
metrics API's two replicas land on different nodes (and zones), and their disruption budgets
let a drain take one replica of each at a time, never both.

The pods are KWOK's (scheduled by the real kube-scheduler onto the two fake nodes, one per
zone, and made Ready); the evictions go through the real eviction subresource, which checks
the real PodDisruptionBudgets. Every node is cordoned first, as draining the last nodes
would leave them: an evicted replica's replacement cannot start, so the budget must refuse
the second eviction.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agentpool_dev.cluster import Cluster
from tests.plugins.chart import CHART, Helm
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
def installed(cluster: Cluster, helm: Helm, namespace: str,
              agentpool_crd: dict[str, Any]) -> Iterator[str]:
    release = f"ha-{uuid.uuid4().hex[:5]}"
    values = {"crds": {"enabled": False}, "metricsApi": {"apiService": {"create": False}}}
    helm.run("install", release, str(CHART), "--namespace", namespace,
             "-f", helm.values_file(values), "--wait", "--timeout", "120s")
    try:
        yield f"{release}-agentpool-operator"
    finally:
        helm.run("uninstall", release, "--namespace", namespace, "--wait", check=False)


def pods(cluster: Cluster, namespace: str, component: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "pods", "-n", namespace, "-l",
        f"app.kubernetes.io/component={component}")["items"]
    return found


def evict(cluster: Cluster, namespace: str, pod: str) -> subprocess.CompletedProcess[str]:
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": pod, "namespace": namespace}}
    return cluster.kubectl("create", "--raw",
                           f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction",
                           "-f", "-", input=json.dumps(eviction), check=False)


@pytest.mark.parametrize("component", ["operator", "metrics-api"])
def test_replicas_spread_over_nodes_and_zones_and_drain_one_at_a_time(
        cluster: Cluster, namespace: str, installed: str, component: str) -> None:
    running = pods(cluster, namespace, component)
    assert len(running) == 2
    nodes = {pod["spec"]["nodeName"] for pod in running}
    assert len(nodes) == 2, f"both {component} replicas on {nodes}"
    zones = {cluster.kubectl_json("get", "node", node)["metadata"]["labels"][
        "topology.kubernetes.io/zone"] for node in nodes}
    assert len(zones) == 2
    name = installed if component == "operator" else f"{installed}-metrics-api"
    eventually(lambda: cluster.kubectl_json("get", "pdb", name, "-n", namespace)[
        "status"].get("disruptionsAllowed") == 1, timeout=30)
    first, second = (pod["metadata"]["name"] for pod in running)
    with cordoned(cluster):
        allowed = evict(cluster, namespace, first)
        assert allowed.returncode == 0, allowed.stderr
        refused = evict(cluster, namespace, second)
    assert refused.returncode != 0
    assert "disruption budget" in refused.stderr, refused.stderr


@contextlib.contextmanager
def cordoned(cluster: Cluster) -> Iterator[None]:
    """Every schedulable node cordoned while the block runs (uncordoned afterwards)."""
    nodes = [node["metadata"]["name"] for node in cluster.kubectl_json("get", "nodes")["items"]
             if not node["spec"].get("unschedulable")]
    for node in nodes:
        cluster.kubectl("cordon", node)
    try:
        yield
    finally:
        for node in nodes:
            cluster.kubectl("uncordon", node, check=False)
