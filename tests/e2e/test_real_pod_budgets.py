"""An AgentBudget enforced across real pods: the pods of two pools share one budget key in
front of a fake provider on the cluster bridge that enforces its limits exactly, as a remote
provider would. The fleet stays within every limit, almost never sees a 429, and uses nearly
all of the limit while work waits; a pod whose processes are killed mid-call (no chance to
release anything) gives its permits back when their lease ends.

The same properties are checked on runtime processes by
tests/integration/runtime/test_budget_fleet.py; here the operator renders the budget into the
pods' configuration and the runtime runs in containers on a real node.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent_runtime.config import RuntimeConfig, parse_config
from agent_runtime.sdk.client import TaskClient
from agentpool_dev import cgroups, realnode
from agentpool_dev.cluster import Cluster
from agentpool_dev.services import ServiceSettings
from tests.fake_provider import FakeProvider, ProviderLimits
from tests.plugins.operator import OperatorProcess, Pools
from tests.plugins.realpods import REAL_NODE_POD, RealNodes
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

RPS = 15
CONCURRENT = 5
RETRY_AFTER_SECONDS = 1.0  # the fake provider's answer to a call over its per-second limit


@pytest.fixture(scope="module")
def handler_image(real_node: realnode.RealNode, real_nodes: RealNodes) -> str:
    return real_nodes.images("test-handlers")["test-handlers"]


async def _provider(cluster: Cluster, limits: ProviderLimits, latency: float) -> FakeProvider:
    """Listening on the bridge's host address, which the pods reach (nothing leaves it)."""
    assert cluster.net is not None
    fake = FakeProvider(limits, latency_seconds=latency, host=cluster.net.host_ip)
    await fake.start()
    return fake


@pytest.fixture
async def provider(cluster: Cluster) -> AsyncIterator[FakeProvider]:
    fake = await _provider(cluster, ProviderLimits(requests_per_second=RPS,
                                                   concurrent_requests=CONCURRENT), 0.2)
    yield fake
    await fake.stop()


def _budget(pools: Pools, name: str, **limits: int) -> None:
    manifest = {"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentBudget",
                "metadata": {"name": name, "namespace": pools.namespace},
                "spec": {"keys": [{"name": "llm", **limits}]}}
    pools.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def _pool(pools: Pools, services: ServiceSettings, image: str, name: str, budget: str,
          replicas: int) -> RuntimeConfig:
    """A pool of `replicas` real pods, one worker with 8 slots each, using `budget`; ready."""
    pools.secret(f"{name}-redis", {"url": services.redis_url})
    pools.create(name, with_secret=False, image=image,
                 handler="tests.e2e.pod_handlers:dispatch",
                 replicas=replicas, maxReplicas=replicas,
                 workers={"perPod": 1, "concurrency": 8},
                 # Short leases, so a killed pod's permits and tasks come back within seconds:
                 # a permit's lease is twice the HTTP timeout.
                 http={"timeoutSeconds": 3},
                 queue={"redis": {"urlSecretRef": {"name": f"{name}-redis", "key": "url"}},
                        "leaseSeconds": 5},
                 budgets=[{"name": budget}],
                 resources={"requests": {"cpu": "50m", "memory": "96Mi"},
                            "limits": {"memory": "256Mi"}},
                 pod=REAL_NODE_POD)
    pools.wait_ready(name, timeout=150)
    eventually(lambda: len(_ready_pods(pools, name)) == replicas or None, timeout=150)
    config_map = pools.get("configmap", f"{name}-config") or {}
    return parse_config(config_map["data"]["runtime.yaml"])


def _ready_pods(pools: Pools, name: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = pools.cluster.kubectl_json(
        "-n", pools.namespace, "get", "pods", "-l", f"app.kubernetes.io/instance={name}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions") or [])]


def _covered(spans: list[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of [start, end] inside any of `spans`."""
    covered, reached = 0.0, start
    for low, high in sorted(spans):
        low, high = max(low, reached), min(high, end)
        if high > low:
            covered += high - low
            reached = high
    return covered


def _kill_runtime(cluster: Cluster, pod: dict[str, Any]) -> None:
    """SIGKILL every process of the pod's runtime container (supervisor and workers), as the
    kernel's OOM killer or a lost node would: nothing is released on the way out."""
    node = cluster.real_node(pod["spec"]["nodeName"])
    [runtime] = [s for s in pod["status"]["containerStatuses"] if s["name"] == "runtime"]
    container = runtime["containerID"].split("//", 1)[1]
    group = cgroups.below(node.cgroup, container)
    assert group is not None, f"no cgroup for container {container} below {node.cgroup}"
    cgroups.kill_all(group)


async def test_three_real_pods_of_two_pools_share_one_budget_within_the_providers_limits(
    cluster: Cluster, pod_services: ServiceSettings, operator: OperatorProcess, pools: Pools,
    handler_image: str, provider: FakeProvider,
) -> None:
    _budget(pools, "provider", requestsPerSecond=RPS, concurrentRequests=CONCURRENT)
    configs = [_pool(pools, pod_services, handler_image, "tenant-a", "provider", 2),
               _pool(pools, pod_services, handler_image, "tenant-b", "provider", 1)]
    # Work waits on the budget, not on workers, even when one pool is left alone with its
    # tasks. The first window's burst, 5 calls at a time, repeats in every window after it:
    # with 4 slots, the one-pod pool alone filled only 4 of each 5 (14.3/s, not 14.7).
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(
            await TaskClient.connect(pod_services.redis_url, config)) for config in configs]
        batches = [await client.submit_many([{"do": "budgeted", "url": provider.url}] * 60)
                   for client in clients]
        done = [result for client, ids in zip(clients, batches, strict=True)
                for result in (await client.wait_many(ids, max_wait=180)).values()]

    assert [r.status for r in done] == ["succeeded"] * 120, {r.error for r in done}
    assert {r.result["status"] for r in done} == {200}
    # Every pod took part (a worker's consumer name starts with its pod's name).
    pods = {p["metadata"]["name"] for name in ("tenant-a", "tenant-b")
            for p in _ready_pods(pools, name)}
    assert {next(p for p in pods if r.worker.startswith(p)) for r in done} == pods
    # Within every limit, across the fleet, in every one-second window.
    assert provider.most_in_any_window(1.0) <= RPS
    assert provider.most_in_flight <= CONCURRENT
    assert provider.throttled <= 0.01 * 120, provider.throttled
    # After the first window's burst, the rate while work waited: at least 95 % of the limit.
    # The second a 429 (at most 1 %, allowed above) told the whole fleet to back off is not
    # budget it could use: on a loaded machine a late call now and then meets one.
    times = sorted(provider.accepted)
    start, end = times[RPS - 1], times[-1]
    backed_off = _covered([(at, at + RETRY_AFTER_SECONDS) for at in provider.refused],
                          start, end)
    steady = (len(times) - RPS) / (end - start - backed_off)
    print(f"fleet of 3 real pods: {steady:.2f}/s of {RPS}/s, {provider.throttled} x 429, "
          f"at most {provider.most_in_flight} in flight")
    assert steady >= 0.95 * RPS, f"{steady:.1f}/s of {RPS}/s"


async def test_a_killed_real_pods_permits_come_back_with_their_lease(
    cluster: Cluster, pod_services: ServiceSettings, operator: OperatorProcess, pools: Pools,
    handler_image: str,
) -> None:
    slow = await _provider(cluster, ProviderLimits(concurrent_requests=4), 2.0)
    try:
        _budget(pools, "slow", concurrentRequests=4)
        config = _pool(pools, pod_services, handler_image, "tenant-c", "slow", 2)
        pods = {p["status"]["podIP"]: p for p in _ready_pods(pools, "tenant-c")}
        async with await TaskClient.connect(pod_services.redis_url, config) as client:
            ids = await client.submit_many([{"do": "budgeted", "url": slow.url}] * 12)
            eventually(lambda: slow.in_flight >= 4 or None, timeout=60, interval=0.05)
            # The pod holding the most permits dies holding them.
            holder = max(pods, key=lambda ip: slow.in_flight_from.get(ip, 0))
            assert slow.in_flight_from.get(holder), (slow.in_flight_from, list(pods))
            _kill_runtime(cluster, pods[holder])
            results = await client.wait_many(ids, max_wait=120)
    finally:
        await slow.stop()
    assert [r.status for r in results.values()] == ["succeeded"] * 12
    # The dead pod's permits came back with their leases (6 s): the work finished, and the
    # provider never saw more than the limit at once.
    assert slow.most_in_flight <= 4
    assert slow.throttled == 0
    # The kill was real: the kubelet restarted the pod's runtime container.
    killed = pools.cluster.kubectl_json("-n", pools.namespace, "get", "pod",
                                        pods[holder]["metadata"]["name"])
    [runtime] = [s for s in killed["status"]["containerStatuses"] if s["name"] == "runtime"]
    assert runtime["restartCount"] >= 1
