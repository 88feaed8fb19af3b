"""`kubectl drain` of a real node under steady load: evictions respect the pool's
PodDisruptionBudget (maxUnavailable 1), the evicted pods drain their tasks on SIGTERM, and no
task is lost (duplicates, which at-least-once allows, are counted).

Needs a second real node: it joins the session's cluster here and stays for the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_runtime.config import parse_config
from agent_runtime.sdk.client import TaskClient
from agentpool_dev import images, realnode
from agentpool_dev.cluster import Cluster
from agentpool_dev.services import ServiceSettings
from tests.integration.runtime.handlers import executions_key
from tests.plugins.operator import OperatorProcess, Pools
from tests.plugins.realpods import REAL_NODE_POD, RealNodes
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

NAME = "drained"


@pytest.fixture(scope="module")
def two_real_nodes(real_node: realnode.RealNode, real_nodes: RealNodes
                   ) -> tuple[realnode.RealNode, realnode.RealNode]:
    real_nodes.images("test-handlers")
    first, second = real_nodes.nodes(2)
    return first, second


@pytest.fixture
def cordoned(cluster: Cluster) -> Iterator[list[str]]:
    """Nodes a test cordons; all uncordoned afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        cluster.kubectl("uncordon", name, check=False)


def _pods(pools: Pools) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = pools.cluster.kubectl_json(
        "-n", pools.namespace, "get", "pods", "-l", f"app.kubernetes.io/instance={NAME}")["items"]
    return items


def _ready_on(pools: Pools) -> list[str]:
    return [p["spec"]["nodeName"] for p in _pods(pools)
            if any(c["type"] == "Ready" and c["status"] == "True"
                   for c in p["status"].get("conditions") or [])]


async def test_draining_a_real_node_respects_the_budget_and_loses_no_task(
    cluster: Cluster, two_real_nodes: tuple[realnode.RealNode, realnode.RealNode],
    pod_services: ServiceSettings, operator: OperatorProcess, pools: Pools,
    cordoned: list[str],
) -> None:
    stay, leave = two_real_nodes
    # Both pods on the node that will be drained, so its drain must wait for the budget.
    cluster.kubectl("cordon", stay.name)
    cordoned.append(stay.name)
    pools.secret(f"{NAME}-redis", {"url": pod_services.redis_url})
    pools.create(NAME, with_secret=False, image=images.catalog()["test-handlers"].name,
                 handler="tests.e2e.pod_handlers:dispatch", replicas=2, maxReplicas=2,
                 workers={"perPod": 1, "concurrency": 4, "taskTimeoutSeconds": 20,
                          "drainGracePeriodSeconds": 20},
                 resources={"requests": {"cpu": "50m", "memory": "96Mi"},
                            "limits": {"memory": "256Mi"}},
                 pod=REAL_NODE_POD)
    pools.wait_ready(NAME, timeout=120)
    # The pool is Ready with its minimum available; the drain needs both pods up.
    eventually(lambda: sorted(_ready_on(pools)) == [leave.name, leave.name], timeout=120)
    cluster.kubectl("uncordon", stay.name)
    config_map = pools.get("configmap", f"{NAME}-config") or {}
    config = parse_config(config_map["data"]["runtime.yaml"])

    async with await TaskClient.connect(pod_services.redis_url, config) as client:
        submitted: list[str] = []

        async def steady_load() -> None:
            while True:
                submitted.extend(await client.submit_many(
                    {"do": "sleepy", "seconds": 1} for _ in range(4)))
                await asyncio.sleep(0.5)

        load = asyncio.create_task(steady_load())
        await asyncio.sleep(3)
        cordoned.append(leave.name)
        drain = await asyncio.to_thread(
            cluster.kubectl, "drain", leave.name, "--ignore-daemonsets",
            "--delete-emptydir-data", "--timeout=180s", check=False, timeout=240)
        await asyncio.sleep(3)
        load.cancel()
        results = await client.wait_many(submitted, max_wait=180)

    output = drain.stdout + drain.stderr
    assert drain.returncode == 0, output
    # The second eviction was refused until the first pod's replacement was ready.
    assert "disruption budget" in output, output
    assert sorted(_ready_on(pools)) == [stay.name, stay.name]
    assert {r.status for r in results.values()} == {"succeeded"}
    redis = Redis.from_url(pod_services.redis_url, decode_responses=True)
    try:
        executions = await redis.hgetall(executions_key(NAME))
    finally:
        await redis.aclose()
    counts = [int(executions.get(task, 0)) for task in submitted]
    duplicates = sum(count - 1 for count in counts if count > 1)
    print(f"DRAIN {len(submitted)} tasks under load, {duplicates} run twice")
    assert min(counts) == 1  # none lost
