"""Cache helpers for handlers: Redis with a TTL, a small in-process LRU in front.

Handlers get one through `ctx.cache(name)` (one `Cache` per name and worker, shared by the
worker's tasks):
* `get_or_load(key, loader)`, cache-aside with single-flight: the LRU (short lifetime, per
  process), then Redis, then `loader()`, whose value is stored in Redis with the TTL and in
  the LRU. Concurrent misses for one key in the worker share one Redis read and one loader
  call (`singleflight.py`), so a popular key that expires costs the source one load per
  worker, not one per task.
* `write_through(key, value, writer)`: `await writer(value)` (the source of truth first), then
  the cache; other processes' LRU copies are evicted. A load of the key that started before
  the write does not store its older value over it.
* `get`, `set`, `invalidate`. `invalidate()` deletes the Redis key and publishes the key on a
  channel that every worker's `CacheInvalidations` listener hears, so stale LRU copies in
  other processes go too.

Metrics (through the worker's `MetricsSink`):
    agentpool_cache_requests_total{cache, result}   hit, miss, or coalesced (a miss that
                                                    joined another task's load)
    agentpool_cache_loads_total{cache, outcome}     loader calls: success or error
    agentpool_cache_load_duration_seconds{cache}    loader latency
    agentpool_cache_writes_total{cache, outcome}    write-through writes: success or error
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
from agent_runtime.sdk.singleflight import SingleFlight

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
        self._flight: SingleFlight[Any] = SingleFlight()
        # key -> token of the load that may store its value; a write or an invalidation
        # takes it away, so a load that began before them does not store an older value.
        self._loading: dict[str, object] = {}

    def _count(self, result: str) -> None:
        if self._stats is not None:
            self._stats.inc("agentpool_cache_requests_total", {"cache": self.name,
                                                              "result": result})

    async def get(self, key: str, default: Any = None) -> Any:
        value = self._lru.get(key)
        if value is not _MISSING:
            self._count("hit")
            return value
        value = await self._read(key)
        if value is _MISSING:
            self._count("miss")
            return default
        self._count("hit")
        return value

    async def _read(self, key: str) -> Any:
        raw = await self._redis.get(self._keys.cache(self.name, key))
        if raw is None:
            return _MISSING
        value = json.loads(raw)
        self._lru.put(key, value)
        return value

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        encoded = json.dumps(value, separators=(",", ":"))
        await self._redis.set(self._keys.cache(self.name, key), encoded,
                              px=int((ttl or self._ttl) * 1000))
        self._lru.put(key, value)

    async def get_or_load(self, key: str, loader: Callable[[], Awaitable[T]],
                          ttl: float | None = None) -> T:
        """Cache-aside: the cached value, or `await loader()` stored for next time; concurrent
        misses for `key` in this worker share one Redis read and one loader call."""
        value = self._lru.get(key)
        if value is not _MISSING:
            self._count("hit")
            return value  # type: ignore[no-any-return]
        (value, found), joined = await self._flight.do(
            key, lambda: self._read_or_load(key, loader, ttl))
        self._count("coalesced" if joined else "hit" if found else "miss")
        return value  # type: ignore[no-any-return]

    async def _read_or_load(self, key: str, loader: Callable[[], Awaitable[Any]],
                            ttl: float | None) -> tuple[Any, bool]:
        token = self._loading[key] = object()
        try:
            return await self._read_or_load_once(key, loader, ttl, token)
        finally:
            if self._loading.get(key) is token:
                del self._loading[key]

    async def _read_or_load_once(self, key: str, loader: Callable[[], Awaitable[Any]],
                                 ttl: float | None, token: object) -> tuple[Any, bool]:
        value = await self._read(key)
        if value is not _MISSING:
            return value, True
        labels = {"cache": self.name}
        started = time.perf_counter()
        try:
            value = await loader()
        except BaseException:
            self._observe_load(labels, "error", started)
            raise
        self._observe_load(labels, "success", started)
        if self._loading.get(key) is token:  # no write or invalidation while loading
            await self.set(key, value, ttl)
        return value, False

    def _observe_load(self, labels: dict[str, str], outcome: str, started: float) -> None:
        if self._stats is not None:
            self._stats.inc("agentpool_cache_loads_total", {**labels, "outcome": outcome})
            self._stats.observe("agentpool_cache_load_duration_seconds", labels,
                                time.perf_counter() - started)

    async def write_through(self, key: str, value: T, writer: Callable[[T], Awaitable[object]],
                            ttl: float | None = None) -> T:
        """Write `value` to the source of truth (`await writer(value)`), then to the cache,
        and evict other processes' LRU copies. If the writer fails the cached copy is
        dropped (the source may hold either value) and the error raised."""
        self._loading.pop(key, None)
        self._flight.forget(key)  # later reads do not join a load that began before
        labels = {"cache": self.name}
        try:
            await writer(value)
        except BaseException:
            if self._stats is not None:
                self._stats.inc("agentpool_cache_writes_total", {**labels, "outcome": "error"})
            await self.invalidate(key)
            raise
        await self.set(key, value, ttl)
        await self._publish_eviction(key)
        if self._stats is not None:
            self._stats.inc("agentpool_cache_writes_total", {**labels, "outcome": "success"})
        return value

    async def invalidate(self, key: str) -> None:
        self._loading.pop(key, None)
        self._flight.forget(key)
        self._lru.discard(key)
        await self._redis.delete(self._keys.cache(self.name, key))
        await self._publish_eviction(key)

    async def _publish_eviction(self, key: str) -> None:
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
