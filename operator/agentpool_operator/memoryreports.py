"""Memory reports become Events on their AgentPool: `kubectl describe agentpool` says which
worker was recycled for its memory, how much it grew over how many tasks, with which handler
and, with `workers.tracemallocFrames`, at which source lines.

The pods cannot post Events (they have no API access at all); their supervisors add each
report to a small capped stream in the pool's Redis (`agent_runtime.contract.
memory_reports_key`), which this pass reads every `--deletion-cost-seconds` with the same
reader and credentials as the deletion-cost pass. Each pool's last posted report is
remembered in memory; after an operator restart only reports newer than the start are posted
(older ones were posted before, or are in the pod's log).
"""

from __future__ import annotations

import asyncio
import logging
import time

from agent_runtime.queue.backlog import BacklogError, BacklogReader
from agentpool_operator.api import API_VERSION, KIND
from agentpool_operator.k8s import Kube
from agentpool_operator.queuedir import PoolKey, QueueEntry
from agentpool_operator.queues import QueueRegistry

log = logging.getLogger(__name__)

REASON = "WorkerMemoryReport"


class MemoryReportPoster:
    def __init__(self, kube: Kube, registry: QueueRegistry, reader: BacklogReader,
                 started_at: float | None = None) -> None:
        self._kube = kube
        self._registry = registry
        self._reader = reader
        start_ms = int((time.time() if started_at is None else started_at) * 1000)
        self._start_id = f"{start_ms}-0"
        self._last: dict[PoolKey, str] = {}
        self.posted = 0

    async def run(self, interval: float) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(interval)

    async def run_once(self) -> None:
        entries = self._registry.entries()
        for entry in entries.values():
            try:
                await self._pool(entry)
            except BacklogError as error:
                log.debug("memory reports of pool %s/%s: %s", entry.namespace, entry.name,
                          error)
        for key in set(self._last) - entries.keys():
            del self._last[key]

    async def _pool(self, entry: QueueEntry) -> None:
        after = self._last.get(entry.key, self._start_id)
        reports = await self._reader.memory_reports(entry.redis_url, entry.keys, after)
        if not reports:
            return
        pool = await self._kube.get(API_VERSION, KIND, entry.namespace, entry.name)
        for entry_id, message in reports:
            if pool is not None:
                await self._kube.post_event(pool, "Warning", REASON, message)
                self.posted += 1
            self._last[entry.key] = entry_id
