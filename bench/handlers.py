"""Task bodies shared by every system in the benchmarks, so they all run the same work.

Each system calls these through its own signature (AgentPool `(payload, ctx)`, arq `(ctx, ...)`,
Celery/RQ plain arguments); the adapters in `bench/peers/` are one-line wrappers around them.

* `noop` - returns at once: measures the queue's own cost per task.
* `heavy` - imports pydantic and numpy inside the task: a cold process pays the import on its
  first task, a warm one imported them during warm-up (see `warm_heavy`).
* `chaos` - the crash test's task: records every execution (`HINCRBY`), marks itself running
  in this pid while it sleeps 0-50 ms, so the kill loop can pick a busy worker and the test can
  count lost and duplicated tasks, and counts an overlap when it finds its task marked
  running in another live process (two executions of one task at the same time).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import psutil
import redis
from redis.asyncio import Redis as AsyncRedis

# Where `chaos` records executions: set by the benchmark for the worker processes it starts.
CHAOS_URL_ENV = "BENCH_CHAOS_REDIS_URL"
CHAOS_PREFIX_ENV = "BENCH_CHAOS_PREFIX"
CHAOS_MAX_SLEEP = 0.05

_sync_client: redis.Redis | None = None
_async_clients: dict[int, AsyncRedis] = {}


def noop_value() -> dict[str, int]:
    return {"ok": 1}


def heavy_value() -> dict[str, Any]:
    """Import the heavy libraries (a no-op once imported) and use both."""
    import numpy
    import pydantic

    class Point(pydantic.BaseModel):
        x: float

    return {"sum": float(numpy.arange(4).sum()), "x": Point(x=1.0).x}


def warm_heavy() -> None:
    """Warm-up hook: import what `heavy` needs before the first task arrives."""
    heavy_value()


def _keys() -> tuple[str, str]:
    prefix = os.environ.get(CHAOS_PREFIX_ENV, "bench:chaos")
    return f"{prefix}:exec", f"{prefix}:running"


def overlaps_key() -> str:
    """Executions that began while another execution of the same task was still running."""
    return f"{os.environ.get(CHAOS_PREFIX_ENV, 'bench:chaos')}:overlaps"


def _runs_elsewhere(previous: bytes | str | None) -> bool:
    """The task is marked running in another process that is still alive (a killed
    execution leaves its mark behind, but its process is gone)."""
    if previous is None or int(previous) == os.getpid():
        return False
    try:
        return bool(psutil.Process(int(previous)).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _sync() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(os.environ[CHAOS_URL_ENV])
    return _sync_client


def chaos_sync(task: str) -> dict[str, str]:
    executions, running = _keys()
    client = _sync()
    with client.pipeline(transaction=True) as pipe:
        pipe.hincrby(executions, task, 1)
        pipe.hget(running, task)
        pipe.hset(running, task, os.getpid())
        _, previous, _ = pipe.execute()
    if _runs_elsewhere(previous):
        client.hincrby(overlaps_key(), task, 1)
    time.sleep(random.random() * CHAOS_MAX_SLEEP)
    client.hdel(running, task)
    return {"task": task}


async def chaos_async(task: str) -> dict[str, str]:
    executions, running = _keys()
    # One client per event loop (per worker process: keyed by pid, since forks inherit dicts).
    client = _async_clients.get(os.getpid())
    if client is None:
        client = _async_clients[os.getpid()] = AsyncRedis.from_url(os.environ[CHAOS_URL_ENV])
    async with client.pipeline(transaction=True) as pipe:
        pipe.hincrby(executions, task, 1)
        pipe.hget(running, task)
        pipe.hset(running, task, os.getpid())
        _, previous, _ = await pipe.execute()
    if _runs_elsewhere(previous):
        await client.hincrby(overlaps_key(), task, 1)
    await asyncio.sleep(random.random() * CHAOS_MAX_SLEEP)
    await client.hdel(running, task)
    return {"task": task}
