"""The AgentPool runtime: warm worker processes that run agent tasks from a Redis queue.

The SDK surface for handler authors and clients is re-exported here; everything else is
internal. Handlers are plain functions referenced as `module:function` in the pool's config:

    async def handle(payload: dict, ctx: TaskContext) -> dict: ...

Clients submit and await tasks with `TaskClient`.
"""

from agent_runtime.client import TaskClient
from agent_runtime.config import RuntimeConfig, RuntimeSettings, load_settings
from agent_runtime.context import TaskContext
from agent_runtime.errors import (
    AgentPoolError,
    InvalidPayloadError,
    PayloadTooLargeError,
    PermanentTaskError,
    TaskCancelledError,
    TaskFailedError,
    TaskWaitTimeout,
)
from agent_runtime.messages import TaskResult

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
