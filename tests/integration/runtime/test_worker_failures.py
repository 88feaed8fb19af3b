"""Workers that die, hang or leak: the task still completes (or is dead-lettered), the pool
heals itself, and the supervisor says what happened in its metrics.

Real supervisor processes against the real test Redis; workers are killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest
from redis.asyncio import Redis

from agent_runtime.sdk.client import TaskClient
from tests.integration.runtime.handlers import MB, attempts_key, executions_key, pids_key
from tests.plugins.runtime import RuntimePool, StartSupervisor
from tests.waiting import eventually_async

pytestmark = [pytest.mark.services, pytest.mark.slow]


async def _pid_running(redis: Redis, pool: str, task_id: str) -> int:
    async def pid() -> object:
        return await redis.hget(pids_key(pool), task_id)

    return int(str(await eventually_async(pid, within=30)))


async def _executions(redis: Redis, pool: str) -> dict[str, int]:
    raw = await redis.hgetall(executions_key(pool))
    return {str(task_id): int(count) for task_id, count in raw.items()}


async def test_kill_9_mid_task_reruns_it_without_waiting_for_the_lease(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    # A long lease: if recovery waited for it, the test would time out.
    runtime_pool.update(lease_seconds=120)
    supervisor = start_supervisor(runtime_pool)
    task_id = await task_client.submit({"n": 1, "sleep": 2})
    victim = await _pid_running(redis_client, runtime_pool.config.pool, task_id)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()

    result = await task_client.wait(task_id, max_wait=30)

    assert result.status == "succeeded"
    assert result.result["pid"] != victim
    assert result.attempts == 2
    assert (await _executions(redis_client, runtime_pool.config.pool))[task_id] == 2
    # Re-run at once on the replacement worker: 2 s of work plus warm-up, far below the lease.
    assert time.monotonic() - killed_at < 15
    assert supervisor.metric_reaching("agentpool_worker_restarts_total", 1, reason="crash") == 1


async def test_random_kills_across_thousands_of_tasks_lose_nothing(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    total = 3000
    runtime_pool.update(workers=3, concurrency=8, max_deliveries=10, lease_seconds=30)
    supervisor = start_supervisor(runtime_pool)
    rng = random.Random(7)
    ids = await task_client.submit_many(
        [{"n": i, "sleep": rng.uniform(0, 0.02)} for i in range(total)])
    kills = 0
    done = asyncio.Event()

    async def chaos() -> None:
        # Kill by progress, not by the clock: one kill per ~100 task executions, so a slow
        # (loaded) machine sees the same chaos per task as a fast one, and no task is killed
        # on every one of its max_deliveries attempts merely because warm-up was slow.
        nonlocal kills
        last = 0
        while not done.is_set():
            await asyncio.sleep(0.2)
            ran = await redis_client.hlen(executions_key(runtime_pool.config.pool))
            pids = supervisor.worker_pids()
            if ran - last < 100 or not pids:
                continue
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
            except ProcessLookupError:
                continue  # it exited between listing and killing
            last = ran
            kills += 1

    killer = asyncio.create_task(chaos())
    started = time.monotonic()
    try:
        results = await task_client.wait_many(ids, max_wait=300)
    finally:
        done.set()
        await killer
    elapsed = time.monotonic() - started

    executions = await _executions(redis_client, runtime_pool.config.pool)
    not_succeeded = [t for t in ids if results[t].status != "succeeded"]
    never_ran = [t for t in ids if t not in executions]
    duplicates = sum(executions.values()) - total
    print(f"\nrandom kills: {total} tasks, {kills} SIGKILLs, {len(not_succeeded)} lost, "
          f"{duplicates} re-executions, {elapsed:.1f}s")
    assert kills >= 5
    assert not not_succeeded
    assert not never_ran
    assert sorted(r.result["n"] for r in results.values()) == list(range(total))
    # Only tasks in flight at a kill run again: at most one worker's slots per kill.
    assert duplicates <= kills * runtime_pool.config.concurrency
    assert supervisor.metric_reaching("agentpool_worker_restarts_total",
                                      kills - 1, reason="crash") >= kills - 1


async def test_hung_handler_is_killed_retried_then_dead_lettered(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    runtime_pool.update(workers=1, concurrency=2, task_timeout_seconds=1, hang_grace_seconds=1,
                        max_deliveries=2)
    supervisor = start_supervisor(runtime_pool)
    task_id = await task_client.submit({}, handler="hang")

    result = await task_client.wait(task_id, max_wait=60)

    assert result.status == "failed"
    assert "max deliveries (2) exceeded" in (result.error or "")
    assert "timeout" in (result.error or "")
    assert (await _executions(redis_client, runtime_pool.config.pool))[task_id] == 2
    dead = [fields for _id, fields in await task_client.dead_letters() if fields["id"] == task_id]
    assert len(dead) == 1
    assert "max deliveries" in dead[0]["dead_reason"]
    assert supervisor.metric_reaching("agentpool_worker_restarts_total", 2, reason="timeout") == 2
    assert supervisor.metric_reaching("agentpool_tasks_dead_lettered_total",
                                      1, reason="max_deliveries") == 1
    # The pool recovered: a normal task runs on the replacement worker.
    assert (await task_client.run({"n": 5}, max_wait=30))["n"] == 5


async def test_leaking_worker_is_recycled_before_its_memory_limit(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    limit = 160 * MB
    runtime_pool.update(workers=1, concurrency=1, max_worker_memory_bytes=limit,
                        worker_memory_recycle_ratio=0.6)
    supervisor = start_supervisor(runtime_pool)
    ids = await task_client.submit_many([{"mb": 10, "sleep": 0.2}] * 25, handler="leak")

    results = await task_client.wait_many(ids, max_wait=120)

    assert all(r.status == "succeeded" for r in results.values())
    peak = max(r.result["uss"] for r in results.values())
    pids = {r.result["pid"] for r in results.values()}
    print(f"\nleak: peak USS {peak / MB:.0f} MiB (limit {limit / MB:.0f}), {len(pids)} workers")
    assert peak < limit
    assert len(pids) >= 2  # it was replaced at least once
    assert supervisor.metric_reaching("agentpool_worker_restarts_total", 1, reason="memory") >= 1
    # Drained, not killed: no task had to run twice.
    assert set((await _executions(redis_client, runtime_pool.config.pool)).values()) == {1}


async def test_a_dead_workers_tasks_run_before_work_queued_after_them(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    # One worker, two slots. Kill it while it runs two long tasks, then queue more work: the
    # replacement must take the dead worker's tasks as soon as slots free up, not after the
    # new work (whatever won the race between its warm-up and the hand-over).
    runtime_pool.update(workers=1, concurrency=2, lease_seconds=120)
    start_supervisor(runtime_pool)
    pool = runtime_pool.config.pool
    interrupted = [await task_client.submit({"n": i, "sleep": 1.0}) for i in range(2)]
    victims = {await _pid_running(redis_client, pool, t) for t in interrupted}
    assert len(victims) == 1
    os.kill(victims.pop(), signal.SIGKILL)
    later = await task_client.submit_many([{"n": 10 + i, "sleep": 0.3} for i in range(12)])

    results = await task_client.wait_many(interrupted + later, max_wait=60)

    assert all(r.status == "succeeded" for r in results.values())
    assert [results[t].attempts for t in interrupted] == [2, 2]
    last_new = max(results[t].finished_at or 0 for t in later)
    for task_id in interrupted:
        assert (results[task_id].finished_at or 0) < last_new


async def test_a_task_that_kills_its_worker_at_once_is_dead_lettered_with_the_cause(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    # It dies before its worker reports that it started: the cause comes from the queue.
    runtime_pool.update(workers=1, concurrency=1, max_deliveries=2)
    supervisor = start_supervisor(runtime_pool)
    task_id = await task_client.submit({}, handler="segfault")

    result = await task_client.wait(task_id, max_wait=60)

    assert result.status == "failed"
    assert result.error == ("max deliveries (2) exceeded; last error: "
                            "worker died: signal 11 (SIGSEGV)")
    assert (await _executions(redis_client, runtime_pool.config.pool))[task_id] == 2
    assert supervisor.metric_reaching("agentpool_worker_restarts_total", 2,
                                      reason="crash") == 2
    # The pool recovered: a normal task runs on the replacement worker.
    assert (await task_client.run({"n": 5}, max_wait=30))["n"] == 5


async def test_a_handler_that_blocks_from_its_first_line_dies_at_its_deadline(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    # It blocks the worker's event loop before its first await, for far longer than its
    # timeout; the heartbeat timeout (30 s) is far longer still.
    runtime_pool.update(workers=1, concurrency=4, task_timeout_seconds=1, hang_grace_seconds=1,
                        max_deliveries=1, heartbeat_timeout_seconds=30)
    supervisor = start_supervisor(runtime_pool)
    blocker = await task_client.submit({"seconds": 20}, handler="block_at_once")
    started = time.monotonic()

    result = await task_client.wait(blocker, max_wait=60)
    elapsed = time.monotonic() - started

    assert result.status == "failed"
    assert result.error == ("max deliveries (1) exceeded; last error: worker killed: task "
                            "exceeded its 1s timeout")
    # Killed at timeout + grace (2 s), not when the block ends (20 s) or heartbeats stop (30 s).
    assert elapsed < 12, elapsed
    assert supervisor.metric_reaching("agentpool_worker_restarts_total", 1,
                                      reason="timeout") == 1
    assert supervisor.metric("agentpool_worker_restarts_total", reason="heartbeat") == 0
    assert (await _executions(redis_client, runtime_pool.config.pool))[blocker] == 1
    assert (await task_client.run({"n": 3}, max_wait=30))["n"] == 3


async def test_batch_mates_of_a_task_that_kills_its_worker_are_not_dead_lettered(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    # One worker, one read: a task that kills its worker shares the batch with healthy ones.
    runtime_pool.update(workers=1, concurrency=8, max_deliveries=2)
    healthy = await task_client.submit_many([{"n": n, "sleep": 0.5} for n in range(3)])
    crasher = await task_client.submit({}, handler="segfault")
    later = await task_client.submit_many([{"n": n} for n in range(3, 6)])
    supervisor = start_supervisor(runtime_pool)

    results = await task_client.wait_many([*healthy, crasher, *later], max_wait=60)

    assert [results[t].result["n"] for t in healthy + later] == list(range(6))
    assert results[crasher].status == "failed"
    assert results[crasher].error == ("max deliveries (2) exceeded; last error: worker died: "
                                      "signal 11 (SIGSEGV)")
    executions = await _executions(redis_client, runtime_pool.config.pool)
    assert executions[crasher] == 2  # its second run was alone: it took nobody with it
    assert all(executions[t] <= 2 for t in healthy)  # killed with it at most once
    assert supervisor.metric_reaching("agentpool_worker_restarts_total", 2,
                                      reason="crash") == 2
    dead = [fields["id"] for _id, fields in await task_client.dead_letters()]
    assert dead == [crasher]


async def test_attempts_count_up_across_crashes_and_retries_and_never_pass_the_bound(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    # Two runs kill the worker, the third raises (a retry is a new stream entry), and again.
    runtime_pool.update(workers=1, concurrency=2, max_deliveries=5)
    supervisor = start_supervisor(runtime_pool)
    task_id = await task_client.submit({}, handler="crash_twice_then_fail")

    result = await task_client.wait(task_id, max_wait=60)

    pool = runtime_pool.config.pool
    attempts = [int(a) for a in await redis_client.lrange(attempts_key(pool, task_id), 0, -1)]
    assert attempts == [1, 2, 3, 4, 5]
    assert (await _executions(redis_client, pool))[task_id] == 5
    assert result.status == "failed"
    assert result.error == ("max deliveries (5) exceeded; last error: worker died: "
                            "signal 11 (SIGSEGV)")
    assert supervisor.metric_reaching("agentpool_worker_restarts_total", 4,
                                      reason="crash") == 4
