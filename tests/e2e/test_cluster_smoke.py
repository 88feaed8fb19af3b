"""The harness's control plane behaves like a real cluster: controllers, scheduler and KWOK act."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentpool_dev.cluster import Cluster
from agentpool_dev.paths import REPO_ROOT
from tests.waiting import eventually

pytestmark = pytest.mark.cluster


def test_version_reports_the_pinned_release(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("get", "--raw", "/version").stdout)
    versions_env = (REPO_ROOT / "hack/testcluster/versions.env").read_text()
    assert f"KUBE_VERSION={version['gitVersion']}" in versions_env
    assert version["major"] == "1"


def test_deployment_pods_become_running_and_ready(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "create", "deployment", "web", "--image=example.invalid/web:1",
                    "--replicas=2")

    def ready_pods() -> list[dict[str, Any]]:
        pods = cluster.kubectl_json("-n", namespace, "get", "pods", "-l", "app=web")["items"]
        ready = [
            p for p in pods
            if p["status"].get("phase") == "Running"
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions", []))
        ]
        return ready if len(ready) == 2 else []

    pods = eventually(ready_pods)
    assert {p["spec"]["nodeName"] for p in pods} <= {"kwok-node-0", "kwok-node-1"}
    cluster.kubectl("-n", namespace, "rollout", "status", "deployment/web", "--timeout=60s")


def test_deleting_an_owner_garbage_collects_its_dependents(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl("-n", namespace, "create", "configmap", "owner")
    owner = cluster.kubectl_json("-n", namespace, "get", "configmap", "owner")
    owner_uid = owner["metadata"]["uid"]
    dependent = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "dependent", "namespace": namespace, "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}]},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(dependent))
    cluster.kubectl("-n", namespace, "delete", "configmap", "owner")

    def dependent_gone() -> bool:
        found = cluster.kubectl("-n", namespace, "get", "configmap", "dependent", check=False)
        return found.returncode != 0 and "NotFound" in found.stderr

    eventually(dependent_gone)


def test_hpa_is_accepted_and_the_hpa_controller_acts_on_it(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl("-n", namespace, "create", "deployment", "api", "--image=example.invalid/a:1")
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "api", "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"},
            "minReplicas": 1, "maxReplicas": 3,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(hpa))

    def conditions() -> dict[str, str]:
        status = cluster.kubectl_json("-n", namespace, "get", "hpa", "api").get("status", {})
        return {c["type"]: c["status"] for c in status.get("conditions", [])}

    # No metrics server runs, so the controller reports that it cannot read CPU: proof it ran.
    eventually(lambda: "ScalingActive" in conditions())
    found = conditions()
    assert found["AbleToScale"] == "True"
    assert found["ScalingActive"] == "False"


SCALABLE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.smoke.agentpool.dev"},
    "spec": {
        "group": "smoke.agentpool.dev",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "scope": "Namespaced",
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}, "scale": {
                "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector"}},
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "properties": {
                    "replicas": {"type": "integer", "default": 1}}},
                "status": {"type": "object", "properties": {
                    "replicas": {"type": "integer"}, "selector": {"type": "string"}}},
            }}},
        }],
    },
}


def test_custom_resource_with_scale_subresource_can_be_scaled(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(SCALABLE_CRD))
    cluster.wait_condition("crd/widgets.smoke.agentpool.dev", "Established")
    widget = {"apiVersion": "smoke.agentpool.dev/v1", "kind": "Widget",
              "metadata": {"name": "w", "namespace": namespace}, "spec": {}}
    eventually(lambda: cluster.kubectl("apply", "-f", "-", input=json.dumps(widget),
                                       check=False).returncode == 0)

    cluster.kubectl("-n", namespace, "scale", "widget/w", "--replicas=4")

    assert cluster.kubectl_json("-n", namespace, "get", "widget", "w")["spec"]["replicas"] == 4
    scale = json.loads(cluster.kubectl(
        "get", "--raw",
        f"/apis/smoke.agentpool.dev/v1/namespaces/{namespace}/widgets/w/scale").stdout)
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 4


def _pids_alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()
            and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:1]]


def test_cli_up_and_down_leave_no_processes(cluster: Cluster, tmp_path: Path) -> None:
    """A person's `cluster up` / `cluster down` round trip, on its own state folder and ports."""
    state_dir = tmp_path / "own-cluster"
    env_bin = {"AGENTPOOL_TESTCLUSTER_BIN": str(cluster.bin_dir)}
    cli = [sys.executable, "-m", "agentpool_dev", "cluster"]
    run_env = {**cluster.env(), **env_bin, "PYTHONPATH": str(REPO_ROOT / "hack")}
    up = subprocess.run([*cli, "up", "--state-dir", str(state_dir)], env=run_env,
                        capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stderr
    assert f"export KUBECONFIG={state_dir / 'kubeconfig'}" in up.stdout

    recorded = json.loads((state_dir / "cluster.json").read_text())
    pids = [entry["pid"] for entry in recorded]
    assert {entry["name"] for entry in recorded} == {
        "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    assert _pids_alive(pids) == pids
    status = subprocess.run([*cli, "status", "--state-dir", str(state_dir)], env=run_env,
                            capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stdout + status.stderr

    down = subprocess.run([*cli, "down", "--state-dir", str(state_dir)], env=run_env,
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert _pids_alive(pids) == []
