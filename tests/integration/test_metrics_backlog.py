"""The metrics API server's backlog reads against the real Redis and the real runtime.

A real supervisor (`agentpool-runtime run`, pod name `pod0`) takes tasks; the reader must
count waiting + in-flight tasks exactly, and attribute the in-flight ones to `pod0` through
the consumer names the runtime really uses (the pod deletion-cost contract).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_runtime.queue.backlog import Backlog, BacklogError, BacklogReader
from agent_runtime.queue.keys import Keys
from agent_runtime.sdk.client import TaskClient
from agentpool_dev.procs import free_port
from agentpool_operator.deletioncost import deletion_costs
from tests.fake_provider import FakeProvider, ProviderLimits
from tests.plugins.runtime import RuntimePool, StartSupervisor
from tests.waiting import eventually_async

pytestmark = pytest.mark.services


@pytest.fixture
async def reader() -> AsyncIterator[BacklogReader]:
    backlog_reader = BacklogReader()
    yield backlog_reader
    await backlog_reader.close()


async def test_a_running_pool_has_waiting_and_in_flight_tasks_held_by_its_pod(
    runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
    redis_url: str, reader: BacklogReader,
) -> None:
    start_supervisor(runtime_pool)  # 2 workers x 4 concurrent tasks, pod name "pod0"
    keys = Keys.for_config(runtime_pool.config)
    await task_client.submit_many([{"n": i, "sleep": 30} for i in range(20)])
    async def all_slots_busy() -> Backlog | None:
        backlog = await reader.read(redis_url, keys)
        return backlog if backlog.in_flight == 8 else None
    backlog = await eventually_async(all_slots_busy, within=30)
    assert (backlog.waiting, backlog.in_flight, backlog.total) == (12, 8, 20)
    assert sum(backlog.per_consumer.values()) == 8
    # Every consumer is one of pod0's workers; an idle pod next to it costs nothing.
    assert deletion_costs(["pod0", "pod1"], backlog.per_consumer) == {"pod0": 8, "pod1": 0}


async def test_before_any_worker_started_every_entry_is_waiting(
    runtime_pool: RuntimePool, task_client: TaskClient, redis_url: str, redis_client: Redis,
    reader: BacklogReader,
) -> None:
    keys = Keys.for_config(runtime_pool.config)
    assert await reader.read(redis_url, keys) == Backlog(0, 0)  # no stream at all
    await task_client.submit_many([{"n": i} for i in range(5)])
    assert await reader.read(redis_url, keys) == Backlog(5, 0)  # stream, no group
    # A retry parked until its time is still work to do.
    await redis_client.zadd(keys.delayed, {"retry-envelope": time.time() + 60})
    assert (await reader.read(redis_url, keys)).waiting == 6


async def test_waiting_is_counted_even_when_redis_cannot_report_the_lag(
    runtime_pool: RuntimePool, task_client: TaskClient, redis_url: str, redis_client: Redis,
    reader: BacklogReader,
) -> None:
    keys = Keys.for_config(runtime_pool.config)
    await redis_client.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
    await task_client.submit_many([{"n": i} for i in range(6)])
    await redis_client.xreadgroup(keys.group, "pod0-abc123-0.1", {keys.stream: ">"}, count=2)
    assert await reader.read(redis_url, keys) == Backlog(
        4, 2, {"pod0-abc123-0.1": 2})
    # Deleting an undelivered entry makes XINFO GROUPS report lag as nil.
    entries: Any = await redis_client.xrange(keys.stream)
    await redis_client.xdel(keys.stream, entries[-1][0])
    groups = await redis_client.xinfo_groups(keys.stream)
    assert groups[0]["lag"] is None
    assert (await reader.read(redis_url, keys)).waiting == 3


async def test_the_oldest_waiting_task_ages_until_a_worker_takes_it(
    runtime_pool: RuntimePool, task_client: TaskClient, redis_url: str, redis_client: Redis,
    reader: BacklogReader,
) -> None:
    keys = Keys.for_config(runtime_pool.config)
    await task_client.submit_many([{"n": i} for i in range(3)])
    await asyncio.sleep(1.2)
    await task_client.submit({"n": 3})
    # No group yet: the first entry of the stream is the oldest waiting task.
    assert 1.2 <= (await reader.read(redis_url, keys)).oldest_waiting_seconds < 30
    # A worker takes the three old ones; the one submitted later is now the oldest.
    await redis_client.xgroup_create(keys.stream, keys.group, id="0")
    await redis_client.xreadgroup(keys.group, "pod0-abc123-0.1", {keys.stream: ">"},
                                  count=3)
    backlog = await reader.read(redis_url, keys)
    assert (backlog.waiting, backlog.in_flight) == (1, 3)
    assert backlog.oldest_waiting_seconds < 1.2
    # Everything taken: nothing waits, however long the in-flight tasks have run.
    await redis_client.xreadgroup(keys.group, "pod0-abc123-0.1", {keys.stream: ">"})
    assert (await reader.read(redis_url, keys)).oldest_waiting_seconds == 0.0


async def test_an_unreachable_redis_is_an_error_that_names_no_credentials(
    runtime_pool: RuntimePool,
) -> None:
    keys = Keys.for_config(runtime_pool.config)
    reader = BacklogReader(timeout=0.5)
    url = f"redis://agent:very-secret-pw@127.0.0.1:{free_port()}/0"
    try:
        with pytest.raises(BacklogError) as raised:
            await reader.read(url, keys)
        assert "very-secret-pw" not in str(raised.value)
        assert "agent:" not in str(raised.value)
        assert "127.0.0.1" in str(raised.value)
    finally:
        await reader.close()


async def test_clients_are_reused_per_url_and_the_oldest_closed_beyond_the_limit(
    runtime_pool: RuntimePool, redis_url: str,
) -> None:
    keys = Keys.for_config(runtime_pool.config)
    other_db = redis_url.rsplit("/", 1)[0] + "/1"
    reader = BacklogReader(max_clients=1)
    try:
        for url in (redis_url, other_db, redis_url):
            assert await reader.read(url, keys) == Backlog(0, 0)
    finally:
        await reader.close()


async def test_tasks_waiting_on_their_budget_and_the_live_pods_are_counted(
    runtime_pool: RuntimePool, start_supervisor: StartSupervisor, redis_url: str,
    reader: BacklogReader,
) -> None:
    provider = FakeProvider(ProviderLimits(), latency_seconds=10)
    url = await provider.start()
    runtime_pool.update(budgets=[{"name": "llm", "budget": f"team/{runtime_pool.config.pool}",
                                  "concurrent_requests": 1}], http_timeout_seconds=15)
    for _ in range(2):
        start_supervisor(runtime_pool)
    keys = Keys.for_config(runtime_pool.config)
    client = await TaskClient.connect(redis_url, runtime_pool.config)
    try:
        await client.submit_many([{"url": url}] * 4, handler="budgeted")

        async def bound() -> Backlog | None:
            backlog = await reader.read(redis_url, keys)
            return backlog if backlog.budget_waiting == 3 else None

        # One task holds the key's only permit; the other three wait on the budget.
        backlog = await eventually_async(bound, within=30)
    finally:
        await client.close()
        await provider.stop()
    assert backlog.live_pods == 2
    assert backlog.in_flight == 4
