"""Handlers the runtime integration tests run inside real worker processes.

Each leaves evidence in Redis under `test:{pool}:...` (every execution counted, the pid that
ran it), so a test can tell lost tasks from duplicated ones after killing workers.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import time
from typing import Any

import psutil

from agent_runtime import PermanentTaskError, TaskContext

MB = 1 << 20
_LEAKED: list[bytearray] = []  # what `leak` never frees, on purpose
_WARMED_IN: list[int] = []  # pids in which the init hook ran


def init() -> None:
    """The pool's init hook: runs once per worker during warm-up."""
    _WARMED_IN.append(os.getpid())


def executions_key(pool: str) -> str:
    return f"test:{pool}:executions"


def pids_key(pool: str) -> str:
    return f"test:{pool}:pids"


def cleanups_key(pool: str) -> str:
    return f"test:{pool}:cleanups"


async def _mark(ctx: TaskContext) -> None:
    async with ctx.redis.pipeline(transaction=False) as pipe:
        pipe.hincrby(executions_key(ctx.pool), ctx.task_id, 1)
        pipe.hset(pids_key(ctx.pool), ctx.task_id, os.getpid())
        await pipe.execute()


async def record(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Count the execution, optionally sleep (`sleep` seconds), return the payload's `n` and
    facts about the worker's warm-up."""
    await _mark(ctx)

    async def cleanup() -> None:
        await ctx.redis.incr(cleanups_key(ctx.pool))

    ctx.add_cleanup(cleanup)
    await asyncio.sleep(float(payload.get("sleep", 0)))
    return {"n": payload.get("n"), "attempt": ctx.attempt, "pid": os.getpid(),
            "init_hook_ran": [os.getpid()] == _WARMED_IN, "frozen": gc.get_freeze_count()}


async def sleepy(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Like `record`, but marks completion too, for drain tests."""
    await _mark(ctx)
    await asyncio.sleep(float(payload["seconds"]))
    return {"slept": payload["seconds"]}


async def hang(payload: dict[str, Any], ctx: TaskContext) -> None:
    """Blocks the worker's event loop: cancellation cannot reach it, heartbeats stop."""
    await _mark(ctx)
    time.sleep(3600)  # noqa: ASYNC251 - blocking the loop is the point


def sync_sleep(payload: dict[str, Any]) -> str:
    time.sleep(float(payload["seconds"]))
    return "woke"


def orphan(payload: dict[str, Any]) -> str:
    """Leave behind a process whose parent has exited (`sleep` started in the background by a
    shell that returns at once): it is re-parented to PID 1."""
    subprocess.run(["sh", "-c", f"sleep {float(payload['seconds'])} &"], check=True)
    return "orphaned"


async def leak(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Keeps `mb` MiB per task forever; reports this process's USS when done."""
    await _mark(ctx)
    block = bytearray(int(payload["mb"]) * MB)
    for offset in range(0, len(block), 4096):  # touch every page so it is really resident
        block[offset] = 1
    _LEAKED.append(block)
    await asyncio.sleep(float(payload.get("sleep", 0.2)))
    return {"uss": psutil.Process().memory_full_info().uss, "pid": os.getpid()}


async def fail(payload: dict[str, Any], ctx: TaskContext) -> None:
    await _mark(ctx)
    raise RuntimeError(f"boom {payload.get('n')}")


async def permanent(payload: dict[str, Any], ctx: TaskContext) -> None:
    await _mark(ctx)
    raise PermanentTaskError("bad input, do not retry")


async def segfault(payload: dict[str, Any], ctx: TaskContext) -> None:
    """Kills its worker the moment it starts, before the worker can report anything."""
    await _mark(ctx)
    os.kill(os.getpid(), signal.SIGSEGV)
