"""Handlers the live-monitoring test runs in real worker processes: each touches what the
dashboards show (an external API through the runtime's HTTP helper, the cache, the database
through PgBouncer), and two fail on purpose (retried, and dead-lettered)."""

from __future__ import annotations

import asyncio
from typing import Any

from agent_runtime import PermanentTaskError, TaskContext


async def work(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    async with ctx.http.request("search", "GET", payload["url"], operation="query") as response:
        await response.read()
    cache = ctx.cache("profiles")
    cached = await cache.get(payload["key"])
    if cached is None:
        await cache.set(payload["key"], {"seen": payload["key"]})
    if ctx.db is not None:
        async with ctx.db.acquire() as connection:
            await connection.fetchval("SELECT pg_sleep($1)", float(payload.get("db_sleep", 0.02)))
    await asyncio.sleep(float(payload.get("sleep", 0.05)))
    return {"cached": cached is not None}


async def fail(payload: dict[str, Any], ctx: TaskContext) -> None:
    raise RuntimeError(f"failing on purpose ({ctx.attempt})")


async def permanent(payload: dict[str, Any], ctx: TaskContext) -> None:
    raise PermanentTaskError("bad input, not retried")
