"""How the throughput benchmark submits its tasks: `batch` or `single`.

* batch: one call of each system's `submit` with every task (the SDK's batched submit where it
  has one: AgentPool `submit_many`, RQ `enqueue_many` in a pipeline, pipelined XADDs for the
  floor, RPUSH of 1000 for spawn/fork; Celery and arq have none and loop over their single call).
* single: every task through the SDK's single-submit call, from many concurrent callers, like
  code that submits work one task at a time: 100 asyncio tasks for async SDKs; 16 threads for
  blocking SDKs (their per-call cost is CPU under the GIL, so more threads add contention, not
  throughput; 16 is the systems' total concurrency).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from bench.peers.base import System

MODES = ("batch", "single")
ASYNC_CALLERS = 100
THREAD_CALLERS = 16


async def submit(system: System, kind: str, args: Sequence[str], mode: str) -> list[str]:
    """Submit one task of `kind` per arg; the system's task ids, in order."""
    if mode == "batch":
        return await system.submit(kind, args)
    if mode != "single":
        raise ValueError(f"unknown submit mode {mode!r}")
    if system.blocking:
        # In a thread of its own, so the blocking calls never stall the result watcher.
        return await asyncio.to_thread(_submit_on_threads, system, kind, args)
    return await _submit_concurrently(system, kind, args)


def _submit_on_threads(system: System, kind: str, args: Sequence[str]) -> list[str]:
    with ThreadPoolExecutor(THREAD_CALLERS, thread_name_prefix="submit") as pool:
        return list(pool.map(lambda arg: system.submit_one_blocking(kind, arg), args))


async def _submit_concurrently(system: System, kind: str, args: Sequence[str]) -> list[str]:
    ids = [""] * len(args)
    # One shared queue of work: each caller takes the next task when its last submit returned.
    work = iter(enumerate(args))

    async def caller() -> None:
        for index, arg in work:
            ids[index] = await system.submit_one(kind, arg)

    await asyncio.gather(*(caller() for _ in range(min(ASYNC_CALLERS, len(args)))))
    return ids
