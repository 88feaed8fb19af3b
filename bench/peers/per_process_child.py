"""The child of the per-process baselines: run one task and store its result.

Kept apart from `per_process` (which imports the benchmark harness) so that a spawned child
imports only what a real one-process-per-task worker would: redis and the task's own code.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import redis

RESULT = "bench:pp:result:"


def run_task(url: str, item: dict[str, Any]) -> None:
    """Import what the task needs, run it, store the result."""
    from bench import handlers
    kind, task_id = item["kind"], item["id"]
    if kind == "chaos":
        value: Any = handlers.chaos_sync(item["arg"])
    elif kind == "heavy":
        value = handlers.heavy_value()
    else:
        value = handlers.noop_value()
    with redis.Redis.from_url(url) as client:
        client.set(RESULT + task_id, json.dumps(value), ex=3600)


if __name__ == "__main__":
    run_task(sys.argv[1], json.loads(sys.argv[2]))
