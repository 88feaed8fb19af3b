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

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import redis
from agentpool_tools.crd import CRD_NAME

from agentpool_dev.cluster import Cluster
from agentpool_dev.services import ServiceSettings
from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.deletioncost import POD_DELETION_COST
from agentpool_operator.queues import queue_keys
from tests.plugins.chart import container_of
from tests.plugins.operator import Pools
from tests.plugins.releases import (
    RESYNC_SECONDS,
    Release,
    disown_crd,
    drop_hpa_reader,
    hpa_reader_token,
    new_namespace,
    pool,
    release_values,
)
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]


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
    # The CRD other tests applied with kubectl: this release adopts it (Helm >= 3.17).
    disown_crd(cluster)
    status = release.install(release_values(operator={"watchAllNamespaces": True}),
                             "install", "--take-ownership")
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
    assert f"helm test {release.name} -n {release.namespace}" in notes
    operator_args = container_of(release.deployment(release.fullname), "operator")["args"]
    assert [a for a in operator_args if a.startswith("--namespace")] == [
        f"--namespace={n}" for n in watched]
    assert_namespace_users_manage_pools(cluster, watched[0])

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


def assert_namespace_users_manage_pools(cluster: Cluster, namespace: str) -> None:
    """Users bound to Kubernetes' default roles in a namespace get the chart's aggregated
    AgentPool rights (the controller-manager aggregates them): editors manage pools and their
    scale, viewers read them, and neither writes the operator's status."""
    for user, role in (("alice", "edit"), ("bob", "view")):
        cluster.kubectl("create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}",
                        f"--user={user}", "-n", namespace)

    def can(user: str, verb: str, subresource: str = "") -> bool:
        answer = cluster.kubectl("auth", "can-i", verb, "agentpools.agentpool.dev",
                                 f"--subresource={subresource}", "--as", user, "-n",
                                 namespace, check=False).stdout.strip()
        return answer == "yes"

    assert eventually(lambda: can("alice", "create"), timeout=30)
    assert can("alice", "delete")
    assert can("alice", "patch", "scale")
    assert eventually(lambda: can("bob", "list"), timeout=30)
    assert can("bob", "get", "status")
    assert not can("bob", "create")
    assert not can("bob", "patch", "scale")
    for user in ("alice", "bob"):
        assert not can(user, "patch", "status")
        assert not can(user, "update", "status")


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
