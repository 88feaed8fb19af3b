"""Which AgentPools a metrics request is about, and where each one's queue lives.

Called by `server.py` (the pools in one namespace matching the HPA's label selector) and by
`gauges.py` (every pool). The pools and their queues come from the queue directory the
operator publishes (`agentpool_operator/queuedir.py`): one Secret in the operator's namespace,
which this server may read by name, and no other Secret, nor AgentPools. A pool is served
once the operator has read its Redis URL Secret; the directory holds exactly the pools of
the namespaces the operator serves.

Every publisher's key is read: the operator of this release's and those of other releases
sharing this metrics API (`metricsApi.shared`).

The directory is read at most once per `ttl` seconds; a request for a pool it does not hold
yet (just created) reads it again after `miss_ttl` seconds, so a new pool's HPA gets its
metric within about a second of the operator publishing it. A pool's metric labels are
`{agentpool.dev/pool: <name>}`, the label the operator's HPA selects on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agentpool_operator.api.labels import POOL_LABEL
from agentpool_operator.metrics_api.apiserver import ApiServer
from agentpool_operator.metrics_api.selector import Selector
from agentpool_operator.queuedir import DirectoryError, PoolKey, QueueEntry, decode_all

DEFAULT_TTL_SECONDS = 5.0
MISS_TTL_SECONDS = 1.0


class PoolError(Exception):
    """The queue directory cannot be read (missing or unreadable Secret)."""


def metric_labels(pool: str) -> dict[str, str]:
    """The labels of a pool's `agentpool_queue_backlog` value."""
    return {POOL_LABEL: pool}


class PoolDirectory:
    """The operator's queue directory, cached for a few seconds."""

    def __init__(self, kube: ApiServer, namespace: str, name: str,
                 ttl: float = DEFAULT_TTL_SECONDS, miss_ttl: float = MISS_TTL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._namespace = namespace
        self._name = name
        self._ttl = ttl
        self._miss_ttl = miss_ttl
        self._clock = clock
        self._read_at: float | None = None
        self._entries: dict[PoolKey, QueueEntry] = {}
        self.skipped = 0
        """Entries of the last read that did not parse (left out)."""

    @property
    def reference(self) -> str:
        return f"{self._namespace}/{self._name}"

    async def entries(self, max_age: float | None = None) -> dict[PoolKey, QueueEntry]:
        """Every published pool. Raises `PoolError` when the directory cannot be read, and
        `ApiServerError` when the API server cannot answer."""
        age = None if self._read_at is None else self._clock() - self._read_at
        if age is None or age >= (self._ttl if max_age is None else max_age):
            secret = await self._kube.secret_data(self._namespace, self._name)
            if secret is None:
                raise PoolError(f"the queue directory Secret {self.reference} does not exist "
                                "(the chart creates it; the operator fills it)")
            try:
                directory = decode_all(secret)
            except DirectoryError as error:
                raise PoolError(f"the queue directory {self.reference}: {error}") from None
            self._entries, self.skipped = directory.entries, directory.skipped
            self._read_at = self._clock()
        return self._entries

    async def select(self, namespace: str, selector: Selector) -> list[QueueEntry]:
        """The pools in `namespace` whose metric labels match `selector`, sorted by name."""
        entries = await self.entries()
        pinned = selector.exact_values(POOL_LABEL)
        if pinned is not None and any((namespace, name) not in entries for name in pinned):
            entries = await self.entries(max_age=self._miss_ttl)
        return sorted((e for e in entries.values() if e.namespace == namespace
                       and selector.matches(metric_labels(e.name))), key=lambda e: e.name)
