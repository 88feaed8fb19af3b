"""The per-pool queue gauges: refreshed for every published pool on a period.

Run by `__main__.py` every `--refresh-seconds`. For each pool of the operator's queue
directory (`pools.py`) it reads the queue (`backlog.py`) and sets the gauges of
`telemetry.py`, which dashboards, alerts and prometheus-adapter rules read. Read-only: the
pod deletion costs that used to be written from the same reads are the operator's job now
(`agentpool_operator/deletioncost.py`), so this network-facing server writes nothing.

One pool that cannot be read never stops the pass for the others: its error is counted and
logged once (not once per pass), and its gauges keep their last values until it is readable
again or leaves the directory.
"""

from __future__ import annotations

import asyncio
import logging

from agent_runtime.queue.backlog import BacklogError, BacklogReader
from agentpool_operator.metrics_api.apiserver import ApiServerError
from agentpool_operator.metrics_api.pools import PoolDirectory, PoolError
from agentpool_operator.metrics_api.telemetry import Telemetry
from agentpool_operator.queuedir import PoolKey, QueueEntry

log = logging.getLogger(__name__)

CONCURRENT_POOLS = 8


class GaugeRefresher:
    def __init__(self, pools: PoolDirectory, reader: BacklogReader,
                 telemetry: Telemetry) -> None:
        self._pools = pools
        self._reader = reader
        self._telemetry = telemetry
        self._failing: dict[PoolKey, str] = {}
        self._directory_error: str | None = None
        self.passes = 0

    async def run(self, interval: float) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(interval)

    async def run_once(self) -> None:
        try:
            entries = await self._pools.entries()
        except (PoolError, ApiServerError) as error:
            self._telemetry.queue_errors.inc()
            if str(error) != self._directory_error:
                log.warning("queue gauges: %s", error)
            self._directory_error = str(error)
            return
        if self._directory_error is not None:
            log.info("queue gauges: the queue directory %s is readable again",
                     self._pools.reference)
            self._directory_error = None
        limit = asyncio.Semaphore(CONCURRENT_POOLS)

        async def one(entry: QueueEntry) -> None:
            async with limit:
                await self._pool(entry)

        await asyncio.gather(*(one(entry) for entry in entries.values()))
        self._telemetry.keep_only(set(entries))
        for key in set(self._failing) - entries.keys():
            del self._failing[key]
        self.passes += 1

    async def _pool(self, entry: QueueEntry) -> None:
        try:
            backlog = await self._reader.read(entry.redis_url, entry.keys)
        except Exception as error:  # one pool never stops the pass
            self._telemetry.queue_errors.inc()
            # Our own errors never carry credentials; anything else is named by its type.
            message = (str(error) if isinstance(error, BacklogError) else ""
                       ) or type(error).__name__
            if self._failing.get(entry.key) != message:
                log.warning("pool %s/%s: %s", entry.namespace, entry.name, message)
            self._failing[entry.key] = message
            return
        if self._failing.pop(entry.key, None) is not None:
            log.info("pool %s/%s: queue readable again", entry.namespace, entry.name)
        self._telemetry.observe_pool(entry.namespace, entry.name, backlog.waiting,
                                     backlog.in_flight, backlog.oldest_waiting_seconds,
                                     backlog.budget_waiting)
