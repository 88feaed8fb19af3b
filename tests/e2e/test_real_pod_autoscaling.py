"""HPA on the queue with real pods: a burst of slow tasks scales the pool up, the new pods
really start and take work, and when the queue drains the pool scales back down, removing the
idle pods and keeping the one still running a task; no task is lost, duplicates are counted.

The HPA reads `agentpool_queue_backlog` through the aggregator from the metrics API server
(`tests/plugins/metrics_api.py`, a host process), which also keeps the pods' deletion costs.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_runtime.config import parse_config
from agent_runtime.sdk.client import TaskClient
from agentpool_dev import realnode
from agentpool_dev.services import ServiceSettings
from tests.integration.runtime.handlers import executions_key
from tests.plugins.metrics_api import MetricsApiServer
from tests.plugins.operator import OperatorProcess, Pools
from tests.plugins.realpods import REAL_NODE_POD, RealNodes
from tests.waiting import eventually_async

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

NAME = "burst"
MAX_PODS = 3


@pytest.fixture(scope="module")
def handlers_image(real_node: realnode.RealNode, real_nodes: RealNodes) -> str:
    return real_nodes.images("test-handlers")["test-handlers"]


def _live_pods(pools: Pools) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = pools.cluster.kubectl_json(
        "-n", pools.namespace, "get", "pods", "-l", f"app.kubernetes.io/instance={NAME}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod["status"].get("conditions") or [])


async def test_a_burst_scales_real_pods_up_and_the_drained_pool_back_down(
    real_node: realnode.RealNode, handlers_image: str, pod_services: ServiceSettings,
    metrics_api: MetricsApiServer, operator: OperatorProcess, pools: Pools,
) -> None:
    pools.secret(f"{NAME}-redis", {"url": pod_services.redis_url})
    pools.create(NAME, with_secret=False, image=handlers_image,
                 handler="tests.e2e.pod_handlers:dispatch", minReplicas=1,
                 maxReplicas=MAX_PODS, workers={"perPod": 1, "concurrency": 2},
                 resources={"requests": {"cpu": "50m", "memory": "96Mi"},
                            "limits": {"memory": "256Mi"}},
                 autoscaling={"enabled": True, "targetBacklogPerWorker": 1,
                              "scaleDown": {"stabilizationWindowSeconds": 5, "policies": [
                                  {"type": "Percent", "value": 100, "periodSeconds": 15}]}},
                 pod=REAL_NODE_POD)
    pools.wait_ready(NAME, timeout=120)
    [first] = _live_pods(pools)
    config_map = pools.get("configmap", f"{NAME}-config") or {}
    config = parse_config(config_map["data"]["runtime.yaml"])

    redis = Redis.from_url(pod_services.redis_url, decode_responses=True)
    async with await TaskClient.connect(pod_services.redis_url, config) as client:
        started = time.monotonic()
        burst = await client.submit_many({"do": "sleepy", "seconds": 3} for _ in range(30))
        # Queued last, the long task still runs on one pod when the rest has drained: the
        # scale-down that follows must keep that pod (its deletion cost is its running
        # tasks, kept current by the metrics API) and remove the idle ones.
        last = await client.submit({"do": "sleepy", "seconds": 40})

        async def scaled_up() -> list[dict[str, Any]] | None:
            pods = [p for p in _live_pods(pools) if _ready(p)]
            return pods if len(pods) == MAX_PODS else None

        pods = await eventually_async(scaled_up, within=120)
        print(f"REACTION burst -> {MAX_PODS} ready real pods: {time.monotonic() - started:.1f}s")
        assert {p["spec"]["nodeName"] for p in pods} <= set(pools.cluster.real_nodes)
        results = await client.wait_many(burst, max_wait=240)
        # The handler counts an execution when it starts.
        assert await redis.hget(executions_key(NAME), last) == "1"
        assert await client.get(last) is None

        async def scaled_down() -> list[dict[str, Any]] | None:
            alive = _live_pods(pools)
            return alive if len(alive) == 1 else None

        [survivor] = await eventually_async(scaled_down, within=120)
        final = await client.wait(last, max_wait=90)

    assert {r.status for r in results.values()} == {"succeeded"}
    workers_by_pod = {r.worker.rsplit("-", 2)[0] for r in results.values()}
    new_pods = {p["metadata"]["name"] for p in pods} - {first["metadata"]["name"]}
    assert workers_by_pod & new_pods, "no task ran on a pod the HPA added"
    # The pod still working was kept; the idle ones went.
    assert final.status == "succeeded"
    assert final.worker.startswith(survivor["metadata"]["name"])
    try:
        executions = await redis.hgetall(executions_key(NAME))
    finally:
        await redis.aclose()
    counts = [int(executions.get(task, 0)) for task in [*burst, last]]
    duplicates = sum(count - 1 for count in counts if count > 1)
    print(f"DUPLICATES {duplicates} of {len(counts)} tasks")
    assert min(counts) == 1  # none lost
    assert duplicates == 0  # the scale-down drained idle pods: nothing ran twice
