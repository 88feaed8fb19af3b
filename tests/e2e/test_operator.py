"""The operator against the real control plane: children, status, rollouts, drift, scaling."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from agentpool_dev.cluster import Cluster
from tests.plugins.operator import OperatorProcess, Pools
from tests.waiting import eventually

pytestmark = pytest.mark.cluster
CONFIG_HASH = "agentpool.dev/config-hash"


def template_hash(pools: Pools, name: str) -> str:
    deployment = pools.get("deployment", name) or {}
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    return str(annotations.get(CONFIG_HASH, ""))


def wait_child(pools: Pools, kind: str, name: str) -> dict[str, Any]:
    return eventually(lambda: pools.get(kind, name))


def test_creating_a_pool_creates_owned_children_and_becomes_ready(
    operator: OperatorProcess, pools: Pools
) -> None:
    pools.secret("db", {"dsn": "postgresql://app:s3cret-pw@db.example:5432/agents"})
    pools.create("alpha", replicas=2, minReplicas=1, maxReplicas=4,
                 database={"dsnSecretRef": {"name": "db", "key": "dsn"},
                           "connectionBudget": 40})
    ready = pools.wait_ready("alpha")
    pool = pools.get("agentpool", "alpha")
    assert pool is not None
    uid = pool["metadata"]["uid"]

    for kind, name in [("deployment", "alpha"), ("configmap", "alpha-config"),
                       ("secret", "alpha-pgbouncer"), ("service", "alpha"), ("pdb", "alpha")]:
        child = pools.get(kind, name)
        assert child is not None, f"{kind}/{name} missing"
        owners = child["metadata"]["ownerReferences"]
        assert [(o["kind"], o["uid"], o.get("controller")) for o in owners] == [
            ("AgentPool", uid, True)]
    assert pools.get("hpa", "alpha") is None

    deployment = pools.get("deployment", "alpha") or {}
    pod = deployment["spec"]["template"]["spec"]
    runtime = next(c for c in pod["containers"] if c["name"] == "runtime")
    assert runtime["securityContext"]["readOnlyRootFilesystem"] is True
    assert runtime["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "pgbouncer")
    assert sidecar["restartPolicy"] == "Always"
    # Credentials stay in Secrets: not in the ConfigMap, the status or the Deployment.
    config_map = pools.get("configmap", "alpha-config") or {}
    for text in (json.dumps(config_map), json.dumps(pool["status"]), json.dumps(deployment)):
        assert "s3cret-pw" not in text

    status = pool["status"]
    assert ready["observedGeneration"] == pool["metadata"]["generation"]
    assert status["observedGeneration"] == pool["metadata"]["generation"]
    assert status["readyReplicas"] == 2
    assert status["selector"] == "app.kubernetes.io/instance=alpha,app.kubernetes.io/name=agentpool"
    assert pools.condition("alpha", "Degraded")["status"] == "False"  # type: ignore[index]


def test_spec_change_rolls_out_new_pods(operator: OperatorProcess, pools: Pools) -> None:
    pools.create("beta", replicas=2)
    pools.wait_ready("beta")
    before = template_hash(pools, "beta")
    generation = (pools.get("deployment", "beta") or {})["metadata"]["generation"]

    pools.cluster.kubectl("-n", pools.namespace, "patch", "agentpool", "beta", "--type=merge",
                          "-p", json.dumps({"spec": {"workers": {"concurrency": 4}}}))

    eventually(lambda: template_hash(pools, "beta") != before)
    assert (pools.get("deployment", "beta") or {})["metadata"]["generation"] > generation
    pools.cluster.kubectl("-n", pools.namespace, "rollout", "status", "deployment/beta",
                          "--timeout=60s")
    eventually(lambda: (pools.condition("beta", "Progressing") or {}).get("status") == "False")
    pools.wait_ready("beta")


def test_database_secret_change_rolls_the_pods(operator: OperatorProcess, pools: Pools) -> None:
    pools.secret("db", {"dsn": "postgresql://app:first@db.example:5432/agents"})
    pools.create("gamma", database={"dsnSecretRef": {"name": "db", "key": "dsn"},
                                    "connectionBudget": 100})
    pools.wait_ready("gamma")
    before = template_hash(pools, "gamma")

    pools.secret("db", {"dsn": "postgresql://app:rotated@db.example:5432/agents"})

    eventually(lambda: template_hash(pools, "gamma") not in ("", before))
    derived = pools.get("secret", "gamma-pgbouncer") or {}
    assert derived["data"], "the derived PgBouncer Secret has data"


def test_edited_and_deleted_children_are_restored(operator: OperatorProcess,
                                                  pools: Pools) -> None:
    pools.create("delta")
    pools.wait_ready("delta")
    kubectl = pools.cluster.kubectl

    def runtime_image() -> str:
        pod = (pools.get("deployment", "delta") or {})["spec"]["template"]["spec"]
        return str(next(c for c in pod["containers"] if c["name"] == "runtime")["image"])

    kubectl("-n", pools.namespace, "set", "image", "deployment/delta", "runtime=evil:latest")
    kubectl("-n", pools.namespace, "label", "service", "delta", "app.kubernetes.io/name-")
    kubectl("-n", pools.namespace, "delete", "configmap", "delta-config")
    kubectl("-n", pools.namespace, "delete", "pdb", "delta")

    eventually(lambda: runtime_image() == "registry.example/agents:1.0")
    eventually(lambda: (pools.get("service", "delta") or {})["metadata"]["labels"].get(
        "app.kubernetes.io/name") == "agentpool")
    wait_child(pools, "configmap", "delta-config")
    wait_child(pools, "pdb", "delta")


def test_kubectl_scale_on_the_pool_drives_the_deployment(operator: OperatorProcess,
                                                         pools: Pools) -> None:
    pools.create("eps", replicas=1, maxReplicas=5)
    pools.wait_ready("eps")
    pools.cluster.kubectl("-n", pools.namespace, "scale", "agentpool/eps", "--replicas=3")
    eventually(lambda: (pools.get("deployment", "eps") or {})["spec"]["replicas"] == 3)
    eventually(lambda: (pools.get("agentpool", "eps") or {}).get("status", {}).get(
        "readyReplicas") == 3)


def test_toggling_autoscaling_adds_and_removes_the_hpa(operator: OperatorProcess,
                                                       pools: Pools) -> None:
    pools.create("zeta", maxReplicas=6)
    pools.wait_ready("zeta")
    assert pools.get("hpa", "zeta") is None
    patch = pools.cluster.kubectl
    patch("-n", pools.namespace, "patch", "agentpool", "zeta", "--type=merge", "-p",
          json.dumps({"spec": {"autoscaling": {"enabled": True}}}))
    hpa = wait_child(pools, "hpa", "zeta")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool", "name": "zeta"}
    assert hpa["spec"]["maxReplicas"] == 6

    patch("-n", pools.namespace, "patch", "agentpool", "zeta", "--type=merge", "-p",
          json.dumps({"spec": {"autoscaling": {"enabled": False}}}))
    eventually(lambda: pools.get("hpa", "zeta") is None)


def test_deleting_the_pool_garbage_collects_its_children(operator: OperatorProcess,
                                                         pools: Pools) -> None:
    pools.create("eta")
    pools.wait_ready("eta")
    pools.cluster.kubectl("-n", pools.namespace, "delete", "agentpool", "eta")
    for kind, name in [("deployment", "eta"), ("configmap", "eta-config"),
                       ("service", "eta"), ("pdb", "eta")]:
        eventually(lambda kind=kind, name=name: pools.get(kind, name) is None)  # type: ignore[misc]


def test_missing_secret_degrades_the_pool_until_it_exists(operator: OperatorProcess,
                                                          pools: Pools) -> None:
    pools.create("theta", with_secret=False)

    def degraded() -> dict[str, Any] | None:
        condition = pools.condition("theta", "Degraded")
        return condition if condition and condition["status"] == "True" else None

    condition: dict[str, Any] = eventually(degraded)
    assert condition["reason"] == "SecretMissing"
    assert "theta-redis" in condition["message"]
    assert (pools.condition("theta", "Ready") or {})["status"] == "False"
    events = pools.cluster.kubectl_json("-n", pools.namespace, "get", "events",
                                        "--field-selector", "involvedObject.name=theta")
    assert any(e["reason"] == "SecretMissing" for e in events["items"])

    pools.secret("theta-redis", {"url": "redis://127.0.0.1:6379/0"})
    pools.wait_ready("theta", timeout=90)
    assert (pools.condition("theta", "Degraded") or {})["status"] == "False"


def test_steady_state_and_operator_restart_make_no_writes(operator: OperatorProcess,
                                                          pools: Pools) -> None:
    if not pools.cluster.audit_log.exists():
        pytest.skip("counts writes in the harness's audit log, which an existing cluster "
                    "(AGENTPOOL_TEST_KUBECONFIG) does not have")
    pools.create("iota", replicas=2)
    pools.wait_ready("iota")
    # Let the rollout's last status updates land before counting.
    eventually(lambda: (pools.condition("iota", "Progressing") or {}).get("status") == "False")
    operator.wait_resyncs(2)
    before = len(operator.writes(pools.namespace))

    operator.wait_resyncs(3)  # three resyncs, each reconciling every pool
    operator.restart()
    operator.wait_resyncs(3)

    extra = operator.writes(pools.namespace)[before:]
    summary = [(e["verb"], e["objectRef"].get("resource"), e["objectRef"].get("name"),
                e["objectRef"].get("subresource")) for e in extra]
    assert summary == []


def test_fifty_pools_created_at_once_all_become_ready(operator: OperatorProcess,
                                                      cluster: Cluster, pools: Pools) -> None:
    names = [f"bulk-{i:02d}" for i in range(50)]
    pools.secret("bulk-redis", {"url": "redis://127.0.0.1:6379/0"})
    manifests = [{
        "apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name, "namespace": pools.namespace},
        "spec": {"image": "registry.example/agents:1.0", "handler": "agents.tasks:handle",
                 "queue": {"redis": {"urlSecretRef": {"name": "bulk-redis", "key": "url"}}}},
    } for name in names]
    started = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                           "items": manifests}))

    def ready_count() -> bool:
        listed = cluster.kubectl_json("-n", pools.namespace, "get", "agentpools")["items"]
        ready = [p for p in listed if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or [])]
        return len(ready) == len(names)

    eventually(ready_count, timeout=180, interval=1)
    print(f"50 AgentPools Ready after {time.monotonic() - started:.1f}s")


def test_operator_serves_health_and_its_own_metrics(operator: OperatorProcess,
                                                    pools: Pools) -> None:
    pools.create("kappa")
    pools.wait_ready("kappa")
    assert operator.get("/healthz") == (200, "ok\n")
    assert operator.get("/readyz")[0] == 200
    status, text = operator.get("/metrics")
    assert status == 200
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples['agentpool_operator_reconciles_total{result="success"}'] >= 1
    assert samples['agentpool_operator_pools{condition="Ready",status="True"}'] >= 1
    assert samples["agentpool_operator_watch_stalled"] == 0
    assert 'agentpool_operator_api_writes_total{kind="Deployment",verb="apply"}' in samples


def test_an_unusable_database_dsn_degrades_the_pool_without_leaking_it(
        operator: OperatorProcess, pools: Pools) -> None:
    pools.secret("bad-db", {"dsn": "postgresql://app:hunter2@/"})  # no host
    pools.create("lambda", database={"dsnSecretRef": {"name": "bad-db", "key": "dsn"},
                                     "connectionBudget": 100})

    def degraded() -> dict[str, Any] | None:
        condition = pools.condition("lambda", "Degraded")
        return condition if condition and condition["status"] == "True" else None

    condition: dict[str, Any] = eventually(degraded)
    assert condition["reason"] == "InvalidDatabaseDSN"
    assert "hunter2" not in json.dumps(pools.get("agentpool", "lambda"))
    events = pools.cluster.kubectl("-n", pools.namespace, "get", "events", "-o", "json").stdout
    assert "hunter2" not in events
