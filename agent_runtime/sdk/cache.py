"""Cache-aside helper for handlers: Redis with a TTL, a small in-process LRU in front.

Handlers get one through `ctx.cache(name)`. Reads try the LRU (short lifetime, per process),
then Redis, then the loader; writes go to Redis with the TTL and to the LRU. `invalidate()`
deletes the Redis key and publishes the key on a channel that every worker's
`CacheInvalidations` listener hears, so stale LRU copies in other processes go too. Hits and
misses feed `agentpool_cache_requests_total{cache, result}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from agent_runtime.queue.keys import Keys
from agent_runtime.sdk.metrics_sink import MetricsSink

T = TypeVar("T")
log = logging.getLogger(__name__)
_MISSING: Any = object()


class LruCache:
    """A bounded, time-limited mapping (pure; the clock is injectable for tests)."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def get(self, key: str) -> Any:
        item = self._items.get(key)
        if item is None:
            return _MISSING
        if item[0] < self._clock():
            del self._items[key]
            return _MISSING
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: str, value: Any) -> None:
        if self._size <= 0 or self._ttl <= 0:
            return
        self._items[key] = (self._clock() + self._ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def discard(self, key: str) -> None:
        self._items.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not _MISSING

    def __len__(self) -> int:
        return len(self._items)


class Cache:
    def __init__(self, redis: Redis, keys: Keys, name: str, *, ttl: float, lru_size: int,
                 lru_ttl: float, stats: MetricsSink | None = None) -> None:
        self.name = name
        self._redis = redis
        self._keys = keys
        self._ttl = ttl
        self._lru = LruCache(lru_size, lru_ttl)
        self._stats = stats

    def _count(self, result: str) -> None:
        if self._stats is not None:
            self._stats.inc("agentpool_cache_requests_total", {"cache": self.name,
                                                              "result": result})

    async def get(self, key: str, default: Any = None) -> Any:
        value = self._lru.get(key)
        if value is not _MISSING:
            self._count("hit")
            return value
        raw = await self._redis.get(self._keys.cache(self.name, key))
        if raw is None:
            self._count("miss")
            return default
        value = json.loads(raw)
        self._lru.put(key, value)
        self._count("hit")
        return value

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        encoded = json.dumps(value, separators=(",", ":"))
        await self._redis.set(self._keys.cache(self.name, key), encoded,
                              px=int((ttl or self._ttl) * 1000))
        self._lru.put(key, value)

    async def get_or_load(self, key: str, loader: Callable[[], Awaitable[T]],
                          ttl: float | None = None) -> T:
        """Cache-aside: the cached value, or `await loader()` stored for next time."""
        value = await self.get(key, _MISSING)
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
        loaded = await loader()
        await self.set(key, loaded, ttl)
        return loaded

    async def invalidate(self, key: str) -> None:
        self._lru.discard(key)
        await self._redis.delete(self._keys.cache(self.name, key))
        await self._redis.publish(self._keys.cache_invalidation_channel,
                                  json.dumps([self.name, key]))

    def evict_local(self, key: str) -> None:
        self._lru.discard(key)


class CacheInvalidations:
    """Listens for invalidations from other processes and evicts their LRU copies here."""

    def __init__(self, redis: Redis, keys: Keys, caches: dict[str, Cache]) -> None:
        self._redis = redis
        self._keys = keys
        self._caches = caches
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="cache-invalidations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._keys.cache_invalidation_channel)
                    async for message in pubsub.listen():
                        self._apply(message)
            except (RedisError, OSError) as exc:
                # The LRU lifetime bounds staleness while we are disconnected.
                log.warning("cache invalidation listener reconnecting: %s", exc)
                await asyncio.sleep(1.0)

    def _apply(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        try:
            name, key = json.loads(message["data"])
        except (ValueError, TypeError):
            return
        cache = self._caches.get(name)
        if cache is not None:
            cache.evict_local(key)
