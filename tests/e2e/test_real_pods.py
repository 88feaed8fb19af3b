"""AgentPools on a real node: the images built here run, the operator's pods really start, and
tasks submitted from outside are processed in them with results stored through PgBouncer.

Nothing is simulated below the API server: containerd runs the example handler image (the
runtime base image plus examples/handlers) and the default PgBouncer image; Redis and
PostgreSQL are real servers on the cluster bridge; the operator runs as a process on the host.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import urllib.request
from typing import Any

import asyncpg
import pytest

from agent_runtime.config import RuntimeConfig, parse_config
from agent_runtime.sdk.client import TaskClient
from agentpool_dev import images, realnode
from agentpool_dev.services import ServiceSettings, postgres_log
from tests.plugins.operator import OperatorProcess, Pools
from tests.plugins.realpods import REAL_NODE_POD
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

TASKS = 40


def _pool_spec(services: ServiceSettings, name: str) -> dict[str, Any]:
    return {
        "image": images.catalog()["echo-agent"].name,
        "handler": "examples.handlers.echo:handle",
        "replicas": 1,
        "maxReplicas": 4,
        "workers": {"perPod": 2, "concurrency": 4},
        "resources": {"requests": {"cpu": "100m", "memory": "192Mi"},
                      "limits": {"memory": "512Mi"}},
        "queue": {"redis": {"urlSecretRef": {"name": f"{name}-redis", "key": "url"}}},
        "database": {"dsnSecretRef": {"name": f"{name}-db", "key": "dsn"},
                     "connectionBudget": 16, "pgbouncer": {"defaultPoolSize": 4}},
        "pod": REAL_NODE_POD,
    }


def _pods(pools: Pools, name: str) -> list[dict[str, Any]]:
    found = pools.cluster.kubectl_json("-n", pools.namespace, "get", "pods", "-l",
                                       f"app.kubernetes.io/instance={name}")
    pods: list[dict[str, Any]] = found["items"]
    return pods


def _started(status: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(status["state"]["running"]["startedAt"])


def _runtime_config(pools: Pools, name: str) -> RuntimeConfig:
    config_map = pools.get("configmap", f"{name}-config") or {}
    return parse_config(config_map["data"]["runtime.yaml"])


async def test_a_pool_with_a_database_processes_tasks_in_real_pods(
    real_node: realnode.RealNode, pod_services: ServiceSettings, operator: OperatorProcess,
    pools: Pools,
) -> None:
    services = pod_services
    pools.secret("echo-redis", {"url": services.redis_url})
    pools.secret("echo-db", {"dsn": services.postgres_dsn})
    pools.create("echo", with_secret=False, **_pool_spec(services, "echo"))
    pools.wait_ready("echo", timeout=180)

    [pod] = _pods(pools, "echo")
    # On a real node (the session may have more than one), with an address of its pod CIDR.
    node = pools.cluster.real_node(pod["spec"]["nodeName"])
    assert pod["status"]["podIP"].startswith(node.pod_cidr.rsplit(".", 1)[0] + ".")
    # Every container the operator renders by default for a pool with a database.
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["pgbouncer"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["runtime"]
    [sidecar] = pod["status"]["initContainerStatuses"]
    [runtime] = pod["status"]["containerStatuses"]
    # The native sidecar really runs, and started before the runtime container.
    assert sidecar["name"] == "pgbouncer"
    # Started: its startup probe (a connection to PgBouncer on loopback, from inside the
    # container) passed, which the kubelet waited for before starting the runtime.
    assert {"startupProbe", "livenessProbe"} <= set(pod["spec"]["initContainers"][0])
    assert sidecar["started"] is True
    assert runtime["name"] == "runtime"
    assert runtime["ready"] is True  # its startup and readiness probes passed
    assert runtime["restartCount"] == 0
    assert sidecar["restartCount"] == 0
    assert _started(sidecar) <= _started(runtime)

    config = _runtime_config(pools, "echo")
    client = await TaskClient.connect(services.redis_url, config)
    async with client:
        ids = await client.submit_many({"n": n} for n in range(TASKS))
        results = await client.wait_many(ids, max_wait=120)
    assert {r.task_id for r in results.values()} == set(ids)
    assert {r.status for r in results.values()} == {"succeeded"}
    assert sorted(r.result["echo"]["n"] for r in results.values()) == list(range(TASKS))
    # Processed by the pod's workers (the consumer name starts with the pod's name).
    pod_name = pod["metadata"]["name"]
    assert all(r.worker.startswith(pod_name) for r in results.values())

    # Stored in PostgreSQL, through the pod's PgBouncer: the server connections come from
    # the pod's address, not from the runtime directly (it only knows 127.0.0.1:6432).
    connection = await asyncpg.connect(services.postgres_dsn)
    try:
        rows = await connection.fetch(
            "SELECT task_id, status, worker FROM agentpool_task_results WHERE task_id = ANY($1)",
            ids)
        clients = await connection.fetch(
            "SELECT DISTINCT host(client_addr) AS addr FROM pg_stat_activity "
            "WHERE usename = $1 AND client_addr IS NOT NULL AND pid <> pg_backend_pid()",
            services.user)
    finally:
        await connection.close()
    assert len(rows) == TASKS
    assert {row["status"] for row in rows} == {"succeeded"}
    assert {row["worker"].startswith(pod_name) for row in rows} == {True}
    assert pod["status"]["podIP"] in {row["addr"] for row in clients}
    # In transaction mode with prepared statements on: the runtime's asyncpg caches named
    # statements, and PgBouncer (>= 1.21) prepares them on whichever server connection runs
    # the transaction under names of its own.
    stored_by_name = re.compile(r"execute PGBOUNCER_\d+:\s*INSERT INTO agentpool_task_results")
    assert stored_by_name.search(postgres_log(services).read_text()), "no prepared INSERT"

    logs = pools.cluster.kubectl("-n", pools.namespace, "logs", pod_name, "-c", "runtime").stdout
    assert "started worker" in logs, logs[-2000:]

    # The runtime's /metrics, scraped from the host at the pod's address as Prometheus
    # would, carries PgBouncer's pool metrics read from the sidecar as the stats user.
    metrics = await asyncio.to_thread(_scrape, f"http://{pod['status']['podIP']}:9090/metrics")
    assert re.search(r"^pgbouncer_up 1\.0$", metrics, re.M), metrics[-3000:]
    assert re.search(r'^pgbouncer_databases_pool_size\{.*name="agentpool".*\} 4\.0$',
                     metrics, re.M), metrics[-3000:]
    assert re.search(r'^pgbouncer_pools_server_idle_connections\{database="agentpool",'
                     r'user="agentpool"\} [1-9]', metrics, re.M), metrics[-3000:]
    assert re.search(r"^agentpool_tasks_processed_total\{", metrics, re.M)


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _describe(pools: Pools, name: str) -> str:
    return json.dumps([p["status"] for p in _pods(pools, name)], indent=1)[-3000:]


def test_pool_pods_stay_off_real_nodes_unless_they_ask(
    real_node: realnode.RealNode, operator: OperatorProcess, pools: Pools,
) -> None:
    """The session's cluster keeps KWOK the default: a pool that says nothing lands there."""
    pools.create("plain", replicas=1)
    pools.wait_ready("plain")
    nodes = eventually(lambda: [p["spec"].get("nodeName") for p in _pods(pools, "plain")
                                if p["spec"].get("nodeName")])
    assert all(n.startswith("kwok-node-") for n in nodes), _describe(pools, "plain")
