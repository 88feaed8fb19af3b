"""The AgentPool spec's runtime knobs, round trip: the operator's builder renders the pool's
config file from a spec, a real supervisor runs it, and the workers behave as the spec says
(named handlers, init hook, recycle jitter, HTTP limits and timeout). The log level's
rendering is a unit test: the harness finds the supervisor's port in its INFO start line."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from agent_runtime.config import parse_config
from agent_runtime.sdk.client import TaskClient
from agentpool_operator.builders import build_config_map
from tests.integration.runtime.handlers import pids_key
from tests.plugins.runtime import TEST_HANDLERS, RuntimePool, StartSupervisor
from tests.unit.operator.builder_samples import MINIMAL_SECRETS, MINIMAL_SPEC, make_ctx
from tests.waiting import eventually

pytestmark = [pytest.mark.services, pytest.mark.slow]

SPEC = {
    "handler": f"{TEST_HANDLERS}:record",
    "handlers": {"introspect": f"{TEST_HANDLERS}:introspect", "fail": f"{TEST_HANDLERS}:fail"},
    "initHook": f"{TEST_HANDLERS}:init",
    "workers": {"perPod": 1, "concurrency": 1, "maxTasksPerWorker": 2, "maxTasksJitter": 2,
                "taskTimeoutSeconds": 10, "drainGracePeriodSeconds": 10},
    "queue": {"maxDeliveries": 1},
    "http": {"maxConnections": 7, "maxConnectionsPerHost": 3, "timeoutSeconds": 42},
}


async def test_a_spec_s_knobs_reach_the_workers_that_run_it(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, redis_url: str,
        redis_client: Any) -> None:
    ctx = make_ctx(runtime_pool.config.pool, MINIMAL_SPEC, MINIMAL_SECRETS, overrides=SPEC)
    rendered = parse_config(build_config_map(ctx)["data"]["runtime.yaml"])
    # Only what the test machine needs differs from the rendered file: where to listen.
    runtime_pool.update(**{**rendered.model_dump(mode="json", exclude_defaults=True),
                           "metrics_host": "127.0.0.1", "metrics_port": 0,
                           "lease_seconds": 10, "heartbeat_interval_seconds": 0.5})
    supervisor = start_supervisor(runtime_pool)
    client = await TaskClient.connect(redis_url, runtime_pool.config)
    try:
        seen = await client.wait(await client.submit({}, handler="introspect"), max_wait=30)
        assert seen.status == "succeeded"
        assert seen.result == {"limit": 7, "limit_per_host": 3, "timeout": 42,
                               "pid": seen.result["pid"], "init_hook_ran": True}

        # maxTasksPerWorker 2 with jitter 2: each worker process runs 2 to 4 tasks.
        ids = [await client.submit({"n": n}) for n in range(11)]
        results = await client.wait_many(ids, max_wait=60)
        assert all(result.status == "succeeded" for result in results.values())
        pids = await redis_client.hgetall(pids_key(runtime_pool.config.pool))
        per_process = Counter([str(seen.result["pid"]), *(pids[task_id] for task_id in ids)])
        last = str(results[ids[-1]].result["pid"])  # may still have tasks to go
        recycled = {pid: count for pid, count in per_process.items() if pid != last}
        assert len(recycled) >= 2, per_process
        assert all(2 <= count <= 4 for count in recycled.values()), per_process

        failed = await client.wait(await client.submit({"n": 1}, handler="fail"), max_wait=30)
        assert failed.status == "failed"
    finally:
        await client.close()

    def outcome_lines() -> Counter[str]:
        lines = [json.loads(line) for line in supervisor.log().splitlines() if line.strip()]
        return Counter(line["handler"] for line in lines if line.get("event") == "task_outcome")

    # The line follows the recorded result (the client may see the result first).
    expected = {"introspect": 1, "default": 11, "fail": 1}
    assert eventually(lambda: outcome_lines() == expected and expected, timeout=10)
