"""Pod-level protections: the memory circuit breaker, and a handler that cannot even load."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import psutil
import pytest
from redis.asyncio import Redis

from agent_runtime.sdk.client import TaskClient
from tests.integration.runtime.handlers import MB, executions_key
from tests.plugins.runtime import RuntimePool, StartSupervisor
from tests.waiting import eventually

pytestmark = [pytest.mark.services, pytest.mark.slow]


async def test_memory_breaker_pauses_intake_then_recycles_and_resumes(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    # A 100 MiB "pod": stop taking tasks above 60 MiB, take them again below 30 MiB.
    runtime_pool.update(workers=1, concurrency=1, container_memory_limit_bytes=100 * MB,
                        memory_breaker_open_ratio=0.6, memory_breaker_close_ratio=0.3,
                        memory_kill_ratio=0.99)
    supervisor = start_supervisor(runtime_pool)
    ids = await task_client.submit_many([{"mb": 15, "sleep": 0.3}] * 5, handler="leak")
    seen: list[str] = []
    finished = asyncio.Event()

    async def watch_readiness() -> None:
        while not finished.is_set():
            status, body = await asyncio.to_thread(supervisor.get, "/readyz")
            seen.append(f"{status} {body.strip()}")
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch_readiness())
    try:
        results = await task_client.wait_many(ids, max_wait=90)
    finally:
        finished.set()
        await watcher

    assert all(r.status == "succeeded" for r in results.values())
    assert "503 memory breaker open" in seen  # the pod told Kubernetes it was full
    assert supervisor.metric_reaching("agentpool_worker_restarts_total", 1, reason="memory") >= 1
    assert "memory breaker open" in supervisor.log()
    # On a loaded machine the last task can finish before the breaker trips; the recycle
    # and the close then follow the results rather than precede them.
    eventually(lambda: "memory breaker closed" in supervisor.log(), timeout=30)
    executions = await redis_client.hgetall(executions_key(runtime_pool.config.pool))
    assert set(executions.values()) == {"1"}  # paused and recycled, never killed mid-task


def test_a_handler_that_cannot_load_keeps_the_pod_unready_with_backoff(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor) -> None:
    runtime_pool.update(handler="tests.integration.runtime.no_such_module:run", handlers={})
    supervisor = start_supervisor(runtime_pool, ready=False)

    eventually(lambda: "cannot import handler module" in supervisor.log(), timeout=30)
    started = time.monotonic()
    time.sleep(3)
    status, body = supervisor.get("/readyz")
    assert (status, body.strip()) == (503, "no warm worker")
    assert supervisor.get("/healthz")[0] == 200  # alive: restarting would not help
    failures = supervisor.metric("agentpool_worker_restarts_total", reason="boot_error")
    # Exponential backoff, not a tight crash loop (two slots, 0.5 s, 1 s, 2 s, ...).
    assert 2 <= failures <= 2 * 4 + (time.monotonic() - started)
    assert supervisor.process.poll() is None


def _can_be_pid_1() -> bool:
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, check=False) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


@pytest.mark.skipif(not _can_be_pid_1(), reason="needs unshare and the right to create a PID "
                    "namespace (root), to run the supervisor as PID 1 like a container")
async def test_as_pid_1_the_supervisor_reaps_orphaned_processes(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor,
        task_client: TaskClient) -> None:
    # A container without an init: the supervisor is PID 1 of its own PID namespace.
    supervisor = start_supervisor(
        runtime_pool, wrapper=["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
    [init] = psutil.Process(supervisor.process.pid).children()
    task_id = await task_client.submit({"seconds": 1.5}, handler="orphan")
    assert (await task_client.wait(task_id, max_wait=30)).result == "orphaned"

    def orphans() -> list[psutil.Process]:
        return [p for p in init.children() if "sleep" in " ".join(p.cmdline() or [p.name()])]

    adopted = eventually(orphans, timeout=10, interval=0.1)  # re-parented to PID 1
    assert adopted
    # Once it exits it must not stay a zombie: the supervisor collects it.
    eventually(lambda: not any(p.pid in {c.pid for c in init.children()} for p in adopted),
               timeout=15, interval=0.2)
    # `unshare` does not pass SIGTERM on: stop the supervisor itself, as the kubelet would.
    init.terminate()
    supervisor.process.wait(timeout=30)
