"""Writing a pool's status: computed from what a reconcile observed (`status.py`, pure),
written only when it changed, with an Event for each condition that flipped.

Called by `reconcile.py`. Keeps the latest conditions of every pool for the operator's
`agentpool_operator_pools` gauge (and, with their reasons, for the per-pool
`agentpool_operator_pool_condition`), and tells the store which pool versions are the echo of our
own writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentpool_operator import announce
from agentpool_operator.events import post_announcements
from agentpool_operator.k8s import Kube
from agentpool_operator.status import Observation, compute_status, status_changed
from agentpool_operator.store import PoolKey, PoolStore


@dataclass
class StatusWriter:
    kube: Kube
    store: PoolStore
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    conditions: dict[PoolKey, dict[str, str]] = field(default_factory=dict)
    """Each pool's conditions as last computed: type -> status."""
    details: dict[PoolKey, dict[str, tuple[str, str]]] = field(default_factory=dict)
    """The same with each condition's reason: type -> (status, reason)."""

    def forget(self, key: PoolKey) -> None:
        self.conditions.pop(key, None)
        self.details.pop(key, None)

    async def write(self, pool: dict[str, Any], observation: Observation) -> None:
        meta = pool["metadata"]
        key = (meta["namespace"], meta["name"])
        current = pool.get("status") or {}
        desired = compute_status(observation, current, self.clock())
        self.conditions[key] = {c["type"]: c["status"] for c in desired["conditions"]}
        self.details[key] = {c["type"]: (c["status"], c.get("reason") or "")
                             for c in desired["conditions"]}
        if not status_changed(current, desired):
            return
        written = await self.kube.patch_pool_status(meta["namespace"], meta["name"], desired)
        if written is not None:
            self.store.pools.put(key, written)
            # Its watch event then needs no reconcile, unless the spec changed meanwhile (the
            # watch may deliver only this newest version of the pool).
            if int(written["metadata"].get("generation") or 0) == observation.generation:
                self.store.own_status_written(key, written)
        await post_announcements(self.kube, pool, announce.flips(current, desired))
