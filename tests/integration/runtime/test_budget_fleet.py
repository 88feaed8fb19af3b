"""Budgets across a fleet of real runtime processes: supervisors of two pools, several workers
each, share one budget key in front of a fake provider that enforces its limits exactly. The
fleet stays within every limit, almost never sees a 429 and uses nearly all of the limit while
work waits; a killed pod's permits come back; a Redis restart does not reset the windows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.sdk.client import TaskClient
from tests.fake_provider import FakeProvider, ProviderLimits
from tests.plugins.durable_redis import DurableRedis
from tests.plugins.runtime import RuntimePool, StartSupervisor
from tests.waiting import eventually_async

pytestmark = [pytest.mark.services, pytest.mark.slow]

RPS = 15


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider(ProviderLimits(requests_per_second=RPS, concurrent_requests=5),
                        latency_seconds=0.2)
    await fake.start()
    yield fake
    await fake.stop()


def _budgeted(pool: RuntimePool, **limits: Any) -> None:
    pool.update(budgets=[{"name": "llm", "budget": "team/provider", **limits}],
                http_timeout_seconds=3, workers=2, concurrency=4)


def _second_pool(pool: RuntimePool, tmp_path: Path) -> RuntimePool:
    """Another pool with the same budget key (its own queue and keys)."""
    other = RuntimePool(tmp_path / "other.json",
                        pool.config.model_copy(update={"pool": pool.config.pool + "-b"}))
    other.path.write_text(json.dumps(other.config.model_dump(mode="json")))
    return other


async def _run(clients: list[TaskClient], url: str, tasks: int) -> list[Any]:
    ids = await asyncio.gather(*(
        client.submit_many([{"url": url}] * (tasks // len(clients)), handler="budgeted")
        for client in clients))
    results = await asyncio.gather(*(client.wait_many(batch, max_wait=180)
                                     for client, batch in zip(clients, ids, strict=True)))
    return [r for batch in results for r in batch.values()]


def _assert_within_and_used(provider: FakeProvider, calls: int) -> None:
    assert provider.most_in_any_window(1.0) <= RPS
    assert provider.most_in_flight <= 5
    assert provider.throttled <= 0.01 * calls
    # After the first window's burst, the rate while work waited: at least 95 % of the limit.
    times = sorted(provider.accepted)
    steady = (len(times) - RPS) / (times[-1] - times[RPS - 1])
    assert steady >= 0.95 * RPS, f"{steady:.1f}/s of {RPS}/s"


async def test_pods_of_two_pools_share_the_providers_limits(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, redis_url: str,
        provider: FakeProvider, tmp_path: Path) -> None:
    _budgeted(runtime_pool, requests_per_second=RPS, concurrent_requests=5)
    other = _second_pool(runtime_pool, tmp_path)
    for pool in (runtime_pool, runtime_pool, other):  # three pods, two pools
        start_supervisor(pool)
    clients = [await TaskClient.connect(redis_url, pool.config) for pool in (runtime_pool, other)]
    try:
        results = await _run(clients, provider.url, 120)
    finally:
        for client in clients:
            await client.close()
    assert [r.status for r in results] == ["succeeded"] * 120
    assert {r.result["status"] for r in results} == {200}
    _assert_within_and_used(provider, 120)


async def test_a_killed_pods_permits_come_back(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, redis_url: str,
        tmp_path: Path) -> None:
    slow = FakeProvider(ProviderLimits(concurrent_requests=4), latency_seconds=2.0)
    url = await slow.start()
    _budgeted(runtime_pool, concurrent_requests=4)
    doomed, survivor = start_supervisor(runtime_pool), start_supervisor(runtime_pool)
    client = await TaskClient.connect(redis_url, runtime_pool.config)
    try:
        ids = await client.submit_many([{"url": url}] * 12, handler="budgeted")
        await eventually_async(lambda: _holding(slow, 4), within=30, interval=0.05)
        doomed.kill_tree()  # its workers die holding permits
        results = await client.wait_many(ids, max_wait=120)
    finally:
        await client.close()
        await slow.stop()
    assert survivor.process.poll() is None
    assert all(r.status == "succeeded" for r in results.values())
    # The dead pod's permits came back with their leases (6 s): the work finished, and the
    # provider never saw more than the limit at once.
    assert slow.most_in_flight <= 4
    assert slow.throttled == 0


async def _holding(provider: FakeProvider, count: int) -> bool:
    return provider.in_flight >= count


async def test_a_redis_restart_does_not_reset_the_windows(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor,
        durable_redis: DurableRedis, provider: FakeProvider) -> None:
    _budgeted(runtime_pool, requests_per_second=RPS, concurrent_requests=5)
    for _ in range(2):
        start_supervisor(runtime_pool, redis_url=durable_redis.url)
    client = await TaskClient.connect(durable_redis.url, runtime_pool.config)
    try:
        run = asyncio.create_task(_run([client], provider.url, 90))
        await eventually_async(lambda: _accepted(provider, 40), within=60, interval=0.05)
        durable_redis.restart()  # kill -9, then back from its append-only file
        results = await run
    finally:
        await client.close()
    assert len(results) == 90
    assert provider.most_in_any_window(1.0) <= RPS
    assert provider.throttled <= 1


async def _accepted(provider: FakeProvider, count: int) -> bool:
    return len(provider.accepted) >= count
