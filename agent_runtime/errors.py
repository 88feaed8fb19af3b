"""Exceptions of the runtime and the task SDK, as one tree.

    AgentPoolError
    ├── PayloadTooLargeError      submit: the encoded payload exceeds `max_payload_bytes`
    ├── InvalidPayloadError       submit: the payload is not JSON-serialisable
    ├── TaskWaitTimeout           client: the result did not arrive in time
    ├── TaskFailedError           client: the task ended failed/dead-lettered (carries the result)
    ├── TaskCancelledError        client: the task was cancelled
    ├── MalformedTaskError        worker: a stream entry is not a valid task envelope
    ├── HandlerError              worker: a handler reference cannot be loaded
    └── PermanentTaskError        raised by handlers: fail now, do not retry

Handlers raise `PermanentTaskError` for failures a retry cannot fix (bad input); any other
exception is treated as transient and retried with backoff until `max_deliveries`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent_runtime.queue.envelope import TaskResult


class AgentPoolError(Exception):
    """Base of every error the runtime raises on purpose."""


class PayloadTooLargeError(AgentPoolError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"task payload is {size} bytes encoded, above the pool's limit of {limit} bytes; "
            "store large inputs elsewhere (object storage, the database) and pass a reference"
        )
        self.size = size
        self.limit = limit


class InvalidPayloadError(AgentPoolError):
    """The payload cannot be encoded as JSON."""


class TaskWaitTimeout(AgentPoolError):
    """Waiting for a result took longer than the caller allowed; the task may still run."""


class TaskFailedError(AgentPoolError):
    def __init__(self, result: TaskResult) -> None:
        super().__init__(f"task {result.task_id} {result.status}: {result.error}")
        self.result = result


class TaskCancelledError(AgentPoolError):
    def __init__(self, result: TaskResult) -> None:
        super().__init__(f"task {result.task_id} was cancelled")
        self.result = result


class MalformedTaskError(AgentPoolError):
    """A queue entry that is not a valid envelope; it is dead-lettered with this message."""


class HandlerError(AgentPoolError):
    """A `module:function` reference that cannot be imported or is not callable."""


class PermanentTaskError(AgentPoolError):
    """Raised by a handler to fail the task without retrying it."""
