"""A pod whose supervisor dies, or freezes, while its workers run long tasks: nothing renews
that pod's leases any more, so another pod will reclaim the tasks. The workers must stop
first - no task may ever run twice at the same time - and the tasks still complete.

Each task (`handlers.exclusive`) registers its execution while it runs and counts an overlap
when it finds another live execution of itself (any process on this host).
"""

from __future__ import annotations

import asyncio
import os
import signal

import psutil
import pytest
from redis.asyncio import Redis

from agent_runtime.sdk.client import TaskClient
from tests.integration.runtime.handlers import executions_key, overlaps_key
from tests.plugins.runtime import RunningSupervisor, RuntimePool, StartSupervisor
from tests.waiting import eventually, eventually_async

pytestmark = [pytest.mark.services, pytest.mark.slow]

TASKS = 4
SECONDS = 8.0


async def _all_running(redis: Redis, pool: str) -> bool:
    return await redis.hlen(executions_key(pool)) == TASKS


def _gone(pids: list[int]) -> bool:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return not alive


async def _long_tasks_on(first: RunningSupervisor, pool: RuntimePool, client: TaskClient,
                         redis: Redis) -> tuple[list[str], list[int]]:
    ids = await client.submit_many([{"n": n, "seconds": SECONDS} for n in range(TASKS)],
                                   handler="exclusive")
    await eventually_async(lambda: _all_running(redis, pool.config.pool), within=30)
    workers = first.worker_pids()
    assert len(workers) == 2
    return ids, workers


async def _assert_each_ran_alone(ids: list[str], client: TaskClient, redis: Redis,
                                 pool: RuntimePool) -> None:
    results = await client.wait_many(ids, max_wait=120)
    assert [results[t].result["n"] for t in ids] == list(range(TASKS))
    assert await redis.hgetall(overlaps_key(pool.config.pool)) == {}  # never twice at once
    executions = {t: int(n) for t, n in
                  (await redis.hgetall(executions_key(pool.config.pool))).items()}
    for task_id in ids:
        # Interrupted at least once, then run to the end by the other pod. (On a loaded
        # machine a worker may also stop early, when its supervisor was too slow to confirm
        # the leases: an extra interrupted run, never an overlapping one.)
        assert executions[task_id] >= 2
        # Every run was counted: attempts never lag behind executions.
        assert results[task_id].attempts >= executions[task_id]


async def test_workers_stop_at_once_when_their_supervisor_is_killed(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    # The supervisor is not the container's PID 1 (or the OOM killer chose it): its worker
    # processes would live on. A long drain grace and a short lease: before this was fixed,
    # the workers ran on for the grace while the other pod re-ran their tasks.
    runtime_pool.update(workers=2, concurrency=2, lease_seconds=6, task_timeout_seconds=30,
                        drain_grace_seconds=20)
    first = start_supervisor(runtime_pool)
    ids, workers = await _long_tasks_on(first, runtime_pool, task_client, redis_client)
    start_supervisor(runtime_pool)  # the other pod

    os.kill(first.process.pid, signal.SIGKILL)

    # The workers stop at once, long before their tasks would have ended.
    eventually(lambda: _gone(workers), timeout=3, interval=0.05)
    await _assert_each_ran_alone(ids, task_client, redis_client, runtime_pool)


async def test_workers_stop_before_their_leases_lapse_when_the_supervisor_freezes(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    # A supervisor that is alive but stuck (here: SIGSTOP) renews nothing, and its workers
    # see no end of file on their pipe. They must stop on their own before the lease runs out.
    runtime_pool.update(workers=2, concurrency=2, lease_seconds=6, task_timeout_seconds=30,
                        drain_grace_seconds=20)
    first = start_supervisor(runtime_pool)
    ids, workers = await _long_tasks_on(first, runtime_pool, task_client, redis_client)
    start_supervisor(runtime_pool)  # the other pod

    os.kill(first.process.pid, signal.SIGSTOP)
    try:
        eventually(lambda: _gone(workers), timeout=runtime_pool.config.lease_seconds,
                   interval=0.05)
        await _assert_each_ran_alone(ids, task_client, redis_client, runtime_pool)
    finally:
        os.kill(first.process.pid, signal.SIGCONT)

    # Thawed, the first pod replaces its workers and is ready again.
    async def ready() -> bool:
        status, _ = await asyncio.to_thread(first.get, "/readyz")
        return status == 200

    await eventually_async(ready, within=30)
    assert "the pod's leases were last confirmed" in first.log()


async def test_a_sync_handler_past_its_timeout_is_not_retried_while_its_thread_runs(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    # A thread cannot be cancelled: the timeout fires after 1 s, the thread sleeps on to 3 s.
    # Its retry must not start on the other worker before the thread has ended.
    runtime_pool.update(workers=2, concurrency=2, task_timeout_seconds=1, hang_grace_seconds=10,
                        max_deliveries=2, retry_backoff_seconds=0.1)
    start_supervisor(runtime_pool)
    task_id = await task_client.submit({"seconds": 3}, handler="sync_exclusive")

    result = await task_client.wait(task_id, max_wait=60)

    assert result.status == "failed"
    assert result.error == "task timed out after 1s"
    pool = runtime_pool.config.pool
    assert await redis_client.hget(executions_key(pool), task_id) == "2"
    assert await redis_client.hgetall(overlaps_key(pool)) == {}
