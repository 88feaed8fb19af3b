"""The supervisor's side of the work queue: leases, hand-over, delayed retries, trimming.

Called from the supervisor's chores (`agent_runtime.supervisor.upkeep`). None of this runs
inside workers, so a worker whose event loop is blocked still has its leases renewed until the
supervisor decides to kill it - and a pod that dies stops renewing, which is exactly what lets
other pods reclaim its tasks."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from agent_runtime.config import RuntimeConfig
from agent_runtime.queue.consumer import LAST_ERROR_TTL_SECONDS, ensure_group, is_nogroup
from agent_runtime.queue.envelope import peek_task_id
from agent_runtime.queue.keys import Keys
from agent_runtime.queue.scripts import (
    HAND_BACK,
    PROMOTE_DUE,
    PRUNE_CONSUMERS,
    RENEW_LEASES,
    TRANSFER_PENDING,
)

# A lease is renewed once this share of it has passed.
RENEW_THRESHOLD_SHARE = 1 / 3


# A pod that has not renewed its leases for this many leases is gone.
GONE_AFTER_LEASES = 3
# Pods are forgotten this long after they were last seen.
FORGET_PODS_AFTER_SECONDS = 86400.0


class QueueMaintenance:
    def __init__(self, redis: Redis, config: RuntimeConfig, pod_id: str = "") -> None:
        """`pod_id`: this supervisor's boot, the prefix of its consumers' names ("" for tools
        that only maintain)."""
        self._redis = redis
        self._config = config
        self.keys = Keys.for_config(config)
        self.pod_id = pod_id

    async def _script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._redis.eval(script, len(keys), *keys, *args)
        except ResponseError as exc:
            if not is_nogroup(exc):
                raise
            await ensure_group(self._redis, self.keys)
            return 0

    async def ensure_group(self) -> None:
        await ensure_group(self._redis, self.keys)

    async def renew_leases(self, consumers: list[str]) -> int:
        """Reset the idle time of every entry the given consumers hold (renew each lease once a
        third of it has passed, so a delayed tick still renews in time), and mark this pod
        alive."""
        if not consumers and not self.pod_id:
            return 0
        threshold_ms = int(self._config.lease_seconds * 1000 * RENEW_THRESHOLD_SHARE)
        renewed = await self._script(RENEW_LEASES, [self.keys.stream, self.keys.pods],
                                     [self.keys.group, threshold_ms, self.pod_id, *consumers])
        return int(renewed)

    async def transfer(self, from_consumer: str, to_consumer: str,
                       started: Collection[str] = ()) -> int:
        """Move a dead worker's entries to the consumer of its replacement; `started`: the
        entries whose execution had started there (only those count a delivery)."""
        moved = await self._script(TRANSFER_PENDING, [self.keys.stream],
                                   [self.keys.group, from_consumer, to_consumer,
                                    *sorted(started)])
        return int(moved)

    async def hand_back_all(self, consumer: str, started: Collection[str] = ()) -> int:
        """Put everything a consumer holds back on the stream (final step of a drain)."""
        handed = await self._script(HAND_BACK, [self.keys.stream],
                                    [self.keys.group, consumer, 0, *sorted(started)])
        return int(handed)

    async def promote_due(self, limit: int = 500) -> int:
        """Move retries whose backoff has elapsed from the delayed set to the stream."""
        moved = await self._script(PROMOTE_DUE, [self.keys.delayed, self.keys.stream,
                                                 self.keys.dead],
                                   [repr(time.time()), limit])
        return int(moved)

    async def record_last_error(self, task_ids: list[str], error: str) -> None:
        """Remember why tasks' executions died with their worker, for the dead-letter reason."""
        if not task_ids:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.set(self.keys.last_error(task_id), error, ex=LAST_ERROR_TTL_SECONDS)
            await pipe.execute()

    async def record_entry_errors(self, entry_ids: Collection[str], error: str) -> int:
        """Remember `error` as the last error of the tasks of these entries (those whose
        execution had started on a worker that died).

        The task ids are read from the queue, not from what the worker last reported: a task
        that kills its worker the moment it starts (a segfault in a C extension) is attributed
        too.
        """
        if not entry_ids:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xrange(self.keys.stream, entry_id, entry_id)
            entries: list[Any] = await pipe.execute()
        task_ids = [peek_task_id(found[0][1]) for found in entries if found]
        task_ids = [task_id for task_id in task_ids if task_id]
        await self.record_last_error(task_ids, error)
        return len(task_ids)

    async def pending_count(self, consumer: str) -> int:
        rows = await self._redis.xpending_range(self.keys.stream, self.keys.group, "-", "+", 1,
                                                consumername=consumer)
        return len(rows)

    async def forget_consumer(self, consumer: str) -> bool:
        """Delete a consumer of ours once it holds nothing (deleting it earlier would orphan
        its pending entries)."""
        if await self.pending_count(consumer):
            return False
        await self._redis.xgroup_delconsumer(self.keys.stream, self.keys.group, consumer)
        return True

    async def safe_trim(self) -> int:
        """Trim only what every group has both read and acknowledged: entries below the smallest
        pending id and below every group's last-delivered id. MAXLEN trimming would drop
        unacknowledged entries (Redis < 8.2 has no ACKED trim mode)."""
        try:
            groups = await self._redis.xinfo_groups(self.keys.stream)
        except ResponseError:
            return 0
        floors = []
        for group in groups:
            floors.append(str(group["last-delivered-id"]))
            summary = await self._redis.xpending(self.keys.stream, str(group["name"]))
            if summary["pending"]:
                floors.append(str(summary["min"]))
        if not floors:
            return 0
        floor = min(floors, key=_id_key)
        if floor == "0-0":
            return 0
        # MINID keeps entries >= floor; the floor entry itself may be pending or unread.
        return int(await self._redis.xtrim(self.keys.stream, minid=floor, approximate=False))

    async def prune_consumers(self, idle_seconds: float) -> list[str]:
        """Delete consumers that hold nothing and whose pod is gone (it stopped renewing its
        leases `GONE_AFTER_LEASES` leases ago), or, for consumers of no known pod, that were
        idle `idle_seconds`. Consumers holding entries are kept: deleting them would orphan
        their entries; they go once others have reclaimed those. Returns the deleted names."""
        gone_after_ms = int(GONE_AFTER_LEASES * self._config.lease_seconds * 1000)
        removed = await self._script(
            PRUNE_CONSUMERS, [self.keys.stream, self.keys.pods],
            [self.keys.group, gone_after_ms, int(idle_seconds * 1000),
             int(FORGET_PODS_AFTER_SECONDS * 1000)])
        return [str(name) for name in removed or []]

    async def leave(self) -> None:
        """This pod stops: it is no longer alive for PRUNE_CONSUMERS (after a drain)."""
        if self.pod_id:
            await self._redis.zrem(self.keys.pods, self.pod_id)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
