"""A worker's life: warm-up (init hook, gc.freeze), per-task cleanup, recycling after its task
budget (with jitter), and the CLI people use against a running pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from agent_runtime.sdk.client import TaskClient
from tests.integration.runtime.handlers import cleanups_key, executions_key
from tests.plugins.runtime import REPO_ROOT, RuntimePool, StartSupervisor

pytestmark = [pytest.mark.services, pytest.mark.slow]


async def test_workers_are_warmed_and_recycled_after_their_task_budget(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    runtime_pool.update(workers=1, concurrency=2, max_tasks_per_worker=5, max_tasks_jitter=3)
    supervisor = start_supervisor(runtime_pool)
    ids = await task_client.submit_many([{"n": n} for n in range(40)])

    results = await task_client.wait_many(ids, max_wait=60)

    values = [r.result for r in results.values()]
    assert all(r.status == "succeeded" for r in results.values())
    assert all(v["init_hook_ran"] for v in values)  # the init hook ran in every worker
    assert all(v["frozen"] > 1000 for v in values)  # gc.freeze() kept imports out of the GC
    per_worker: dict[int, int] = {}
    for value in values:
        per_worker[value["pid"]] = per_worker.get(value["pid"], 0) + 1
    # 5 to 8 tasks each (a draining worker finishes what it holds: up to `concurrency` more).
    assert len(per_worker) >= 40 // (8 + 2)
    assert max(per_worker.values()) <= 8 + 2
    assert supervisor.metric_reaching("agentpool_worker_restarts_total", 4, reason="max_tasks") >= 4
    executions = await redis_client.hgetall(executions_key(runtime_pool.config.pool))
    assert set(executions.values()) == {"1"}  # recycled gracefully, nothing ran twice
    assert await redis_client.get(cleanups_key(runtime_pool.config.pool)) == "40"


def _cli(pool: RuntimePool, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_")}
    env.update({"AGENTPOOL_REDIS_URL": redis_url, "PYTHONPATH": str(REPO_ROOT)})
    return subprocess.run(
        [sys.executable, "-m", "agent_runtime.cli", "--config", str(pool.path), *args],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_cli_submits_waits_with_progress_and_reports_status(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, redis_url: str) -> None:
    start_supervisor(runtime_pool)

    many = _cli(runtime_pool, redis_url, "submit", "--payload", '{"n": 7}', "--count", "25",
                "--wait", "--timeout", "60")
    assert many.returncode == 0, many.stderr
    results = [json.loads(line) for line in many.stdout.splitlines()]
    assert len(results) == 25
    assert {r["status"] for r in results} == {"succeeded"}
    assert "25/25 done, 0 failed" in many.stderr  # the progress line

    failing = _cli(runtime_pool, redis_url, "submit", "--handler", "permanent", "--wait")
    assert failing.returncode == 1
    assert json.loads(failing.stdout)["error"] == "bad input, do not retry"

    queued = _cli(runtime_pool, redis_url, "submit", "--payload", "[1, 2]")
    task_id = queued.stdout.strip()
    status = _cli(runtime_pool, redis_url, "status", task_id, "no-such-task")
    lines = [json.loads(line) for line in status.stdout.splitlines()]
    assert lines[1] == {"task_id": "no-such-task", "status": "pending"}
    assert lines[0]["task_id"] == task_id


def test_cli_usage_errors(runtime_pool: RuntimePool, redis_url: str, tmp_path: Path) -> None:
    no_secret = subprocess.run(
        [sys.executable, "-m", "agent_runtime.cli", "--config", str(runtime_pool.path),
         "status", "x"], env={"PATH": os.environ["PATH"]}, capture_output=True, text=True,
        timeout=60)
    assert no_secret.returncode == 2
    assert "AGENTPOOL_REDIS_URL is not set" in no_secret.stderr
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"x": "y" * runtime_pool.config.max_payload_bytes}))
    too_big = _cli(runtime_pool, redis_url, "submit", "--payload-file", str(big))
    assert too_big.returncode == 2
    assert "above the pool's limit" in too_big.stderr
