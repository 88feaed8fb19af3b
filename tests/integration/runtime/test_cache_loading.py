"""Cache-aside with single-flight and the write-through helper (`ctx.cache`), against the
real Redis: concurrent misses for one key call the loader once, across a worker's tasks
too; writes reach the source first, then the cache, and beat loads that began before them;
hit, miss, coalesced, load and write counts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_runtime.config import RuntimeConfig
from agent_runtime.queue.keys import Keys
from agent_runtime.sdk.cache import Cache, CacheInvalidations
from agent_runtime.sdk.client import TaskClient
from agent_runtime.worker.stats import WorkerStats
from tests.integration.runtime.handlers import loader_calls_key
from tests.plugins.runtime import RuntimePool, StartSupervisor
from tests.waiting import eventually_async

pytestmark = [pytest.mark.services]
HANDLERS = "tests.integration.runtime.handlers"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def _cache(redis: Redis, config: RuntimeConfig, stats: WorkerStats) -> Cache:
    return Cache(redis, Keys.for_config(config), "answers", ttl=60.0, lru_size=100,
                 lru_ttl=60.0, stats=stats)


class SlowLoader:
    def __init__(self, value: Any = "loaded", seconds: float = 0.2,
                 error: Exception | None = None) -> None:
        self.value, self.seconds, self.error = value, seconds, error
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        await asyncio.sleep(self.seconds)
        if self.error is not None:
            raise self.error
        return self.value


def _counts(stats: WorkerStats) -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for kind, name, labels, value in stats.drain():
        if kind == "c":
            label = labels.get("result") or labels.get("outcome") or ""
            counts[(name.removeprefix("agentpool_cache_"), label)] = value
        else:
            counts[(name.removeprefix("agentpool_cache_"), "observations")] = counts.get(
                (name.removeprefix("agentpool_cache_"), "observations"), 0) + 1
    return counts


async def test_concurrent_misses_call_the_loader_once(runtime_pool: RuntimePool,
                                                      redis: Redis) -> None:
    stats = WorkerStats()
    cache = _cache(redis, runtime_pool.config, stats)
    loader = SlowLoader({"answer": 42})

    values = await asyncio.gather(*(cache.get_or_load("q", loader) for _ in range(50)))

    assert values == [{"answer": 42}] * 50
    assert loader.calls == 1
    assert _counts(stats) == {("requests_total", "miss"): 1, ("requests_total", "coalesced"): 49,
                              ("loads_total", "success"): 1,
                              ("load_duration_seconds", "observations"): 1}
    assert await cache.get_or_load("q", loader) == {"answer": 42}  # now a hit
    assert loader.calls == 1
    other = _cache(redis, runtime_pool.config, WorkerStats())  # another worker: from Redis
    assert await other.get_or_load("q", SlowLoader("never")) == {"answer": 42}


async def test_a_failed_load_fails_every_waiter_and_is_not_cached(
        runtime_pool: RuntimePool, redis: Redis) -> None:
    stats = WorkerStats()
    cache = _cache(redis, runtime_pool.config, stats)
    failing = SlowLoader(error=RuntimeError("source down"))
    outcomes = await asyncio.gather(*(cache.get_or_load("q", failing) for _ in range(5)),
                                    return_exceptions=True)
    assert [str(o) for o in outcomes] == ["source down"] * 5
    assert failing.calls == 1
    assert _counts(stats)[("loads_total", "error")] == 1
    assert await cache.get_or_load("q", SlowLoader("second try")) == "second try"


async def test_a_cancelled_caller_does_not_cancel_the_others(
        runtime_pool: RuntimePool, redis: Redis) -> None:
    cache = _cache(redis, runtime_pool.config, WorkerStats())
    loader = SlowLoader("value", seconds=0.3)
    first = asyncio.ensure_future(cache.get_or_load("q", loader))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(cache.get_or_load("q", loader))
    await asyncio.sleep(0.05)
    first.cancel()  # say, its task timed out
    assert await second == "value"
    assert first.cancelled()
    assert loader.calls == 1
    assert await redis.get(Keys.for_config(runtime_pool.config).cache("answers", "q")) \
        == '"value"'


async def test_write_through_writes_the_source_then_the_cache_everywhere(
        runtime_pool: RuntimePool, redis: Redis, redis_url: str) -> None:
    keys = Keys.for_config(runtime_pool.config)
    stats = WorkerStats()
    writer_cache = _cache(redis, runtime_pool.config, stats)
    reader_cache = _cache(redis, runtime_pool.config, WorkerStats())  # another process
    listener_redis = Redis.from_url(redis_url, decode_responses=True)
    listener = CacheInvalidations(listener_redis, keys, {"answers": reader_cache})
    listener.start()
    source: dict[str, Any] = {}

    async def save(value: Any) -> None:
        assert await redis.get(keys.cache("answers", "user:1")) != '"new"'  # source first
        source["user:1"] = value

    try:
        assert await reader_cache.get_or_load("user:1", SlowLoader("old", 0)) == "old"
        await asyncio.sleep(0.2)  # let the listener subscribe
        assert await writer_cache.write_through("user:1", "new", save) == "new"
        assert source == {"user:1": "new"}
        assert await redis.get(keys.cache("answers", "user:1")) == '"new"'

        async def reader_sees_new() -> bool:  # its LRU copy was evicted
            return bool(await reader_cache.get_or_load("user:1", SlowLoader("x", 0)) == "new")

        await eventually_async(reader_sees_new, within=5)
        assert _counts(stats) == {("writes_total", "success"): 1}
    finally:
        await listener.stop()
        await listener_redis.aclose()


async def test_a_load_that_began_before_a_write_does_not_overwrite_it(
        runtime_pool: RuntimePool, redis: Redis) -> None:
    keys = Keys.for_config(runtime_pool.config)
    cache = _cache(redis, runtime_pool.config, WorkerStats())
    loading = asyncio.ensure_future(cache.get_or_load("k", SlowLoader("stale", 0.3)))
    await asyncio.sleep(0.05)

    async def save(_value: Any) -> None:
        return None

    await cache.write_through("k", "fresh", save)
    assert await cache.get_or_load("k", SlowLoader("never", 0)) == "fresh"  # not the old load
    assert await loading == "stale"  # its caller asked before the write
    assert await redis.get(keys.cache("answers", "k")) == '"fresh"'


async def test_a_failed_write_leaves_no_cached_copy(runtime_pool: RuntimePool,
                                                    redis: Redis) -> None:
    stats = WorkerStats()
    cache = _cache(redis, runtime_pool.config, stats)
    await cache.set("k", "before")

    async def broken(_value: Any) -> None:
        raise ConnectionError("database down")

    with pytest.raises(ConnectionError):
        await cache.write_through("k", "after", broken)
    assert await redis.exists(Keys.for_config(runtime_pool.config).cache("answers", "k")) == 0
    assert _counts(stats) == {("writes_total", "error"): 1}


@pytest.mark.slow
async def test_one_load_across_a_worker_s_concurrent_tasks(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, redis_url: str,
        redis: Redis) -> None:
    runtime_pool.update(workers=1, concurrency=8,
                        handlers={**runtime_pool.config.handlers,
                                  "cached_load": f"{HANDLERS}:cached_load"})
    supervisor = start_supervisor(runtime_pool)
    client = await TaskClient.connect(redis_url, runtime_pool.config)
    try:
        task_ids = await client.submit_many([{"key": "popular", "load_seconds": 1.0}] * 8,
                                            handler="cached_load")
        results = await client.wait_many(task_ids, max_wait=30)
        assert [r.result for r in results.values()] == [{"answer": "POPULAR"}] * 8
        assert await redis.get(loader_calls_key(runtime_pool.config.pool, "popular")) == "1"
        assert supervisor.metric_reaching("agentpool_cache_loads_total", 1,
                                          outcome="success") == 1
        assert supervisor.metric_reaching("agentpool_cache_requests_total", 7,
                                          result="coalesced") == 7
        assert supervisor.metric("agentpool_cache_requests_total", result="miss") == 1
        assert supervisor.metric("agentpool_cache_load_duration_seconds_count") == 1
    finally:
        await client.close()
