"""Memory on a real node: the pod's limit is the kernel's (its container's memory cgroup), a
leaking handler's worker is recycled before that limit is reached, and a task that allocates
past it is killed by the kernel's OOM killer without losing the other tasks.

The handlers are the runtime integration tests' (`tests/e2e/pod_handlers.py`, image
`localhost/agentpool/test-handlers`), which count every execution in Redis.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_runtime.config import RuntimeConfig, parse_config
from agent_runtime.sdk.client import TaskClient
from agentpool_dev import realnode
from agentpool_dev.cluster import Cluster
from agentpool_dev.services import ServiceSettings
from tests.integration.runtime.handlers import executions_key
from tests.plugins.operator import OperatorProcess, Pools
from tests.plugins.realpods import REAL_NODE_POD, RealNodes

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

MIB = 1 << 20


@pytest.fixture(scope="module")
def handlers_image(real_node: realnode.RealNode, real_nodes: RealNodes) -> str:
    return real_nodes.images("test-handlers")["test-handlers"]


def _spec(image: str, *, memory_limit: str, per_pod: int, **extra: Any) -> dict[str, Any]:
    return {
        "image": image,
        "handler": "tests.e2e.pod_handlers:dispatch",
        "replicas": 1,
        "workers": {"perPod": per_pod, "concurrency": 1, **extra.pop("workers", {})},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"memory": memory_limit}},
        "pod": REAL_NODE_POD,
        **extra,
    }


def _start(pools: Pools, services: ServiceSettings, name: str, spec: dict[str, Any]
           ) -> tuple[dict[str, Any], RuntimeConfig]:
    pools.secret(f"{name}-redis", {"url": services.redis_url})
    pools.create(name, with_secret=False, **spec)
    pools.wait_ready(name, timeout=120)
    [pod] = pools.cluster.kubectl_json("-n", pools.namespace, "get", "pods", "-l",
                                       f"app.kubernetes.io/instance={name}")["items"]
    config_map = pools.get("configmap", f"{name}-config") or {}
    return pod, parse_config(config_map["data"]["runtime.yaml"])


def _cgroup(cluster: Cluster, pod: dict[str, Any], name: str) -> Path:
    """A file of the runtime container's own memory cgroup, below its node's cgroup."""
    node = cluster.real_node(pod["spec"]["nodeName"])
    container = pod["status"]["containerStatuses"][0]["containerID"].split("//")[1]
    [found] = Path("/sys/fs/cgroup/memory", node.cgroup).rglob(f"{container}/{name}")
    return found


def _oom_kills(cluster: Cluster, pod: dict[str, Any]) -> int:
    control = _cgroup(cluster, pod, "memory.oom_control").read_text()
    match = re.search(r"^oom_kill (\d+)$", control, re.M)
    assert match, control
    return int(match.group(1))


def _metric(pod: dict[str, Any], pattern: str) -> float:
    url = f"http://{pod['status']['podIP']}:9090/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    match = re.search(pattern + r" ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_a_leaking_worker_is_recycled_before_the_container_limit(
    real_node: realnode.RealNode, handlers_image: str, pod_services: ServiceSettings,
    operator: OperatorProcess, pools: Pools,
) -> None:
    limit = 384 * MIB
    pod, config = _start(pools, pod_services, "leaky", _spec(
        handlers_image, memory_limit="384Mi", per_pod=1,
        workers={"maxMemoryPerWorker": "128Mi"}))
    assert _cgroup(pools.cluster, pod, "memory.limit_in_bytes").read_text().strip() == str(limit)
    tasks = 16  # 16 x 24 MiB kept forever: 384 MiB in one worker, past the container's limit
    async with await TaskClient.connect(pod_services.redis_url, config) as client:
        ids = await client.submit_many({"do": "leak", "mb": 24} for _ in range(tasks))
        results = await client.wait_many(ids, max_wait=240)
    assert {r.status for r in results.values()} == {"succeeded"}
    # Several workers ran them: each was replaced once its USS neared maxMemoryPerWorker,
    # never close to the container's limit.
    pids = {r.result["pid"] for r in results.values()}
    assert len(pids) >= 3, pids
    assert max(r.result["uss"] for r in results.values()) < 0.6 * limit
    recycled = await asyncio.to_thread(
        _metric, pod, r'^agentpool_worker_restarts_total\{reason="memory"\}')
    assert recycled >= 2
    # Not killed by the kernel, not restarted.
    assert _oom_kills(pools.cluster, pod) == 0
    status = pools.cluster.kubectl_json("-n", pools.namespace, "get", "pod",
                                        pod["metadata"]["name"])["status"]
    assert status["containerStatuses"][0]["restartCount"] == 0


async def test_a_task_past_the_container_limit_is_oom_killed_and_nothing_is_lost(
    real_node: realnode.RealNode, handlers_image: str, pod_services: ServiceSettings,
    operator: OperatorProcess, pools: Pools,
) -> None:
    pod, config = _start(pools, pod_services, "bomb", _spec(
        handlers_image, memory_limit="256Mi", per_pod=2,
        queue={"redis": {"urlSecretRef": {"name": "bomb-redis", "key": "url"}},
               "maxDeliveries": 2}))
    before = _oom_kills(pools.cluster, pod)
    async with await TaskClient.connect(pod_services.redis_url, config) as client:
        bystanders = await client.submit_many(
            {"do": "sleepy", "seconds": 1} for _ in range(8))
        bomb = await client.submit({"do": "leak", "mb": 512, "sleep": 5})
        results = await client.wait_many([*bystanders, bomb], max_wait=240)
    # The kernel enforced the limit: the worker that allocated past it was OOM-killed.
    assert _oom_kills(pools.cluster, pod) > before
    # Its task was delivered again (at least once), then dead-lettered with the cause;
    # every other task finished exactly as submitted, none lost.
    failed = results[bomb]
    assert failed.status == "failed"
    assert failed.error is not None
    assert "SIGKILL" in failed.error or "memory" in failed.error, failed.error
    assert {results[i].status for i in bystanders} == {"succeeded"}
    redis = Redis.from_url(pod_services.redis_url, decode_responses=True)
    try:
        executions = await redis.hgetall(executions_key("bomb"))
    finally:
        await redis.aclose()
    assert int(executions[bomb]) == 2  # maxDeliveries
    assert all(int(executions[i]) >= 1 for i in bystanders)
