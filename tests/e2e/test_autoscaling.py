"""Queue-length autoscaling end to end, on the real control plane and the real HPA controller.

The metrics API server (`agentpool_operator.metrics_api`) is registered with the aggregator
and serves the pools whose queues the real operator publishes; the operator renders each
pool's HPA and keeps the pods' deletion costs; tasks go into the real Redis through the
runtime's SDK. No worker runs (pods are simulated by KWOK): the backlog stays until the test
drains it.
The tests print the measured reaction times (run with `-s` to see them).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_runtime.config import RuntimeConfig
from agent_runtime.contract import budget_waiting_key
from agent_runtime.sdk.client import TaskClient
from agentpool_dev import pki as pki_mod
from agentpool_dev.cluster import Cluster
from agentpool_dev.procs import free_port
from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.builders.config import runtime_config
from agentpool_operator.builders.context import PoolContext, SecretValues
from agentpool_operator.deletioncost import POD_DELETION_COST
from tests.plugins.metrics_api import MetricsApiServer, client_cert_of
from tests.plugins.operator import OperatorProcess, Pools
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

METRIC_PATH = "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/agentpool_queue_backlog"
POOL_LABEL = "agentpool.dev/pool"


def metric_path(namespace: str, pool: str | None = None) -> str:
    path = METRIC_PATH.format(ns=namespace)
    return path if pool is None else f"{path}?labelSelector={POOL_LABEL}%3D{pool}"


def raw_get(cluster: Cluster, path: str, kubeconfig: Path | None = None
            ) -> tuple[int, str]:
    """`kubectl get --raw` through the kube-apiserver (and its aggregator)."""
    args = ["get", "--raw", path]
    if kubeconfig is not None:
        args = ["--kubeconfig", str(kubeconfig), *args]
    result = cluster.kubectl(*args, check=False)
    return result.returncode, result.stdout + result.stderr


def unique(prefix: str) -> str:
    # Pools of the same name in two namespaces share a stream on one Redis: keep them apart.
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def pool_config(pools: Pools, name: str) -> RuntimeConfig:
    """The runtime config the operator renders for the pool's pods (same stream and group)."""
    pool = pools.get("agentpool", name) or {}
    spec = AgentPoolSpec.model_validate(pool["spec"])
    return runtime_config(PoolContext(name=name, namespace=pools.namespace, uid="",
                                      spec=spec, secrets=SecretValues(redis_url="")))


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


# -- authentication and authorisation -------------------------------------------------------


def test_discovery_and_metric_are_served_through_the_aggregator(
    cluster: Cluster, metrics_api: MetricsApiServer, operator: OperatorProcess, pools: Pools,
    redis_url: str,
) -> None:
    code, out = raw_get(cluster, "/apis/external.metrics.k8s.io/v1beta1")
    assert code == 0, out
    assert [r["name"] for r in json.loads(out)["resources"]] == ["agentpool_queue_backlog"]

    name = unique("served")
    pools.secret(f"{name}-redis", {"url": redis_url})
    pools.create(name, with_secret=False)

    # Served once the operator has read the pool's Redis URL Secret and published its queue.
    def served() -> dict[str, Any] | None:
        code, out = raw_get(cluster, metric_path(pools.namespace, name))
        body: dict[str, Any] = json.loads(out) if code == 0 else {}
        return body if body.get("items") else None

    body = eventually(served, timeout=30)
    assert body["kind"] == "ExternalMetricValueList"
    assert [(i["metricLabels"], i["value"]) for i in body["items"]] == [({POOL_LABEL: name}, "0")]
    # A pool of another namespace is never visible: the selector matches nothing here.
    code, out = raw_get(cluster, metric_path("default", name))
    assert (code, json.loads(out)["items"]) == (0, [])


def test_a_request_without_credentials_is_refused_with_401(
    metrics_api: MetricsApiServer, namespace: str,
) -> None:
    status, body = metrics_api.request(metric_path(namespace))
    assert (status, body.get("reason")) == (401, "Unauthorized")
    # The identity headers only count on the aggregator's own proxy connection.
    status, _ = metrics_api.request(metric_path(namespace), headers={
        "X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"})
    assert status == 401
    status, _ = metrics_api.request(metric_path(namespace), token="not-a-real-token")
    assert status == 401
    # Discovery needs an authenticated user too; only the health probes are open.
    assert metrics_api.request("/apis/external.metrics.k8s.io/v1beta1")[0] == 401
    assert metrics_api.request("/readyz")[0] == 200


def test_an_authenticated_but_unauthorised_identity_gets_403(
    cluster: Cluster, metrics_api: MetricsApiServer, namespace: str,
) -> None:
    nobody = cluster.kubeconfig_for("nobody")
    # Through the API server, as any client would ask.
    code, out = raw_get(cluster, metric_path(namespace), kubeconfig=nobody)
    assert code != 0, out
    assert "forbidden" in out.lower(), out
    # Directly, with the same client certificate: our own SubjectAccessReview refuses it.
    status, body = metrics_api.request(metric_path(namespace), cert=client_cert_of(nobody))
    assert (status, body.get("reason")) == (403, "Forbidden"), body
    assert 'User "nobody"' in body["message"]
    # Directly as the aggregator vouching for "nobody" (front-proxy certificate + headers).
    pki = pki_mod.Pki(cluster.state_dir / "pki")
    status, body = metrics_api.request(
        metric_path(namespace), cert=(pki.front_proxy_client_crt, pki.front_proxy_client_key),
        headers={"X-Remote-User": "nobody", "X-Remote-Group": "system:authenticated"})
    assert (status, body.get("reason")) == (403, "Forbidden"), body


def test_a_service_account_token_is_reviewed_and_rbac_decides(
    cluster: Cluster, metrics_api: MetricsApiServer, operator: OperatorProcess, namespace: str,
) -> None:
    cluster.kubectl("-n", namespace, "create", "serviceaccount", "reader")
    token = cluster.kubectl("-n", namespace, "create", "token", "reader").stdout.strip()
    status, _ = metrics_api.request(metric_path(namespace), token=token)
    assert status == 403
    cluster.kubectl("-n", namespace, "create", "role", "backlog-reader",
                    "--verb=get,list", "--resource=agentpool_queue_backlog.external.metrics.k8s.io")
    cluster.kubectl("-n", namespace, "create", "rolebinding", "backlog-reader",
                    "--role=backlog-reader", f"--serviceaccount={namespace}:reader")

    def allowed() -> dict[str, Any] | None:
        status, body = metrics_api.request(metric_path(namespace), token=token)
        return body if status == 200 else None

    # Denials are cached for a few seconds, like the upstream delegating authorizer does.
    body = eventually(allowed, timeout=30)
    assert body["items"] == []


# -- scaling on the backlog -----------------------------------------------------------------


def spec_replicas(pools: Pools, name: str) -> int:
    return int(((pools.get("agentpool", name) or {}).get("spec") or {}).get("replicas", -1))


def deployment_replicas(pools: Pools, name: str) -> int:
    return int(((pools.get("deployment", name) or {}).get("spec") or {}).get("replicas", -1))


def ready_replicas(pools: Pools, name: str) -> int:
    status = (pools.get("agentpool", name) or {}).get("status") or {}
    ready: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
    return int(status.get("readyReplicas") or 0) if ready.get("status") == "True" else -1


def wait_for(label: str, started: float, check: Any, timeout: float = 120) -> float:
    """Wait until `check()`; print and return the seconds since `started`."""
    eventually(check, timeout=timeout, interval=0.25)
    elapsed = time.monotonic() - started
    print(f"REACTION {label}: {elapsed:.1f}s")
    return elapsed


async def test_a_backlog_scales_the_pool_up_and_draining_it_scales_back_to_min(
    cluster: Cluster, metrics_api: MetricsApiServer, operator: OperatorProcess, pools: Pools,
    redis_url: str, redis: Redis,
) -> None:
    name = unique("auto")
    pools.secret(f"{name}-redis", {"url": redis_url})
    pools.create(name, with_secret=False, minReplicas=1, maxReplicas=4,
                 workers={"perPod": 2},
                 autoscaling={"enabled": True, "targetBacklogPerWorker": 1,
                              # Short scale-down window so the test is quick; the default is
                              # 300 s and one pod per minute.
                              "scaleDown": {"stabilizationWindowSeconds": 5, "policies": [
                                  {"type": "Percent", "value": 100, "periodSeconds": 15}]}})
    pools.wait_ready(name)
    hpa = eventually(lambda: pools.get("hpa", name))
    assert hpa["spec"]["metrics"][0]["external"]["target"] == {
        "type": "AverageValue", "averageValue": "2"}
    config = pool_config(pools, name)

    # The HPA reads the metric (value 0) and stays at minReplicas.
    def scaling_active() -> bool:
        conditions = ((pools.get("hpa", name) or {}).get("status") or {}).get("conditions") or []
        return any(c["type"] == "ScalingActive" and c["status"] == "True" for c in conditions)
    eventually(scaling_active, timeout=60)
    assert spec_replicas(pools, name) == 1

    async with await TaskClient.connect(redis_url, config) as client:
        started = time.monotonic()
        # 20 tasks / (1 per worker x 2 workers per pod) = 10 pods, capped at maxReplicas 4.
        await client.submit_many([{"n": i} for i in range(20)])
        assert await client.queue_depth() == 20
    code, out = raw_get(cluster, metric_path(pools.namespace, name))
    assert code == 0, out
    assert json.loads(out)["items"][0]["value"] == "20", out
    up = wait_for("backlog -> AgentPool.spec.replicas 4", started,
                  lambda: spec_replicas(pools, name) == 4)
    wait_for("backlog -> Deployment.spec.replicas 4", started,
             lambda: deployment_replicas(pools, name) == 4)
    wait_for("backlog -> AgentPool Ready with 4 ready pods", started,
             lambda: ready_replicas(pools, name) == 4)
    # Nothing runs, so every pod is idle: cost 0, which a pod without the annotation has
    # already (the operator writes none).
    assert set(_costs(cluster, pools.namespace, name)) <= {"-", "0"}

    # Drain: the tasks are done (acknowledged and deleted, as the runtime does).
    started = time.monotonic()
    await redis.delete(config.stream_key)
    down = wait_for("drained -> AgentPool.spec.replicas 1", started,
                    lambda: spec_replicas(pools, name) == 1)
    wait_for("drained -> Deployment.spec.replicas 1", started,
             lambda: deployment_replicas(pools, name) == 1)
    assert up < 60
    assert down < 90


async def test_a_budget_bound_backlog_holds_the_pool_and_lifting_the_budget_scales_it(
    cluster: Cluster, metrics_api: MetricsApiServer, operator: OperatorProcess, pools: Pools,
    redis_url: str, redis: Redis,
) -> None:
    name = unique("budget")
    pools.secret(f"{name}-redis", {"url": redis_url})
    pools.create(name, with_secret=False, minReplicas=1, maxReplicas=4, workers={"perPod": 2},
                 autoscaling={"enabled": True, "targetBacklogPerWorker": 1})
    pools.wait_ready(name)
    eventually(lambda: pools.get("hpa", name))
    config = pool_config(pools, name)
    # What the pool's one running pod would write (no runtime runs on KWOK): its lease
    # renewal, and three tasks waiting for a budget permit (far-future scores: no refresh).
    redis_now = await redis.time()
    later_ms = (int(redis_now[0]) + 600) * 1000
    await redis.zadd(f"{config.key_prefix}:pods", {f"{name}-pod-boot": later_ms})
    board = budget_waiting_key(config.key_prefix)
    await redis.zadd(board, {f"waiter-{i}": later_ms for i in range(3)})
    async with await TaskClient.connect(redis_url, config) as client:
        await client.submit_many([{"n": i} for i in range(20)])

    # 20 tasks would want 10 pods (4 at most), but the work waits on its budget: the value is
    # what the one live pod covers (2 per pod), and the HPA holds at 1.
    eventually(lambda: _served(cluster, pools.namespace, name) == "2", timeout=60)
    eventually(lambda: _hpa_read(pools, name) == "2", timeout=90)
    assert spec_replicas(pools, name) == 1

    # The budget is lifted (no task waits on it any more): the backlog scales the pool.
    started = time.monotonic()
    await redis.delete(board)
    wait_for("budget lifted -> AgentPool.spec.replicas 4", started,
             lambda: spec_replicas(pools, name) == 4)
    await redis.delete(config.stream_key, f"{config.key_prefix}:pods")


def _served(cluster: Cluster, namespace: str, name: str) -> str | None:
    """The pool's value as the metrics API serves it through the aggregator (None: not yet)."""
    code, out = raw_get(cluster, metric_path(namespace, name))
    items = json.loads(out)["items"] if code == 0 else []
    return str(items[0]["value"]) if items else None


def _hpa_read(pools: Pools, name: str) -> str | None:
    """The metric value the HPA controller last read (its status), if any."""
    status = (pools.get("hpa", name) or {}).get("status") or {}
    for metric in status.get("currentMetrics") or []:
        value = ((metric.get("external") or {}).get("current") or {}).get("averageValue")
        if value is not None:
            return str(value)
    return None


def _costs(cluster: Cluster, namespace: str, pool: str) -> list[str]:
    pods = cluster.kubectl_json("-n", namespace, "get", "pods", "-l",
                                f"app.kubernetes.io/instance={pool}")["items"]
    return sorted((p["metadata"].get("annotations") or {}).get(POD_DELETION_COST, "-")
                  for p in pods if not p["metadata"].get("deletionTimestamp"))


async def test_scale_down_removes_idle_pods_and_keeps_the_busy_one(
    cluster: Cluster, metrics_api: MetricsApiServer, operator: OperatorProcess, pools: Pools,
    redis_url: str, redis: Redis,
) -> None:
    name = unique("busy")
    pools.secret(f"{name}-redis", {"url": redis_url})
    pools.create(name, with_secret=False, replicas=3, minReplicas=1, maxReplicas=4)
    eventually(lambda: ready_replicas(pools, name) == 3, timeout=90)
    config = pool_config(pools, name)
    pods = sorted(p["metadata"]["name"] for p in cluster.kubectl_json(
        "-n", pools.namespace, "get", "pods", "-l", f"app.kubernetes.io/instance={name}")["items"])
    assert len(pods) == 3
    busy = pods[1]

    # The busy pod's worker holds three tasks, under the consumer name the runtime gives it.
    await redis.xgroup_create(config.stream_key, config.group, id="0", mkstream=True)
    for i in range(3):
        await redis.xadd(config.stream_key, {"n": str(i)})
    await redis.xreadgroup(config.group, f"{busy}-0a1b2c-0.1", {config.stream_key: ">"},
                           count=3)

    def annotated() -> dict[str, str] | None:
        items = cluster.kubectl_json("-n", pools.namespace, "get", "pods", "-l",
                                     f"app.kubernetes.io/instance={name}")["items"]
        # A pod without the annotation costs 0 (the operator writes none for idle pods).
        costs = {p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(
            POD_DELETION_COST, "0") for p in items}
        wanted = {pod: ("3" if pod == busy else "0") for pod in pods}
        return costs if costs == wanted else None
    eventually(annotated, timeout=30)

    cluster.kubectl("-n", pools.namespace, "scale", "agentpool", name, "--replicas=1")

    def survivors() -> list[str] | None:
        items = cluster.kubectl_json("-n", pools.namespace, "get", "pods", "-l",
                                     f"app.kubernetes.io/instance={name}")["items"]
        alive = [p["metadata"]["name"] for p in items
                 if not p["metadata"].get("deletionTimestamp")]
        return alive if len(alive) == 1 else None
    assert eventually(survivors, timeout=60) == [busy]
    await redis.delete(config.stream_key)


def test_an_unreadable_queue_keeps_the_current_scale_until_the_metric_is_back(
    cluster: Cluster, metrics_api: MetricsApiServer, operator: OperatorProcess, pools: Pools,
    redis_url: str,
) -> None:
    name = unique("dark")
    # Nothing listens on this loopback port: the pool's Redis is down.
    pools.secret(f"{name}-redis", {"url": f"redis://:pw@127.0.0.1:{free_port()}/0"})
    pools.create(name, with_secret=False, replicas=2, minReplicas=1, maxReplicas=4,
                 autoscaling={"enabled": True, "scaleDown": {"stabilizationWindowSeconds": 0}})

    # Once the operator has published the pool's queue, the metric fails: Redis is down.
    def refused() -> str | None:
        code, out = raw_get(cluster, metric_path(pools.namespace, name))
        return out if code != 0 else None

    out = eventually(refused, timeout=30)
    assert "ServiceUnavailable" in out or "503" in out, out
    assert ":pw@" not in out

    def failing_metric() -> dict[str, Any] | None:
        conditions = ((pools.get("hpa", name) or {}).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "ScalingActive"
                     and c["status"] == "False"
                     and c["reason"] == "FailedGetExternalMetric"), None)
    eventually(failing_metric, timeout=60)
    # Several HPA periods (5 s here) later the pool still has the replicas it had.
    time.sleep(12)
    assert spec_replicas(pools, name) == 2

    # Redis is back (the Secret now names the live one): the metric says 0, the pool shrinks.
    pools.secret(f"{name}-redis", {"url": redis_url})
    eventually(lambda: spec_replicas(pools, name) == 1, timeout=90)


# -- the KEDA alternative ---------------------------------------------------------------------


def _stand_in_crd(kind: str, plural: str) -> dict[str, Any]:
    """A schema-less CRD under KEDA's name: KEDA itself is not installed in the test cluster,
    this only makes the operator see `keda.sh/v1alpha1` as served."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.keda.sh"},
        "spec": {"group": "keda.sh", "scope": "Namespaced",
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower(),
                           "listKind": f"{kind}List"},
                 "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {
                                   "type": "object",
                                   "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


def test_provider_keda_renders_a_scaled_object_instead_of_the_hpa_while_keda_is_installed(
    cluster: Cluster, operator: OperatorProcess, pools: Pools,
) -> None:
    name = unique("keda")
    pools.secret(f"{name}-redis", {"url": "redis://:queue-pw@127.0.0.1:6379/2"})
    pools.create(name, with_secret=False, minReplicas=1, maxReplicas=5,
                 autoscaling={"enabled": True, "provider": "keda"})
    # No KEDA CRDs yet: the pool falls back to the builtin HPA.
    eventually(lambda: pools.get("hpa", name))
    crds = [_stand_in_crd("ScaledObject", "scaledobjects"),
            _stand_in_crd("TriggerAuthentication", "triggerauthentications")]
    try:
        for crd in crds:
            cluster.kubectl("apply", "-f", "-", input=json.dumps(crd))
            cluster.wait_condition(f"crd/{crd['metadata']['name']}", "Established")
        scaled = eventually(lambda: pools.get("scaledobject.keda.sh", name), timeout=60)
        assert scaled["spec"]["scaleTargetRef"]["kind"] == "AgentPool"
        trigger = scaled["spec"]["triggers"][0]
        assert trigger["metadata"]["stream"] == f"agentpool:{{{pools.namespace}/{name}}}:tasks"
        assert trigger["metadata"]["databaseIndex"] == "2"
        assert pools.get("triggerauthentication.keda.sh", f"{name}-keda") is not None
        assert pools.get("secret", f"{name}-keda") is not None
        eventually(lambda: pools.get("hpa", name) is None, timeout=30)

        # Back to builtin: the HPA returns and the KEDA objects are pruned.
        cluster.kubectl("-n", pools.namespace, "patch", "agentpool", name, "--type=merge", "-p",
                        json.dumps({"spec": {"autoscaling": {"provider": "builtin"}}}))
        eventually(lambda: pools.get("hpa", name), timeout=30)
        eventually(lambda: pools.get("scaledobject.keda.sh", name) is None, timeout=30)
        eventually(lambda: pools.get("secret", f"{name}-keda") is None, timeout=30)
        assert pools.get("triggerauthentication.keda.sh", f"{name}-keda") is None
    finally:
        cluster.kubectl("-n", pools.namespace, "delete", "agentpool", name, "--wait=true",
                        check=False)
        for crd in crds:
            cluster.kubectl("delete", "crd", crd["metadata"]["name"], "--ignore-not-found",
                            check=False)
