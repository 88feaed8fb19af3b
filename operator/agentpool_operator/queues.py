"""The queues of the pools the operator serves, as it last read them (in memory).

Filled by the reconciler each time it has read a pool's Redis URL Secret (`record`) and
emptied of a pool when the pool is deleted (`forget`), or when the resync's list of pools no
longer has it (`prune`). Read by the deletion-cost pass (`deletioncost.py`) and by the
publisher of the queue directory for the metrics API server (`publisher.py`,
`queuedir.py`). Holds Redis URLs, which are credentials: nothing here logs an entry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from pydantic import ValidationError

from agent_runtime.queue.keys import Keys
from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.builders.config import runtime_config
from agentpool_operator.builders.context import PoolContext, SecretValues
from agentpool_operator.builders.hpa import per_pod_target
from agentpool_operator.queuedir import PoolKey, QueueEntry

log = logging.getLogger(__name__)


def queue_keys(name: str, namespace: str, spec: AgentPoolSpec) -> Keys:
    """The Redis keys the pool's runtime uses, derived exactly as its pods derive them (from
    the rendered `RuntimeConfig`). Raises `ValidationError` for a pool the runtime refuses."""
    ctx = PoolContext(name=name, namespace=namespace, uid="", spec=spec,
                      secrets=SecretValues(redis_url=""))
    return Keys.for_config(runtime_config(ctx))


class QueueRegistry:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[PoolKey, QueueEntry] = {}
        self._recorded_at: dict[PoolKey, float] = {}
        self.changed = asyncio.Event()
        """Set whenever the entries change; the publisher clears it."""

    def entries(self) -> dict[PoolKey, QueueEntry]:
        return dict(self._entries)

    def record(self, key: PoolKey, spec: AgentPoolSpec, redis_url: str) -> None:
        """A pool's queue as just read. A pool whose keys the runtime cannot derive (a name
        it refuses, say) has no queue to publish; its status tells why."""
        try:
            keys = queue_keys(key[1], key[0], spec)
        except (ValidationError, ValueError):
            self.forget(key)
            return
        self._recorded_at[key] = self._clock()
        target = per_pod_target(spec) if spec.autoscaling.enabled else None
        self._put(QueueEntry(key[0], key[1], keys, redis_url, target_per_pod=target,
                             lease_seconds=spec.queue.lease_seconds))

    def seed(self, entries: Iterable[QueueEntry]) -> None:
        """Entries published before this process started, for pools not recorded yet: kept
        until a reconcile records them anew or a resync's list shows them gone."""
        for entry in entries:
            if entry.key not in self._entries:
                self._recorded_at[entry.key] = float("-inf")
                self._put(entry)

    def forget(self, key: PoolKey) -> None:
        self._recorded_at.pop(key, None)
        if self._entries.pop(key, None) is not None:
            self.changed.set()

    def prune(self, listed: Iterable[PoolKey], listed_at: float) -> None:
        """Drop the pools a list taken at `listed_at` did not show, unless recorded since
        (created after the list was taken)."""
        present = set(listed)
        for key in [k for k in self._entries if k not in present]:
            if self._recorded_at.get(key, float("-inf")) < listed_at:
                self.forget(key)

    def _put(self, entry: QueueEntry) -> None:
        if self._entries.get(entry.key) != entry:
            self._entries[entry.key] = entry
            self.changed.set()
