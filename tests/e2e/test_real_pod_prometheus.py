"""Prometheus finds a pool's real pods through the Kubernetes API and scrapes them at their pod
IPs; every dashboard query and alert signal that reads PgBouncer's metrics, which no test could
give data before PgBouncer ran in a pod, returns data from the real pods.

Prometheus 3.16, built from its Go module with Kubernetes service discovery only
(`hack/testcluster/build.sh prometheus`: Debian's 2.42 has none), is configured as the
Prometheus Operator configures it from the chart's PodMonitor (`tests/chart/podmonitor.py`):
role `pod` in the pool's namespace, the PodMonitor's selector and port, its relabelling of the
pod label `agentpool.dev/pool` into `agentpool`. It asks the API server as a ServiceAccount of
its own that may list and watch pods in that namespace and do nothing else, and it follows the
pods by itself: a replaced pod's successor is scraped without anyone touching Prometheus.
"""

from __future__ import annotations

import json
import math
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_runtime.config import parse_config
from agent_runtime.sdk.client import TaskClient
from agentpool_dev import procs, realnode
from agentpool_dev.cluster import Cluster, find_prometheus
from agentpool_dev.services import ServiceSettings
from tests.chart.podmonitor import ApiServer, scrape_configs
from tests.chart.promql import EXPORTER_ONLY, metric_names, shipped_expressions
from tests.plugins.chart import Helm
from tests.plugins.operator import OperatorProcess, Pools
from tests.plugins.realpods import REAL_NODE_POD, RealNodes
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

NAME = "scraped"
ACCOUNT = "prometheus"
POD_MONITOR_API = "monitoring.coreos.com/v1/PodMonitor"


@dataclass(frozen=True)
class Prometheus:
    url: str
    job: str
    """The `job` label of the chart's PodMonitor targets (`<namespace>/<PodMonitor name>`)."""


def _scraper_token(cluster: Cluster, namespace: str, path: Path) -> Path:
    """A ServiceAccount for Prometheus that may list and watch the namespace's pods, and
    nothing else; a bound token of it in `path`."""
    manifests = [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": ACCOUNT, "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": ACCOUNT, "namespace": namespace},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": ACCOUNT, "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ACCOUNT},
         "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": namespace}]},
    ]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                          "items": manifests}))
    token = cluster.kubectl("create", "token", ACCOUNT, "-n", namespace, "--duration=1h")
    path.write_text(token.stdout.strip())
    path.chmod(0o600)
    return path


def _chart_pod_monitor(helm: Helm, namespace: str) -> dict[str, Any]:
    """The chart's PodMonitor for pool pods in `namespace`, scraped every second (the test's
    only change to its defaults), as the chart renders it where the API is served."""
    rendered = helm.render({"podMonitor": {"enabled": True, "namespaces": [namespace],
                                           "interval": "1s", "scrapeTimeout": "1s"}},
                           namespace=namespace, api_versions=[POD_MONITOR_API])
    [monitor] = [doc for doc in rendered if doc["kind"] == "PodMonitor"]
    return monitor


@pytest.fixture
def prometheus(cluster: Cluster, helm_offline: Helm, namespace: str, tmp_path: Path
               ) -> Iterator[Prometheus]:
    monitor = _chart_pod_monitor(helm_offline, namespace)
    api = ApiServer(host=cluster.server,
                    token_file=str(_scraper_token(cluster, namespace, tmp_path / "token")),
                    ca_file=str(cluster.state_dir / "pki" / "ca.crt"))
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": scrape_configs(monitor, api)}))
    port = procs.free_port()
    proc = procs.start("prometheus", [
        str(find_prometheus()), f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        tmp_path / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_until("prometheus ready", lambda: procs.http_ok(f"{url}/-/ready"), 60, proc)
        yield Prometheus(url, f"{namespace}/{monitor['metadata']['name']}")
    finally:
        procs.stop([proc])
        print(f"--- prometheus log tail ---\n{procs.log_tail(tmp_path / 'prometheus.log', 20)}")


def _get(url: str, path: str, **params: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}",
                                    timeout=10) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = json.loads(error.read())
    return body


def _query(url: str, expr: str) -> dict[str, Any]:
    return _get(url, "/api/v1/query", query=expr)


def _finite(body: dict[str, Any]) -> list[float]:
    if body.get("status") != "success":
        return []
    data = body["data"]
    values = ([float(data["result"][1])] if data["resultType"] == "scalar"
              else [float(item["value"][1]) for item in data["result"]])
    return [v for v in values if math.isfinite(v)]


def _pod_ips(pools: Pools) -> dict[str, str]:
    """Pod name -> pod IP of the pool's pods that are not being deleted."""
    return {p["metadata"]["name"]: p["status"]["podIP"] for p in pools.cluster.kubectl_json(
        "-n", pools.namespace, "get", "pods", "-l", f"app.kubernetes.io/instance={NAME}")["items"]
        if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")}


def _scraped(prometheus: Prometheus) -> dict[str, str]:
    """Pod -> instance of the pool's targets that Prometheus scrapes successfully."""
    body = _query(prometheus.url, f'up{{job="{prometheus.job}", agentpool="{NAME}"}} == 1')
    return {r["metric"]["pod"]: r["metric"]["instance"] for r in body["data"]["result"]}


def _can(cluster: Cluster, namespace: str, *question: str) -> bool:
    asked = cluster.kubectl("auth", "can-i", *question, "-n", namespace,
                            f"--as=system:serviceaccount:{namespace}:{ACCOUNT}", check=False)
    return asked.stdout.strip() == "yes"


def _assert_least_privilege(cluster: Cluster, namespace: str) -> None:
    assert _can(cluster, namespace, "list", "pods")
    assert _can(cluster, namespace, "watch", "pods")
    for question in (("get", "secrets"), ("list", "services"), ("list", "endpointslices"),
                     ("create", "pods"), ("get", "pods/log")):
        assert not _can(cluster, namespace, *question), question
    assert not _can(cluster, "default", "list", "pods")
    assert not _can(cluster, namespace, "list", "pods", "--all-namespaces")


async def test_prometheus_finds_real_pods_through_the_api_and_the_pgbouncer_queries_have_data(
    real_node: realnode.RealNode, real_nodes: RealNodes, pod_services: ServiceSettings,
    operator: OperatorProcess, pools: Pools, prometheus: Prometheus,
) -> None:
    image = real_nodes.images("echo-agent")["echo-agent"]
    pools.secret(f"{NAME}-redis", {"url": pod_services.redis_url})
    pools.secret(f"{NAME}-db", {"dsn": pod_services.postgres_dsn})
    pools.create(NAME, with_secret=False, image=image, handler="examples.handlers.echo:handle",
                 replicas=2, maxReplicas=2,
                 database={"dsnSecretRef": {"name": f"{NAME}-db", "key": "dsn"},
                           "connectionBudget": 16, "pgbouncer": {"defaultPoolSize": 4}},
                 resources={"requests": {"cpu": "50m", "memory": "96Mi"},
                            "limits": {"memory": "384Mi"}},
                 pod=REAL_NODE_POD)
    pools.wait_ready(NAME, timeout=120)
    config_map = pools.get("configmap", f"{NAME}-config") or {}
    async with await TaskClient.connect(pod_services.redis_url,
                                        parse_config(config_map["data"]["runtime.yaml"])
                                        ) as client:
        await client.wait_many(await client.submit_many({"n": n} for n in range(40)),
                               max_wait=120)

    # Both pods found through the API server and scraped at their pod IPs.
    pods = _pod_ips(pools)
    assert len(pods) == 2
    instances = eventually(lambda: (found := _scraped(prometheus)) and set(found) == set(pods)
                           and found, timeout=60)
    assert instances == {pod: f"{ip}:9090" for pod, ip in pods.items()}
    targets = _get(prometheus.url, "/api/v1/targets", state="active")["data"]["activeTargets"]
    discovered = {t["discoveredLabels"]["__meta_kubernetes_pod_name"]:
                  t["discoveredLabels"]["__meta_kubernetes_pod_node_name"]
                  for t in targets if t["labels"].get("agentpool") == NAME}
    assert set(discovered) == set(pods)
    assert set(discovered.values()) <= set(pools.cluster.real_nodes)
    # ... as an identity that may list and watch this namespace's pods, and nothing else.
    _assert_least_privilege(pools.cluster, pools.namespace)

    eventually(lambda: _finite(_query(prometheus.url, f'pgbouncer_up{{agentpool="{NAME}"}}'))
               == [1.0, 1.0], timeout=30)
    expressions = [e for e in shipped_expressions() if metric_names(e.expr) & EXPORTER_ONLY]
    assert len(expressions) >= 6  # the PgBouncer row and the waiting-clients alert

    def answered() -> dict[str, dict[str, Any]] | None:
        answers = {e.expr: _query(prometheus.url, e.expr) for e in expressions}
        # Full alert expressions fire only under pressure: they must be valid; every
        # dashboard query and alert signal must return data.
        missing = [e for e in expressions
                   if (not e.where.startswith("alert ") or e.where.endswith(" signal"))
                   and not _finite(answers[e.expr])]
        return answers if not missing else None

    answers = eventually(answered, timeout=60, interval=2)
    invalid = {e.where: answers[e.expr].get("error") for e in expressions
               if answers[e.expr].get("status") != "success"}
    assert not invalid, invalid

    # A pod replaced: Prometheus finds and scrapes its successor by itself.
    gone = sorted(pods)[0]
    pools.cluster.kubectl("-n", pools.namespace, "delete", "pod", gone, "--wait=false")

    def successor() -> dict[str, str] | None:
        new = {pod: ip for pod, ip in _pod_ips(pools).items() if pod not in pods}
        scraped = _scraped(prometheus)
        return new if new and all(scraped.get(pod) == f"{ip}:9090"
                                  for pod, ip in new.items()) else None

    [new_pod] = eventually(successor, timeout=120)
    assert new_pod != gone

