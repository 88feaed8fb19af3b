"""The handler helpers: the cache (real Redis) and the HTTP client (a real aiohttp server on
loopback)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from agent_runtime.config import RuntimeConfig
from agent_runtime.queue.keys import Keys
from agent_runtime.sdk.cache import Cache, CacheInvalidations
from agent_runtime.sdk.http import HttpClient
from agent_runtime.worker.stats import WorkerStats
from tests.plugins.runtime import RuntimePool
from tests.waiting import eventually_async


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def _cache(redis: Redis, config: RuntimeConfig, stats: WorkerStats, **kw: Any) -> Cache:
    options = {"ttl": 60.0, "lru_size": 100, "lru_ttl": 60.0, **kw}
    return Cache(redis, Keys.for_config(config), "llm", stats=stats, **options)


class Loader:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> dict[str, int]:
        self.calls += 1
        return {"answer": 42}


def _hits(stats: WorkerStats) -> dict[str, float]:
    return {labels["result"]: value for kind, _name, labels, value in stats.drain()
            if kind == "c"}


@pytest.mark.services
async def test_cache_aside_loads_once_and_shares_across_processes(
        runtime_pool: RuntimePool, redis: Redis) -> None:
    stats_a, stats_b = WorkerStats(), WorkerStats()
    worker_a = _cache(redis, runtime_pool.config, stats_a)
    worker_b = _cache(redis, runtime_pool.config, stats_b)  # another process: its own LRU
    loader = Loader()

    assert await worker_a.get_or_load("q1", loader) == {"answer": 42}
    assert await worker_a.get_or_load("q1", loader) == {"answer": 42}  # in-process LRU
    assert await worker_b.get_or_load("q1", loader) == {"answer": 42}  # from Redis

    assert loader.calls == 1
    assert _hits(stats_a) == {"miss": 1, "hit": 1}
    assert _hits(stats_b) == {"hit": 1}
    ttl_ms = await redis.pttl(Keys.for_config(runtime_pool.config).cache("llm", "q1"))
    assert 0 < ttl_ms <= 60_000


@pytest.mark.services
async def test_invalidation_reaches_other_processes_lru(
        runtime_pool: RuntimePool, redis: Redis, redis_url: str) -> None:
    keys = Keys.for_config(runtime_pool.config)
    writer = _cache(redis, runtime_pool.config, WorkerStats())
    reader = _cache(redis, runtime_pool.config, WorkerStats())
    listener_redis = Redis.from_url(redis_url, decode_responses=True)
    listener = CacheInvalidations(listener_redis, keys, {"llm": reader})
    listener.start()
    try:
        loader = Loader()
        await reader.get_or_load("q", loader)
        await asyncio.sleep(0.2)  # let the listener subscribe
        await writer.invalidate("q")

        async def reloaded() -> bool:
            await reader.get_or_load("q", loader)
            return loader.calls == 2

        await eventually_async(reloaded, within=5)
        assert await redis.exists(keys.cache("llm", "q")) == 1  # stored again by the reload
    finally:
        await listener.stop()
        await listener_redis.aclose()


@pytest.mark.services
async def test_cached_values_expire_with_their_ttl(runtime_pool: RuntimePool,
                                                   redis: Redis) -> None:
    cache = _cache(redis, runtime_pool.config, WorkerStats(), ttl=0.3, lru_ttl=0.0)
    loader = Loader()
    await cache.get_or_load("q", loader)
    await cache.get_or_load("q", loader)
    assert loader.calls == 1
    await asyncio.sleep(0.4)
    await cache.get_or_load("q", loader)
    assert loader.calls == 2


ITEMS = 20_000


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A small JSON API on loopback that remembers which client connections it saw."""
    seen: dict[str, Any] = {"peers": set(), "finished": asyncio.Event()}

    async def echo(request: web.Request) -> web.Response:
        seen["peers"].add(request.transport.get_extra_info("peername") if request.transport
                          else None)
        return web.json_response({"q": request.query.get("q")})

    async def broken(_request: web.Request) -> web.Response:
        return web.json_response({"error": "down"}, status=503)

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"[")
        for n in range(ITEMS):
            await response.write((b"," if n else b"") + json.dumps({"n": n}).encode())
            if n % 2000 == 0:
                await asyncio.sleep(0.01)  # let the client read as we go
        await response.write(b"]")
        seen["finished"].set()
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/echo", echo)
    app.router.add_get("/broken", broken)
    app.router.add_get("/big", big)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


def _latencies(stats: WorkerStats) -> list[tuple[str, str, str]]:
    return [(labels["api"], labels["operation"], labels["outcome"])
            for kind, _name, labels, _value in stats.drain() if kind == "h"]


async def test_http_session_keeps_connections_alive_and_times_each_call(
        api: tuple[str, dict[str, Any]]) -> None:
    base, seen = api
    stats = WorkerStats()
    http = HttpClient(RuntimeConfig(pool="p", handler="a:b"), stats)
    try:
        for n in range(10):
            assert await http.json("echo", "GET", f"{base}/echo", params={"q": n}) == {
                "q": str(n)}
        with pytest.raises(aiohttp.ClientResponseError):
            await http.json("echo", "GET", f"{base}/broken", operation="status")
    finally:
        await http.close()
    assert len(seen["peers"]) == 1  # one TCP connection for all ten calls
    latencies = _latencies(stats)
    assert latencies.count(("echo", "GET", "success")) == 10
    assert latencies.count(("echo", "status", "server_error")) == 1


async def test_stream_json_yields_items_while_the_response_is_still_arriving(
        api: tuple[str, dict[str, Any]]) -> None:
    base, seen = api
    http = HttpClient(RuntimeConfig(pool="p", handler="a:b"), WorkerStats())
    count = 0
    first_item_before_end = None
    try:
        async for item in http.stream_json("bulk", f"{base}/big", chunk_size=1024):
            if first_item_before_end is None:
                first_item_before_end = not seen["finished"].is_set()
            assert item == {"n": count}
            count += 1
    finally:
        await http.close()
    assert count == ITEMS
    assert first_item_before_end is True
