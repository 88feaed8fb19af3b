"""Status and scale subresources: conditions, printer columns, kubectl scale and an HPA."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from agentpool_dev.cluster import Cluster
from agentpool_operator.api import AgentPoolStatus, Condition, ConditionType
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

SELECTOR = "app.kubernetes.io/instance=echo,app.kubernetes.io/name=agentpool"
SPEC: dict[str, Any] = {
    "image": "registry.example.com/agents/echo:1.0.0",
    "handler": "echo_agent.tasks:handle",
    "queue": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
}


def create_pool(cluster: Cluster, namespace: str, **spec: Any) -> None:
    body = {"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
            "metadata": {"name": "echo", "namespace": namespace}, "spec": {**SPEC, **spec}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def write_status(cluster: Cluster, namespace: str, status: dict[str, Any],
                 check: bool = True) -> Any:
    return cluster.kubectl("patch", "agentpool", "echo", "-n", namespace, "--subresource=status",
                           "--type=merge", "-p", json.dumps({"status": status}), check=check)


def model_status(reason: str = "AllReplicasReady") -> AgentPoolStatus:
    now = dt.datetime.now(dt.UTC)
    return AgentPoolStatus(
        observed_generation=1, replicas=2, ready_replicas=2, available_replicas=2,
        selector=SELECTOR, queue_backlog=17,
        conditions=[
            Condition(type=ConditionType.READY, status="True", reason=reason, message="2/2",
                      observed_generation=1, last_transition_time=now),
            Condition(type=ConditionType.PROGRESSING, status="False", reason="AsExpected",
                      message="", observed_generation=1, last_transition_time=now),
        ],
    )


def scale(cluster: Cluster, namespace: str) -> dict[str, Any]:
    raw = cluster.kubectl("get", "--raw", f"/apis/agentpool.dev/v1alpha1/namespaces/{namespace}"
                          "/agentpools/echo/scale").stdout
    result: dict[str, Any] = json.loads(raw)
    return result


def test_the_status_model_is_accepted_and_shown_in_the_columns(
    cluster: Cluster, agentpool_crd: dict[str, Any], namespace: str
) -> None:
    create_pool(cluster, namespace, replicas=2)
    written = model_status().to_json()
    write_status(cluster, namespace, written)
    stored = cluster.kubectl_json("get", "agentpool", "echo", "-n", namespace)
    assert stored["status"] == written
    assert AgentPoolStatus.model_validate(stored["status"]).to_json() == written
    row = cluster.kubectl("get", "ap", "echo", "-n", namespace, "-o", "wide",
                          "--no-headers").stdout.split()
    assert row[:6] == ["echo", "True", "2", "2", "17", "AllReplicasReady"]
    # With the status subresource, status writes do not bump the generation.
    assert stored["metadata"]["generation"] == 1


def test_conditions_are_a_map_keyed_by_type(
    cluster: Cluster, agentpool_crd: dict[str, Any], namespace: str
) -> None:
    create_pool(cluster, namespace)
    condition = model_status().to_json()["conditions"][0]
    duplicate = write_status(cluster, namespace, {"conditions": [condition, condition]},
                             check=False)
    assert duplicate.returncode != 0
    assert "status.conditions[1]: Duplicate value" in duplicate.stderr
    bad = write_status(cluster, namespace, {"conditions": [{**condition, "reason": "not ok"}]},
                       check=False)
    assert bad.returncode != 0
    assert "status.conditions[0].reason" in bad.stderr


def test_scale_subresource_reports_replicas_and_selector(
    cluster: Cluster, agentpool_crd: dict[str, Any], namespace: str
) -> None:
    create_pool(cluster, namespace)
    before = scale(cluster, namespace)
    assert before["spec"]["replicas"] == 1  # defaulted, so GET /scale works from the start
    assert before["status"]["replicas"] == 0
    write_status(cluster, namespace, model_status().to_json())
    cluster.kubectl("scale", "agentpool/echo", "-n", namespace, "--replicas=3")
    after = scale(cluster, namespace)
    assert after["spec"]["replicas"] == 3
    assert after["status"] == {"replicas": 2, "selector": SELECTOR}


def test_an_hpa_can_target_an_agentpool(
    cluster: Cluster, agentpool_crd: dict[str, Any], namespace: str
) -> None:
    create_pool(cluster, namespace, replicas=1, maxReplicas=10)
    write_status(cluster, namespace, {"replicas": 1, "selector": SELECTOR})
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "echo", "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
                               "name": "echo"},
            "minReplicas": 3, "maxReplicas": 6,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(hpa))

    # Below its minReplicas the HPA scales up without needing metrics, through /scale.
    eventually(lambda: cluster.kubectl_json("get", "agentpool", "echo", "-n", namespace)[
        "spec"]["replicas"] == 3, timeout=90)
    conditions = cluster.kubectl_json("get", "hpa", "echo", "-n", namespace)["status"][
        "conditions"]
    able = next(c for c in conditions if c["type"] == "AbleToScale")
    assert able["status"] == "True", able
