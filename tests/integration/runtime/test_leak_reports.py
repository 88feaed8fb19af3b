"""A worker recycled for its memory says what grew: a JSON log line and an entry of the pool's
capped memory-report stream (which the operator turns into an Event), from a real supervisor
running the leaking test handler."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_runtime.contract import memory_reports_key
from agent_runtime.sdk.client import TaskClient
from tests.integration.runtime import handlers
from tests.plugins.runtime import RunningSupervisor, RuntimePool, StartSupervisor
from tests.waiting import eventually_async

pytestmark = [pytest.mark.services, pytest.mark.slow]

MB = 1 << 20
# Where the `leak` handler allocates what it keeps: the line tracemalloc must name.
LEAK_LINE = next(number for number, line in
                 enumerate(inspect.getsource(handlers).splitlines(), start=1)
                 if "block = bytearray(" in line)


def logged_reports(supervisor: RunningSupervisor) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in supervisor.log().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == "memory_report"]


async def stored_reports(redis: Redis, pool: RuntimePool) -> list[dict[str, Any]]:
    entries: list[Any] = await redis.xrange(  # type: ignore[assignment]
        memory_reports_key(pool.config.key_prefix))
    return [json.loads(fields["report"]) | {"message": fields["message"]}
            for _id, fields in entries]


@pytest.mark.parametrize("tracemalloc_frames", [0, 1])
async def test_a_worker_recycled_for_its_memory_reports_what_grew(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis, tracemalloc_frames: int) -> None:
    runtime_pool.update(workers=1, concurrency=1, max_worker_memory_bytes=200 * MB,
                        worker_memory_recycle_ratio=0.6, tracemalloc_frames=tracemalloc_frames)
    supervisor = start_supervisor(runtime_pool)
    # Leaking tasks between tasks that keep nothing.
    ids = []
    for n in range(14):
        ids.append(await task_client.submit({"mb": 10, "sleep": 0.6}, handler="leak"))
        ids.append(await task_client.submit({"n": n}))
    results = await task_client.wait_many(ids, max_wait=120)
    assert all(result.status == "succeeded" for result in results.values())

    async def stored() -> list[dict[str, Any]]:
        return await stored_reports(redis_client, runtime_pool)

    report = (await eventually_async(stored, within=20))[0]
    assert report["action"] == "recycled"
    assert report["tasks"] >= 5
    assert report["growth_bytes"] > 5 * 10 * MB
    assert 5 * MB < report["growth_per_task_bytes"] * 2 < 15 * MB  # half the tasks leak 10 MiB
    assert report["handlers"][0]["handler"] == "leak"
    assert "growth came with handler leak" in report["message"]
    if tracemalloc_frames:
        top = report["top_allocations"][0]
        assert top["where"].endswith(f"tests/integration/runtime/handlers.py:{LEAK_LINE}"), top
        assert top["size_bytes"] >= 5 * 10 * MB
        assert f"handlers.py:{LEAK_LINE}" in report["message"]
    else:
        assert report["top_allocations"] == []
    [line] = [line for line in logged_reports(supervisor)
              if json.loads(line["report"])["worker"] == report["worker"]]
    assert line["level"] == "warning"
    assert line["top_handler"] == "leak"
    assert line["message"] == f"memory report: {report['message']}"
