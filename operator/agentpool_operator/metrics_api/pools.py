"""Which AgentPools a metrics request is about, and where each one's queue lives.

Called by `server.py` (the pools in one namespace matching the HPA's label selector) and by
`podcost.py` (every pool it looks after). A pool's metric labels are
`{agentpool.dev/pool: <name>}`, the label the operator's HPA selects on. Resolving a pool
means reading the Secret its `spec.queue.redis.urlSecretRef` names and deriving its Redis
keys; the result is cached for `ttl` seconds, so an HPA polling every few seconds costs the
API server at most one AgentPool and one Secret read per pool and period.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from agent_runtime.keys import Keys
from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.builders.common import POOL_LABEL
from agentpool_operator.metrics_api.backlog import queue_keys
from agentpool_operator.metrics_api.kube import Kube
from agentpool_operator.metrics_api.selector import Selector

DEFAULT_TTL_SECONDS = 10.0


class PoolError(Exception):
    """A pool whose queue cannot be located (invalid spec, missing Secret or key)."""


@dataclass(frozen=True)
class PoolTarget:
    """One pool's queue: its keys and the Redis URL (a credential: never logged)."""

    namespace: str
    name: str
    keys: Keys
    redis_url: str = field(repr=False)

    @property
    def metric_labels(self) -> dict[str, str]:
        return metric_labels(self.name)


def metric_labels(pool: str) -> dict[str, str]:
    """The labels of a pool's `agentpool_queue_backlog` value."""
    return {POOL_LABEL: pool}


class PoolDirectory:
    """Finds pools and resolves them to `PoolTarget`s, with a short cache."""

    def __init__(self, kube: Kube, ttl: float = DEFAULT_TTL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, str, PoolTarget]] = {}

    async def select(self, namespace: str, selector: Selector) -> list[PoolTarget]:
        """The pools in `namespace` whose metric labels match `selector`, sorted by name.
        Raises `PoolError` for a matching pool that cannot be resolved, `KubeError` when the
        API server cannot be read."""
        pinned = selector.exact_values(POOL_LABEL)
        if pinned is not None:
            targets = []
            for name in sorted(pinned):
                target = await self._by_name(namespace, name)
                if target is not None and selector.matches(target.metric_labels):
                    targets.append(target)
            return targets
        pools = await self._kube.list_pools(namespace)
        matching = [p for p in pools if selector.matches(metric_labels(p["metadata"]["name"]))]
        return sorted([await self.resolve(p) for p in matching], key=lambda t: t.name)

    async def _by_name(self, namespace: str, name: str) -> PoolTarget | None:
        cached = self._cache.get((namespace, name))
        if cached is not None and cached[0] > self._clock():
            return cached[2]
        pool = await self._kube.get_pool(namespace, name)
        if pool is None:
            self._cache.pop((namespace, name), None)
            return None
        return await self.resolve(pool)

    async def resolve(self, pool: dict[str, Any]) -> PoolTarget:
        """The queue of one AgentPool object (as read from the API server)."""
        meta = pool["metadata"]
        key = (meta["namespace"], meta["name"])
        version = str(meta.get("resourceVersion") or "")
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self._clock() and cached[1] == version:
            return cached[2]
        try:
            spec = AgentPoolSpec.model_validate(pool.get("spec") or {})
        except ValidationError:
            # The operator reports the details in the pool's status; nothing to add here.
            raise PoolError(f"AgentPool {key[0]}/{key[1]} has an invalid spec") from None
        ref = spec.queue.redis.url_secret_ref
        url = await self._kube.secret_value(key[0], ref.name, ref.key)
        if not url:
            raise PoolError(f"AgentPool {key[0]}/{key[1]}: Secret {ref.name} (key {ref.key!r}, "
                            "spec.queue.redis.urlSecretRef) is missing")
        target = PoolTarget(key[0], key[1], queue_keys(key[1], key[0], spec), url)
        self._cache[key] = (self._clock() + self._ttl, version, target)
        return target

    def forget_missing(self, present: set[tuple[str, str]]) -> None:
        """Drop cached pools that no longer exist (called after a full list)."""
        for key in set(self._cache) - present:
            del self._cache[key]
