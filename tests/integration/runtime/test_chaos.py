"""Acceptance: thousands of mixed tasks while workers, supervisors and whole pods are killed
and Redis restarts. Nothing is lost, no task runs twice at the same time, every dead letter is
earned by its own task, and no task runs more than `maxDeliveries` times.

Three pods share a Redis of their own that keeps an append-only file fsynced on every write
(as production Redis would), so a `kill -9` of Redis loses nothing. Chaos is driven by
progress, not by the clock: each planned action fires once that share of the tasks has run,
so a slow (loaded) machine sees the same chaos per task as a fast one.

Healthy tasks (`handlers.exclusive`) count every execution, record each `ctx.attempt`, and
count an overlap if another live execution of the same task exists anywhere on this host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agent_runtime.sdk.client import TaskClient
from tests.integration.runtime.handlers import attempts_key, executions_key, overlaps_key
from tests.plugins.durable_redis import DurableRedis
from tests.plugins.runtime import RunningSupervisor, RuntimePool, StartSupervisor

pytestmark = [pytest.mark.services, pytest.mark.slow]

HEALTHY = 2400
FLAKY = 40
CRASHERS = 5
HANGERS = 2
FAILING = 5
PERMANENT = 5
MALFORMED = 10
MAX_DELIVERIES = 5
PODS = 3
# The chaos, in order of progress (share of tasks that have run when the action fires).
PLAN = (["kill worker"] * 24 + ["kill supervisor"] * 3 + ["kill pod"] * 3
        + ["terminate pod"] * 2 + ["restart redis"] * 3)


@pytest.fixture
async def chaos_client(runtime_pool: RuntimePool,
                       durable_redis: DurableRedis) -> AsyncIterator[TaskClient]:
    client = await TaskClient.connect(durable_redis.url, runtime_pool.config)
    yield client
    await client.close()


@dataclass
class Chaos:
    pool: RuntimePool
    start: StartSupervisor
    redis: DurableRedis
    pods: list[RunningSupervisor]
    rng: random.Random
    done: list[str] = field(default_factory=list)

    async def act(self, action: str) -> None:
        live = [pod for pod in self.pods if pod.process.poll() is None]
        pod = self.rng.choice(live)
        if action == "kill worker":
            workers = pod.worker_pids()
            if workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.rng.choice(workers), signal.SIGKILL)
        elif action == "kill supervisor":  # its workers live on unless they stop themselves
            os.kill(pod.process.pid, signal.SIGKILL)
            await self._replace(pod)
        elif action == "kill pod":
            pod.kill_tree()
            await self._replace(pod)
        elif action == "terminate pod":  # SIGTERM: drain within the (short) grace
            try:
                await asyncio.to_thread(pod.terminate, 30)
            except subprocess.TimeoutExpired:
                os.kill(pod.process.pid, signal.SIGUSR1)  # where it waits, into its log
                await asyncio.sleep(1)
                pytest.fail(f"pod did not stop:\n{pod.log()[-20000:]}")
            await self._replace(pod)
        elif action == "restart redis":
            await asyncio.to_thread(self.redis.restart)
        self.done.append(action)

    async def _replace(self, pod: RunningSupervisor) -> None:
        self.pods.remove(pod)
        self.pods.append(await asyncio.to_thread(self.start, self.pool,
                                                 redis_url=self.redis.url))


async def _progress(redis: Redis, pool: str) -> int:
    try:
        return int(await redis.hlen(executions_key(pool)))
    except (RedisError, OSError):
        return -1  # restarting


async def _reached(redis: Redis, pool: str, milestone: int, waiting: asyncio.Task[Any]) -> bool:
    """Wait until `milestone` tasks have run; False if everything finished first."""
    while not waiting.done():
        if await _progress(redis, pool) >= milestone:
            return True
        await asyncio.sleep(0.05)
    return False


async def _add_malformed(redis: Redis, stream: str, rng: random.Random) -> list[str]:
    entries: list[dict[Any, Any]] = [
        {b"id": b"m-utf8", b"handler": b"default", b"payload": b'"\xff"', b"enqueued_at": b"1"},
        {b"handler": b"default", b"payload": b"{}", b"enqueued_at": b"1"},
        {b"id": b"m-json", b"handler": b"default", b"payload": b"{no", b"enqueued_at": b"1"},
        {b"\xfe": b"\xff"},
        {b"id": b"m-deep", b"handler": b"default", b"payload": b"[" * 3000 + b"]" * 3000,
         b"enqueued_at": b"1"},
    ]
    ids = []
    for n in range(MALFORMED):
        entry_id: Any = await redis.xadd(stream, entries[n % len(entries)]
                                         | {b"n": str(rng.random()).encode()})
        ids.append(bytes(entry_id).decode())
    return ids


async def test_chaos_loses_nothing_never_runs_a_task_twice_at_once_and_keeps_the_bounds(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor,
        durable_redis: DurableRedis, chaos_client: TaskClient) -> None:
    rng = random.Random(13)
    runtime_pool.update(workers=2, concurrency=4, lease_seconds=6, task_timeout_seconds=2,
                        hang_grace_seconds=1, drain_grace_seconds=2, heartbeat_timeout_seconds=10,
                        max_deliveries=MAX_DELIVERIES, retry_backoff_seconds=0.1,
                        retry_backoff_max_seconds=0.5)
    pool, stream = runtime_pool.config.pool, runtime_pool.config.stream_key
    raw = Redis.from_url(durable_redis.url)
    text = Redis.from_url(durable_redis.url, decode_responses=True)
    try:
        healthy = await chaos_client.submit_many(
            [{"n": n, "seconds": rng.uniform(0.01, 0.06)} for n in range(HEALTHY)],
            handler="exclusive")
        bad = {
            "crash": await chaos_client.submit_many([{}] * CRASHERS, handler="segfault"),
            "hang": await chaos_client.submit_many([{"seconds": 30}] * HANGERS,
                                                   handler="block_at_once"),
            "fail": await chaos_client.submit_many([{"n": n} for n in range(FAILING)],
                                                   handler="fail"),
            "permanent": await chaos_client.submit_many([{}] * PERMANENT, handler="permanent"),
        }
        flaky = await chaos_client.submit_many([{}] * FLAKY, handler="flaky")
        malformed = await _add_malformed(raw, stream, rng)
        started = time.monotonic()
        pods = [await asyncio.to_thread(start_supervisor, runtime_pool,
                                        redis_url=durable_redis.url) for _ in range(PODS)]
        chaos = Chaos(runtime_pool, start_supervisor, durable_redis, pods, rng)
        plan = sorted(rng.sample(range(int(HEALTHY * 0.05), int(HEALTHY * 0.9)), len(PLAN)))
        actions = list(PLAN)
        rng.shuffle(actions)
        everything = healthy + flaky + [t for ids in bad.values() for t in ids]
        waiting = asyncio.create_task(chaos_client.wait_many(everything, max_wait=150))
        for milestone, action in zip(plan, actions, strict=True):
            if not await _reached(text, pool, milestone, waiting):
                break
            await chaos.act(action)
        results = await waiting
        elapsed = time.monotonic() - started

        executions = {k: int(v) for k, v in (await text.hgetall(executions_key(pool))).items()}
        overlaps = await text.hgetall(overlaps_key(pool))
        dead = [fields for _id, fields in await chaos_client.dead_letters(1000)]
        duplicates = sum(executions.get(t, 0) - 1 for t in healthy)
        print(f"\nchaos: {len(everything)} tasks + {MALFORMED} malformed entries in "
              f"{elapsed:.0f}s; actions {json.dumps({a: chaos.done.count(a) for a in PLAN})}; "
              f"re-executions of healthy tasks {duplicates} "
              f"({duplicates / HEALTHY:.2%}); concurrent runs {len(overlaps)}; "
              f"dead letters {len(dead)}")

        assert sorted(chaos.done) == sorted(PLAN)  # all of the chaos happened
        # 0 lost: every task has its final result; healthy ones succeeded, each exactly once
        # in its result, with their own value.
        assert [results[t].result["n"] for t in healthy] == list(range(HEALTHY))
        assert all(results[t].status == "succeeded" for t in flaky)
        # 0 concurrent duplicate runs.
        assert overlaps == {}
        # Deliveries never above maxDeliveries, and attempts only count up.
        assert max(executions.values()) <= MAX_DELIVERIES
        for task_id in rng.sample(healthy, 200) + [t for t in healthy if executions[t] > 1]:
            attempts = [int(a) for a in await text.lrange(attempts_key(pool, task_id), 0, -1)]
            assert attempts == sorted(set(attempts)), (task_id, attempts)
            assert attempts[-1] <= MAX_DELIVERIES
            assert results[task_id].attempts == attempts[-1]
        # Every dead letter is earned by its own task, with its own reason.
        by_task = {fields.get("id"): fields for fields in dead if fields.get("id")}
        expected = {t: kind for kind, ids in bad.items() for t in ids}
        assert {t for t in by_task if t in expected} == set(expected)
        assert not set(by_task) & set(healthy + flaky)
        for task_id, kind in expected.items():
            reason = by_task[task_id]["dead_reason"]
            assert results[task_id].status == "failed"
            # (A chaos kill may also hit one of its runs; that run counts as a delivery.)
            if kind in ("crash", "hang"):
                assert reason.startswith(f"max deliveries ({MAX_DELIVERIES}) exceeded; last "
                                         "error: worker "), reason
            elif kind == "fail":
                assert reason.startswith(("RuntimeError: boom", f"max deliveries "
                                          f"({MAX_DELIVERIES}) exceeded; last error: ")), reason
            else:
                assert reason == "bad input, do not retry"
        sources = {fields.get("source_entry") for fields in dead}
        assert set(malformed) <= sources
        assert all(f["dead_reason"].startswith("malformed task:") for f in dead
                   if f.get("source_entry") in malformed)
        # Nothing is left behind in the queue.
        assert await text.xlen(stream) == 0
        assert await text.zcard(chaos_client.keys.delayed) == 0
    finally:
        await raw.aclose()
        await text.aclose()
