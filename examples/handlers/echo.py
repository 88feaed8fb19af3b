"""Example handlers for an AgentPool: reference them as `examples.handlers.echo:handle`.

`handle` shows the async form with a context (cache, HTTP, Redis, database all come from the
context); `shout` shows the sync form, which runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agent_runtime import PermanentTaskError, TaskContext


async def handle(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Echo the payload back, after an optional simulated I/O wait (`sleep` seconds)."""
    if not isinstance(payload, dict):
        raise PermanentTaskError("payload must be a JSON object")
    await asyncio.sleep(float(payload.get("sleep", 0)))
    return {"echo": payload, "task_id": ctx.task_id, "attempt": ctx.attempt, "worker": ctx.worker}


def shout(payload: dict[str, Any]) -> str:
    """A sync handler: upper-cases `text`."""
    return str(payload.get("text", "")).upper()
