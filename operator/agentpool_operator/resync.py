"""Periodic resync and watch-stall detection.

Every `resync_seconds` the operator lists the AgentPools it watches and enqueues each one for a
full reconcile (unless it had one within the period): a safety net for anything an event did
not report (a referenced Secret's rotation, say). The children are watched, so such a
reconcile compares against their cached bodies and reads nothing but the referenced Secrets.
(A child watch that had to list again audits its own kind: `childwatch`.) The same pool list
checks the watch: when the API server has a newer resourceVersion of a pool than the watch has
delivered, for longer than `stall_seconds`, the watch is stalled and the liveness probe fails so
Kubernetes restarts the operator (kopf's known "silent operator" case).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from agentpool_operator.builders.kinds import CHILD_CRDS
from agentpool_operator.errors import OperatorError
from agentpool_operator.k8s import Kube
from agentpool_operator.reconcile import Reconciler
from agentpool_operator.settings import Settings
from agentpool_operator.store import PoolKey
from agentpool_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)


class StallDetector:
    """Compares what the watch delivered with what a fresh list shows (pure bookkeeping)."""

    def __init__(self, stall_seconds: float) -> None:
        self._stall_seconds = stall_seconds
        self._watched: dict[PoolKey, str] = {}
        self._lagging_since: dict[PoolKey, float] = {}

    def observed(self, key: PoolKey, resource_version: str) -> None:
        """The watch delivered this version of a pool: the stream is alive for it."""
        self._watched[key] = resource_version
        self._lagging_since.pop(key, None)

    def forget(self, key: PoolKey) -> None:
        self._watched.pop(key, None)
        self._lagging_since.pop(key, None)

    def listed(self, versions: dict[PoolKey, str], now: float) -> None:
        """A list returned these versions: note pools the watch has not caught up with."""
        for key, version in versions.items():
            if self._watched.get(key) == version:
                self._lagging_since.pop(key, None)
            else:
                self._lagging_since.setdefault(key, now)
        for key in set(self._lagging_since) - set(versions):
            self._lagging_since.pop(key, None)

    def stalled(self, now: float) -> bool:
        return any(now - since > self._stall_seconds for since in self._lagging_since.values())


class Resyncer:
    def __init__(self, kube: Kube, queue: WorkQueue[PoolKey], reconciler: Reconciler,
                 settings: Settings, clock: Callable[[], float] = time.monotonic,
                 on_resync: Callable[[], None] = lambda: None) -> None:
        self._kube = kube
        self._queue = queue
        self._reconciler = reconciler
        self._store = reconciler.store
        self._settings = settings
        self._clock = clock
        self._on_resync = on_resync
        self.detector = StallDetector(settings.stall_seconds)
        self.listed_once = False
        self.last_list: tuple[float, frozenset[PoolKey]] | None = None
        """When the last list of pools was taken, and the pools it showed."""

    @property
    def stalled(self) -> bool:
        return self.detector.stalled(self._clock())

    async def run(self) -> None:
        retry = 1.0
        while True:
            try:
                await self.once()
            except OperatorError as error:
                # E.g. an API server still initialising its storage: retry soon, not after a
                # whole resync period, so readiness is not held back.
                log.warning("resync failed, retrying in %.0fs: %s", retry, error)
                await asyncio.sleep(retry)
                retry = min(retry * 2, self._settings.resync_seconds)
                continue
            retry = 1.0
            await asyncio.sleep(self._settings.resync_seconds)

    async def once(self) -> None:
        self._store.served_crds = frozenset(
            [crd for crd in CHILD_CRDS if await self._kube.crd_exists(crd)])
        versions: dict[PoolKey, str] = {}
        listed_at = self._clock()

        def listed(pool: dict[str, Any]) -> None:
            meta = pool["metadata"]
            key = (meta["namespace"], meta["name"])
            versions[key] = meta.get("resourceVersion", "")
            self._store.pools.put(key, pool)

        for namespace in self._settings.namespaces or (None,):
            await self._kube.list_pools(namespace, listed)
        self.detector.listed(versions, self._clock())
        self.last_list = (listed_at, frozenset(versions))
        # A deletion the watch missed (e.g. while it reconnected) must not leave a pool behind.
        for key in self._store.pools.keys() - versions.keys():
            self._store.pools.drop(key)
        for key in versions:
            # A resync checks everything, children the watch does not cover included, of each
            # pool not already checked so within the period (e.g. just created): every pool is
            # checked at least every two periods without doubling the load of a busy one.
            if not self._reconciler.checked_within(key, self._settings.resync_seconds):
                self._store.request_full(key)
            self._queue.add(key)
        self.listed_once = True
        self._on_resync()
