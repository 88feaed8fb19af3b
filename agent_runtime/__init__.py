"""The AgentPool runtime: warm worker processes that run agent tasks from a Redis queue.

The SDK surface for handler authors and clients is re-exported here; everything else is
internal. Handlers are plain functions referenced as `module:function` in the pool's config:

    async def handle(payload: dict, ctx: TaskContext) -> dict: ...

Clients submit and await tasks with `TaskClient`. The names are imported lazily, so that
`import agent_runtime.config` (which the operator does to render the runtime's config) does
not pull in redis, asyncpg or aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_runtime.config import RuntimeConfig, RuntimeSettings, load_settings
    from agent_runtime.errors import (
        AgentPoolError,
        InvalidPayloadError,
        PayloadTooLargeError,
        PermanentTaskError,
        TaskCancelledError,
        TaskFailedError,
        TaskWaitTimeout,
    )
    from agent_runtime.queue.envelope import TaskResult
    from agent_runtime.sdk.client import TaskClient
    from agent_runtime.sdk.context import TaskContext

_EXPORTS = {
    "AgentPoolError": "agent_runtime.errors",
    "InvalidPayloadError": "agent_runtime.errors",
    "PayloadTooLargeError": "agent_runtime.errors",
    "PermanentTaskError": "agent_runtime.errors",
    "RuntimeConfig": "agent_runtime.config",
    "RuntimeSettings": "agent_runtime.config",
    "TaskCancelledError": "agent_runtime.errors",
    "TaskClient": "agent_runtime.sdk.client",
    "TaskContext": "agent_runtime.sdk.context",
    "TaskFailedError": "agent_runtime.errors",
    "TaskResult": "agent_runtime.queue.envelope",
    "TaskWaitTimeout": "agent_runtime.errors",
    "load_settings": "agent_runtime.config",
}

__all__ = [
    "AgentPoolError",
    "InvalidPayloadError",
    "PayloadTooLargeError",
    "PermanentTaskError",
    "RuntimeConfig",
    "RuntimeSettings",
    "TaskCancelledError",
    "TaskClient",
    "TaskContext",
    "TaskFailedError",
    "TaskResult",
    "TaskWaitTimeout",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
