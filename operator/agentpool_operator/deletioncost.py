"""Idle pods go first on scale-down: keep `controller.kubernetes.io/pod-deletion-cost` current.

Run by `__main__.py` every `--deletion-cost-seconds`. The operator owns this (not the
network-facing metrics API server, which thus needs no write right at all): it already holds
each served pool's Redis URL (`queues.py`) and may patch pods in the namespaces it serves.
For each pool it reads the queue (`agent_runtime/queue/backlog.py`: the in-flight tasks of every
Redis consumer, from XPENDING), maps consumers to the pool's pods, and sets each pod's cost to
the number of tasks it is running. When the HPA (or `kubectl scale`) lowers the replicas, the
ReplicaSet controller deletes the ready pods with the lowest cost first (KEP-2255): idle pods
before busy ones, and among busy pods the one with the least work.

Quiet: a pod without the annotation costs 0 (Kubernetes' default), so an idle pool's pods are
never written; a pod is patched only when its cost changes, and an idle pool's pods are not
even listed once they are known to be at 0. One pool that cannot be read (Redis down, say)
is reported once and never stops the pass for the others.

Consumers map to pods by the runtime's naming, from the one operator-runtime contract
(`agent_runtime/contract.py`: `consumer_name`, `pod_of_consumer`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from agent_runtime.contract import pod_of_consumer
from agent_runtime.queue.backlog import BacklogError, BacklogReader
from agentpool_operator.builders.common import selector_labels
from agentpool_operator.errors import OperatorError
from agentpool_operator.k8s import Kube
from agentpool_operator.queuedir import PoolKey, QueueEntry
from agentpool_operator.queues import QueueRegistry

log = logging.getLogger(__name__)

POD_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
MAX_COST = 2**31 - 1  # the annotation is an int32
DEFAULT_COST = "0"  # what a pod without the annotation costs
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
    """The periodic pass over every served pool (see the module docstring)."""

    def __init__(self, kube: Kube, registry: QueueRegistry, reader: BacklogReader) -> None:
        self._kube = kube
        self._registry = registry
        self._reader = reader
        self._settled: set[PoolKey] = set()
        """Idle pools whose pods were all seen at cost 0: nothing to list until work comes."""
        self._failing: dict[PoolKey, str] = {}
        self.passes = 0
        self.patches = 0

    async def run(self, interval: float) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(interval)

    async def run_once(self) -> None:
        entries = self._registry.entries()
        limit = asyncio.Semaphore(CONCURRENT_POOLS)

        async def one(entry: QueueEntry) -> None:
            async with limit:
                try:
                    await self._pool(entry)
                except Exception as error:  # one pool never stops the pass
                    self._failed(entry.key, error)
                else:
                    self._recovered(entry.key)

        await asyncio.gather(*(one(entry) for entry in entries.values()))
        for key in set(self._failing) - entries.keys():
            del self._failing[key]
        self._settled &= entries.keys()
        self.passes += 1

    async def _pool(self, entry: QueueEntry) -> None:
        backlog = await self._reader.read(entry.redis_url, entry.keys)
        busy = any(count > 0 for count in backlog.per_consumer.values())
        if not busy and entry.key in self._settled:
            return
        pods = await self._kube.list_pods(entry.namespace, selector_labels(entry.name))
        # Terminating pods are already chosen; their cost no longer matters.
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        costs = deletion_costs((p["metadata"]["name"] for p in live), backlog.per_consumer)
        for pod in live:
            name = pod["metadata"]["name"]
            current = (pod["metadata"].get("annotations") or {}).get(POD_DELETION_COST,
                                                                      DEFAULT_COST)
            wanted = str(costs[name])
            if current != wanted:
                await self._kube.annotate_pod(entry.namespace, name, POD_DELETION_COST, wanted)
                self.patches += 1
        if busy:
            self._settled.discard(entry.key)
        else:
            self._settled.add(entry.key)

    def _failed(self, key: PoolKey, error: Exception) -> None:
        # Our own errors never carry secret values; anything else (a Redis URL the client
        # library cannot parse, say) is named by its type only.
        known = isinstance(error, BacklogError | OperatorError)
        message = (str(error) if known else "") or type(error).__name__
        # Once per failure, not once per pass: a Redis outage must not flood the log.
        if self._failing.get(key) != message:
            log.warning("pod deletion costs of pool %s/%s: %s", key[0], key[1], message)
        self._failing[key] = message

    def _recovered(self, key: PoolKey) -> None:
        if self._failing.pop(key, None) is not None:
            log.info("pod deletion costs of pool %s/%s: queue readable again", key[0], key[1])
