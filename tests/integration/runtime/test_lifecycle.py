"""The pod's lifecycle: SIGTERM under load drains without losing a task, and the supervisor
and its workers ride out a Redis restart."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from agent_runtime.sdk.client import TaskClient
from agentpool_dev.services import ServiceSettings, restart_redis
from tests.integration.runtime.handlers import executions_key
from tests.plugins.runtime import RunningSupervisor, RuntimePool, StartSupervisor
from tests.waiting import eventually, eventually_async

pytestmark = [pytest.mark.services, pytest.mark.slow]


async def test_sigterm_under_load_finishes_or_hands_back_everything(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    # A long lease: handed-back tasks must be picked up at once, not after lease expiry.
    runtime_pool.update(workers=2, concurrency=4, drain_grace_seconds=2, lease_seconds=120)
    first = start_supervisor(runtime_pool)
    # Longer than the grace period: these can only be handed back.
    long = await task_client.submit_many([{"seconds": 6}] * 3, handler="sleepy")
    rng = random.Random(3)
    short = await task_client.submit_many([{"seconds": rng.uniform(0.05, 0.3)}
                                           for _ in range(300)], handler="sleepy")

    async def some_done() -> bool:
        done = await redis_client.hlen(executions_key(runtime_pool.config.pool))
        return done >= 60

    await eventually_async(some_done, within=30)
    stopping = time.monotonic()
    code = await asyncio.to_thread(first.terminate, 30)
    stop_seconds = time.monotonic() - stopping

    assert code == 0
    assert stop_seconds < runtime_pool.config.drain_grace_seconds + 5
    assert first.worker_pids() == []
    assert "handed back" in first.log()

    second = start_supervisor(runtime_pool)
    picked_up = time.monotonic()
    results = await task_client.wait_many(short + long, max_wait=60)

    assert all(r.status == "succeeded" for r in results.values())
    assert time.monotonic() - picked_up < 30  # far below the 120 s lease
    executions = await redis_client.hgetall(executions_key(runtime_pool.config.pool))
    assert set(short + long) <= set(executions)
    # Interrupted at the deadline, handed back, run again by the second pod.
    assert [executions[t] for t in long] == ["2", "2", "2"]
    assert second.metric_reaching("agentpool_tasks_processed_total", 1, outcome="success") > 0


async def _ready_again(supervisor: RunningSupervisor) -> bool:
    status, _ = await asyncio.to_thread(supervisor.get, "/readyz")
    return status == 200


async def test_supervisor_and_workers_reconnect_after_a_redis_restart(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        services: ServiceSettings) -> None:
    supervisor = start_supervisor(runtime_pool)
    assert (await task_client.run({"n": 1}, max_wait=20))["n"] == 1

    # This Redis keeps no data: the stream, the consumer group, everything is gone after it.
    await asyncio.to_thread(restart_redis, services)

    await eventually_async(lambda: _ready_again(supervisor), within=30)

    async def submit_after_restart() -> str:
        try:
            return await task_client.submit({"n": 2})
        except (RedisConnectionError, OSError):
            return ""  # the client's pooled connection died with the server

    task_id = await eventually_async(submit_after_restart, within=20)
    result = await task_client.wait(task_id, max_wait=30)
    assert result.status == "succeeded"
    assert result.result["n"] == 2
    assert supervisor.process.poll() is None
    assert eventually(lambda: "Redis unavailable" in supervisor.log(), timeout=5)


async def test_a_dead_pods_consumers_leave_the_group_once_their_tasks_moved_on(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    runtime_pool.update(workers=2, concurrency=2, lease_seconds=2)
    dead = start_supervisor(runtime_pool)
    stream, pool = runtime_pool.config.stream_key, runtime_pool.config.pool
    interrupted = await task_client.submit_many([{"seconds": 1}] * 2, handler="sleepy")

    async def both_running() -> bool:
        return await redis_client.hlen(executions_key(pool)) == 2

    await eventually_async(both_running, within=30)
    rows = await redis_client.xinfo_consumers(stream, "workers")
    dead_consumers = {str(row["name"]) for row in rows}
    assert dead_consumers
    dead.kill_tree()  # the whole pod, at once
    alive = start_supervisor(runtime_pool)

    results = await task_client.wait_many(interrupted, max_wait=60)
    assert {r.status for r in results.values()} == {"succeeded"}

    async def only_the_live_pod_left() -> set[str]:
        rows = await redis_client.xinfo_consumers(stream, "workers")
        names = {str(row["name"]) for row in rows}
        return names if names and not names & dead_consumers else set()

    names = await eventually_async(only_the_live_pod_left, within=30)
    # The live pod's own consumers stay: they keep reading.
    assert all(name.startswith("pod1-") for name in names)
    assert (await task_client.run({"n": 1}, max_wait=30))["n"] == 1
    assert alive.process.poll() is None
