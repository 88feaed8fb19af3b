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
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import redis

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


def attempts_key(pool: str, task_id: str) -> str:
    """The `ctx.attempt` of every execution of a task, in order."""
    return f"test:{pool}:attempts:{task_id}"


def overlaps_key(pool: str) -> str:
    """Per task: executions that started while another execution of it was still running."""
    return f"test:{pool}:overlaps"




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


async def flaky(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Fails its first execution, succeeds after (needs the retry to be promoted)."""
    await _mark(ctx)
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"attempt": ctx.attempt}


async def block_at_once(payload: dict[str, Any], ctx: TaskContext) -> str:
    """Blocks the worker's event loop from its very first line, before any await (a CPU loop or
    a blocking call right at the start), for `seconds`; counts the execution synchronously."""
    _sync_redis(ctx).hincrby(executions_key(ctx.pool), ctx.task_id, 1)
    time.sleep(float(payload["seconds"]))  # noqa: ASYNC251 - blocking the loop is the point
    return "woke"


def _sync_redis(ctx: TaskContext) -> redis.Redis:
    kwargs = ctx.redis.connection_pool.connection_kwargs
    return redis.Redis(host=kwargs.get("host", "localhost"), port=kwargs.get("port", 6379),
                       db=kwargs.get("db", 0), decode_responses=True)


async def crash_twice_then_fail(payload: dict[str, Any], ctx: TaskContext) -> None:
    """By its own execution count (not `ctx.attempt`): executions 1 and 2 kill the worker,
    the 3rd raises (a retry: a new stream entry), and so on in that cycle. Records every
    `ctx.attempt` it was given."""
    async with ctx.redis.pipeline(transaction=False) as pipe:
        pipe.hincrby(executions_key(ctx.pool), ctx.task_id, 1)
        pipe.rpush(attempts_key(ctx.pool, ctx.task_id), ctx.attempt)
        executions, _ = await pipe.execute()
    if int(executions) % 3 != 0:
        os.kill(os.getpid(), signal.SIGSEGV)
    raise RuntimeError(f"fails on execution {executions}")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def runs_dir(pool: str, task_id: str) -> Path:
    """Where the executions of a task that are running now register (one file each). A
    local directory, not Redis: a registration must be removed even when Redis is
    restarting at the end of a run, or a later run would take it for a live one."""
    return Path(tempfile.gettempdir()) / "agentpool-test-runs" / pool / task_id


async def exclusive(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Runs `seconds` and notices if another execution of the same task is running at the same
    time anywhere on this host: every execution registers a file named by its pid while it
    runs, and one that finds another registration whose process is still alive counts an
    overlap. (A killed execution leaves its file behind, but its process is dead.)"""
    runs = runs_dir(ctx.pool, ctx.task_id)
    runs.mkdir(parents=True, exist_ok=True)
    mine = runs / f"{os.getpid()}-{uuid.uuid4().hex}"
    mine.touch()
    try:
        others = [path for path in runs.iterdir()
                  if path != mine and _alive(int(path.name.partition("-")[0]))]
        async with ctx.redis.pipeline(transaction=False) as pipe:
            if others:
                pipe.hincrby(overlaps_key(ctx.pool), ctx.task_id, 1)
            pipe.hincrby(executions_key(ctx.pool), ctx.task_id, 1)
            pipe.rpush(attempts_key(ctx.pool, ctx.task_id), ctx.attempt)
            await pipe.execute()
        await asyncio.sleep(float(payload.get("seconds", 0)))
    finally:
        mine.unlink(missing_ok=True)
    return {"n": payload.get("n"), "attempt": ctx.attempt, "pid": os.getpid()}


def sync_exclusive(payload: dict[str, Any], ctx: TaskContext) -> str:
    """`exclusive` as a sync handler (it runs in a thread, which a timeout cannot stop)."""
    runs = runs_dir(ctx.pool, ctx.task_id)
    runs.mkdir(parents=True, exist_ok=True)
    mine = runs / f"{os.getpid()}-{uuid.uuid4().hex}"
    mine.touch()
    try:
        others = [path for path in runs.iterdir()
                  if path != mine and _alive(int(path.name.partition("-")[0]))]
        client = _sync_redis(ctx)
        if others:
            client.hincrby(overlaps_key(ctx.pool), ctx.task_id, 1)
        client.hincrby(executions_key(ctx.pool), ctx.task_id, 1)
        time.sleep(float(payload["seconds"]))
    finally:
        mine.unlink(missing_ok=True)
    return "done"


async def budgeted(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """One call to `payload["url"]` under the pool's budget key `llm`."""
    answer = await ctx.budget("llm").call(
        "POST", payload["url"], json={"tokens": payload.get("tokens", 0)},
        tokens=int(payload.get("tokens", 0)))
    return {"status": answer.status, "attempts": answer.attempts}


async def traced(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """One `ctx.http` call to `payload["url"]` and, with a database, one query through
    `ctx.db`; reports what tracing looked like from inside the worker."""
    from opentelemetry import trace

    body = await ctx.http.json("downstream", "GET", payload["url"])
    if ctx.db is not None:
        await ctx.db.fetchval("SELECT 1")
    return {"body": body, "span_recording": trace.get_current_span().is_recording(),
            "sdk_loaded": "opentelemetry.sdk.trace" in sys.modules,
            "threads": sorted(thread.name for thread in threading.enumerate())}


async def db_probe(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """One round trip through `ctx.db` (the worker's pool, through PgBouncer); `kill_dsn`
    first terminates the pool's server connections from a direct connection, so the call
    meets a connection PgBouncer is about to drop."""
    import asyncpg

    if payload.get("kill_dsn"):
        killer = await asyncpg.connect(payload["kill_dsn"])
        try:
            await killer.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1 AND pid <> pg_backend_pid()",
                f"agentpool-{ctx.pool}")
        finally:
            await killer.close()
    value = await ctx.db.fetchval("SELECT $1::int + 1", int(payload["n"]))
    return {"value": value, "attempt": ctx.attempt, "reconnects": ctx.db.reconnects}


def loader_calls_key(pool: str, key: str) -> str:
    return f"test:{pool}:loader-calls:{key}"


async def cached_load(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """`ctx.cache("answers").get_or_load(payload["key"], loader)` with a slow loader that
    counts its calls in Redis."""
    key = payload["key"]

    async def loader() -> dict[str, Any]:
        await ctx.redis.incr(loader_calls_key(ctx.pool, key))
        await asyncio.sleep(float(payload.get("load_seconds", 0.5)))
        return {"answer": key.upper()}

    return await ctx.cache("answers").get_or_load(key, loader)


async def introspect(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """What the worker was configured with, as its handlers see it: the HTTP session's
    connection limits and timeout, whether the init hook ran, which process ran the task."""
    session = ctx.http.session
    connector = session.connector
    assert connector is not None
    return {"limit": connector.limit, "limit_per_host": connector.limit_per_host,
            "timeout": session.timeout.total, "pid": os.getpid(),
            "init_hook_ran": [os.getpid()] == _WARMED_IN}


async def burn(payload: dict[str, Any], ctx: TaskContext) -> float:
    """Spend `seconds` of CPU in this worker (blocking its loop); returns the CPU spent."""
    start = time.process_time()
    while time.process_time() - start < float(payload["seconds"]):
        pass
    return time.process_time() - start


async def unstorable(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """Returns what JSON cannot hold (a set), or, with `big`, a large storable result."""
    if payload.get("big"):
        return {"text": "é" * int(payload["big"]), "n": 1}
    return {"tags": {"a", "b"}}
