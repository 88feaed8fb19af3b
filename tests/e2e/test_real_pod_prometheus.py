"""Prometheus scrapes a pool's real pods at their pod IPs, found through the Kubernetes API
with the labels the chart's PodMonitor gives them; every dashboard query and alert signal that
reads PgBouncer's metrics, which no test could give data before PgBouncer ran in a pod,
returns data from the real pods.

Discovery: Debian's Prometheus (2.42) is built without kubernetes_sd ("field
kubernetes_sd_configs not found in type config.ScrapeConfig"), so the test lists the pods
through the API itself and hands them to Prometheus with file_sd, labelled as the Prometheus
Operator's PodMonitor relabelling would (`namespace`, `pod`, `container`, `agentpool` from the
pod label `agentpool.dev/pool`, the `metrics` port at the pod IP).
"""

from __future__ import annotations

import json
import math
import shutil
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_runtime.config import parse_config
from agent_runtime.sdk.client import TaskClient
from agentpool_dev import procs, realnode
from agentpool_dev.cluster import Cluster
from agentpool_dev.services import ServiceSettings
from tests.chart.promql import EXPORTER_ONLY, metric_names, shipped_expressions
from tests.plugins.operator import OperatorProcess, Pools
from tests.plugins.realpods import REAL_NODE_POD, RealNodes
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

NAME = "scraped"
JOB = "podmonitor/agentpool"


def discovered_targets(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    """file_sd entries for the pool pods of `namespace`: each container port named `metrics`
    at its pod IP, with the labels the chart's PodMonitor relabelling produces."""
    entries = []
    pods = cluster.kubectl_json("-n", namespace, "get", "pods", "-l", "agentpool.dev/pool")
    for pod in pods["items"]:
        ip = pod["status"].get("podIP")
        if not ip or pod["metadata"].get("deletionTimestamp"):
            continue
        for container in pod["spec"]["containers"]:
            for port in container.get("ports") or []:
                if port.get("name") == "metrics":
                    entries.append({"targets": [f"{ip}:{port['containerPort']}"], "labels": {
                        "namespace": namespace, "pod": pod["metadata"]["name"],
                        "container": container["name"],
                        "agentpool": pod["metadata"]["labels"]["agentpool.dev/pool"]}})
    return entries


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Prometheus of this test's own (Debian's binary); its file_sd targets file."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    targets = tmp_path / "targets.json"
    targets.write_text("[]")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": JOB, "file_sd_configs": [
            {"files": [str(targets)], "refresh_interval": "1s"}]}]}))
    port = procs.free_port()
    proc = procs.start("prometheus", [
        binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        tmp_path / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_until("prometheus ready", lambda: procs.http_ok(f"{url}/-/ready"), 60, proc)
        yield url, targets
    finally:
        procs.stop([proc])


def _query(url: str, expr: str) -> dict[str, Any]:
    query = urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = json.loads(error.read())
    return body


def _finite(body: dict[str, Any]) -> list[float]:
    if body.get("status") != "success":
        return []
    data = body["data"]
    values = ([float(data["result"][1])] if data["resultType"] == "scalar"
              else [float(item["value"][1]) for item in data["result"]])
    return [v for v in values if math.isfinite(v)]


async def test_prometheus_scrapes_real_pods_and_the_pgbouncer_queries_have_data(
    real_node: realnode.RealNode, real_nodes: RealNodes, pod_services: ServiceSettings,
    operator: OperatorProcess, pools: Pools, prometheus: tuple[str, Path],
) -> None:
    url, targets = prometheus
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
    pods = {p["metadata"]["name"]: p["status"]["podIP"] for p in pools.cluster.kubectl_json(
        "-n", pools.namespace, "get", "pods", "-l", f"app.kubernetes.io/instance={NAME}")["items"]}
    targets.write_text(json.dumps(discovered_targets(pools.cluster, pools.namespace)))

    def scraped() -> dict[str, str] | None:
        body = _query(url, f'up{{job="{JOB}", agentpool="{NAME}"}} == 1')
        found = {r["metric"]["pod"]: r["metric"]["instance"] for r in body["data"]["result"]}
        return found if set(found) == set(pods) else None

    instances = eventually(scraped, timeout=60)
    assert instances == {pod: f"{ip}:9090" for pod, ip in pods.items()}
    eventually(lambda: _finite(_query(url, f'pgbouncer_up{{agentpool="{NAME}"}}'))
               == [1.0, 1.0], timeout=30)

    expressions = [e for e in shipped_expressions() if metric_names(e.expr) & EXPORTER_ONLY]
    assert len(expressions) >= 6  # the PgBouncer row and the waiting-clients alert

    def answered() -> dict[str, dict[str, Any]] | None:
        answers = {e.expr: _query(url, e.expr) for e in expressions}
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
