"""Idle pods go first on scale-down: keep `controller.kubernetes.io/pod-deletion-cost` current.

Run by `__main__.py` every `--deletion-cost-interval` seconds. For each AgentPool it reads
the queue (`backlog.py`: the in-flight tasks of every Redis consumer, from XPENDING), maps
consumers to the pool's pods, and annotates each pod with the number of tasks it is running.
When the HPA (or `kubectl scale`) lowers the replicas, the ReplicaSet controller deletes the
ready pods with the lowest cost first (KEP-2255): idle pods (cost 0) before busy ones, and
among busy pods the one with the least work. A pod's annotation is written only when its
value changes. The same pass refreshes the per-pool queue gauges of `telemetry.py`.

Consumers map to pods by the runtime's naming: the supervisor names each worker's consumer
`<pod name>-<boot id>-<slot>.<generation>` (agent_runtime/supervisor.py), so a consumer
belongs to the pod whose name plus "-" is its longest matching prefix. The contract test
`tests/unit/operator/test_metrics_api_contract.py` keeps this rule in step with the runtime.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from agent_runtime.contract import pod_of_consumer
from agentpool_operator.builders.common import selector_labels
from agentpool_operator.metrics_api.backlog import Backlog, BacklogError, BacklogReader
from agentpool_operator.metrics_api.kube import Kube, KubeError
from agentpool_operator.metrics_api.pools import PoolDirectory, PoolError, PoolTarget
from agentpool_operator.metrics_api.telemetry import Telemetry

log = logging.getLogger(__name__)

POD_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
MAX_COST = 2**31 - 1  # the annotation is an int32
CONCURRENT_POOLS = 8


def pod_for_consumer(consumer: str, pods: Iterable[str]) -> str | None:
    """The pod a Redis consumer runs in, or None (a pod that is gone, or a foreign client)."""
    return pod_of_consumer(consumer, tuple(pods))


def deletion_costs(pods: Iterable[str], in_flight: Mapping[str, int]) -> dict[str, int]:
    """Each pod's cost: the tasks its consumers hold (0 for an idle pod)."""
    names = list(pods)
    costs = dict.fromkeys(names, 0)
    for consumer, count in in_flight.items():
        pod = pod_for_consumer(consumer, names)
        if pod is not None:
            costs[pod] = min(MAX_COST, costs[pod] + count)
    return costs


class DeletionCostKeeper:
    """The periodic pass over every pool (see the module docstring)."""

    def __init__(self, kube: Kube, pools: PoolDirectory, reader: BacklogReader,
                 telemetry: Telemetry, namespaces: tuple[str, ...] = ()) -> None:
        self._kube = kube
        self._pools = pools
        self._reader = reader
        self._telemetry = telemetry
        self._namespaces = namespaces
        self._failing: dict[tuple[str, str], str] = {}
        self.passes = 0

    async def run(self, interval: float) -> None:
        while True:
            try:
                await self.run_once()
            except KubeError as error:
                log.warning("deletion-cost pass failed: %s", error)
            except Exception:
                # Keep the loop alive whatever happened; the next pass starts afresh.
                log.exception("deletion-cost pass failed")
            await asyncio.sleep(interval)

    async def run_once(self) -> None:
        pools: list[dict[str, Any]] = []
        for namespace in self._namespaces or (None,):
            pools.extend(await self._kube.list_pools(namespace))
        present = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pools}
        limit = asyncio.Semaphore(CONCURRENT_POOLS)

        async def one(pool: dict[str, Any]) -> None:
            async with limit:
                await self._pool(pool)

        await asyncio.gather(*(one(pool) for pool in pools))
        self._telemetry.keep_only(present)
        self._pools.forget_missing(present)
        for key in set(self._failing) - present:
            del self._failing[key]
        self.passes += 1

    async def _pool(self, pool: dict[str, Any]) -> None:
        meta = pool["metadata"]
        key = (meta["namespace"], meta["name"])
        try:
            target = await self._pools.resolve(pool)
            backlog = await self._reader.read(target.redis_url, target.keys)
        except (PoolError, BacklogError, KubeError) as error:
            self._telemetry.queue_errors.inc()
            # Once per failure, not once per pass: a Redis outage must not flood the log.
            if self._failing.get(key) != str(error):
                log.warning("pool %s/%s: %s", key[0], key[1], error)
            self._failing[key] = str(error)
            return
        if self._failing.pop(key, None) is not None:
            log.info("pool %s/%s: queue readable again", key[0], key[1])
        self._telemetry.observe_pool(target.namespace, target.name, backlog.waiting,
                                     backlog.in_flight, backlog.oldest_waiting_seconds)
        try:
            await self._annotate(target, backlog)
        except KubeError as error:
            log.warning("pool %s/%s: %s", meta["namespace"], meta["name"], error)

    async def _annotate(self, target: PoolTarget, backlog: Backlog) -> None:
        pods = await self._kube.list_pods(target.namespace, selector_labels(target.name))
        # Terminating pods are already chosen; their cost no longer matters.
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        costs = deletion_costs((p["metadata"]["name"] for p in live), backlog.per_consumer)
        for pod in live:
            name = pod["metadata"]["name"]
            current = (pod["metadata"].get("annotations") or {}).get(POD_DELETION_COST)
            wanted = str(costs[name])
            if current != wanted:
                await self._kube.annotate_pod(target.namespace, name, POD_DELETION_COST,
                                              wanted)
                self._telemetry.cost_patches.inc()
