"""A rolling update of a pool on real pods under steady load: a changed spec rolls every pod
(surge first, maxUnavailable 0), the old pods drain their tasks on SIGTERM, and no task is lost
(duplicates, which at-least-once allows, are counted)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_runtime.config import parse_config
from agent_runtime.sdk.client import TaskClient
from agentpool_dev import realnode
from agentpool_dev.services import ServiceSettings
from tests.integration.runtime.handlers import executions_key
from tests.plugins.operator import OperatorProcess, Pools
from tests.plugins.realpods import REAL_NODE_POD, RealNodes
from tests.waiting import eventually_async

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

NAME = "rolled"


def _pods(pools: Pools) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = pools.cluster.kubectl_json(
        "-n", pools.namespace, "get", "pods", "-l", f"app.kubernetes.io/instance={NAME}")["items"]
    return items


async def test_a_rolling_update_under_load_loses_no_task(
    real_node: realnode.RealNode, real_nodes: RealNodes, pod_services: ServiceSettings,
    operator: OperatorProcess, pools: Pools,
) -> None:
    image = real_nodes.images("test-handlers")["test-handlers"]
    pools.secret(f"{NAME}-redis", {"url": pod_services.redis_url})
    pools.create(NAME, with_secret=False, image=image,
                 handler="tests.e2e.pod_handlers:dispatch", replicas=2, maxReplicas=2,
                 workers={"perPod": 1, "concurrency": 4, "taskTimeoutSeconds": 20,
                          "drainGracePeriodSeconds": 20},
                 resources={"requests": {"cpu": "50m", "memory": "96Mi"},
                            "limits": {"memory": "256Mi"}},
                 pod=REAL_NODE_POD)
    pools.wait_ready(NAME, timeout=120)
    old = {p["metadata"]["uid"] for p in _pods(pools)}
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
        # A config change (concurrency) changes the pod template's config hash: a rollout.
        pools.cluster.kubectl("-n", pools.namespace, "patch", "agentpool", NAME, "--type=merge",
                              "-p", json.dumps({"spec": {"workers": {"concurrency": 3}}}))

        async def rolled() -> bool:
            pods = [p for p in _pods(pools) if not p["metadata"].get("deletionTimestamp")]
            ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                            for c in p["status"].get("conditions") or [])]
            return (len(pods) == 2 and len(ready) == 2
                    and not {p["metadata"]["uid"] for p in pods} & old)

        await eventually_async(rolled, within=180)
        await asyncio.sleep(3)
        load.cancel()
        results = await client.wait_many(submitted, max_wait=180)

    assert not {p["metadata"]["uid"] for p in _pods(pools)} & old  # every pod replaced
    assert {r.status for r in results.values()} == {"succeeded"}
    redis = Redis.from_url(pod_services.redis_url, decode_responses=True)
    try:
        executions = await redis.hgetall(executions_key(NAME))
    finally:
        await redis.aclose()
    counts = [int(executions.get(task, 0)) for task in submitted]
    duplicates = sum(count - 1 for count in counts if count > 1)
    print(f"ROLLOUT {len(submitted)} tasks under load, {duplicates} run twice")
    assert min(counts) == 1  # none lost
