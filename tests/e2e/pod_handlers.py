"""The handler the real-pod tests run in pods (image: tests/e2e/images/test-handlers.Dockerfile).

AgentPools run one handler, so this one dispatches on the payload's `do` to the runtime
integration tests' handlers, which leave evidence in Redis (every execution counted, the pid
that ran it): `record` (optionally sleeping), `leak` (keeps `mb` MiB per task), `sleepy`, and
`budgeted` (one call to `url` under the pool's budget key `llm`).
"""

from __future__ import annotations

from typing import Any

from agent_runtime import PermanentTaskError, TaskContext
from tests.integration.runtime import handlers

_ACTIONS = {"record": handlers.record, "leak": handlers.leak, "sleepy": handlers.sleepy,
            "budgeted": handlers.budgeted}


async def dispatch(payload: dict[str, Any], ctx: TaskContext) -> Any:
    action = _ACTIONS.get(str(payload.get("do", "record")))
    if action is None:
        raise PermanentTaskError(f"unknown action {payload.get('do')!r}")
    return await action(payload, ctx)
