"""From a leaking worker to an Event on its AgentPool: a real supervisor recycles a worker for
its memory and adds the report to the pool's Redis stream; the operator's pass (real reader,
real Redis) posts each new report once as a Warning Event, and nothing older than its start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from agent_runtime.contract import memory_reports_key
from agent_runtime.queue.backlog import BacklogReader
from agent_runtime.sdk.client import TaskClient
from agentpool_operator.api import API_VERSION, KIND
from agentpool_operator.k8s import Kube
from agentpool_operator.memoryreports import REASON, MemoryReportPoster
from agentpool_operator.queues import QueueRegistry
from tests.plugins.runtime import RuntimePool, StartSupervisor
from tests.unit.operator.metrics_api_fakes import queue_entry
from tests.waiting import eventually_async

pytestmark = [pytest.mark.services, pytest.mark.slow]

MB = 1 << 20


@dataclass
class EventRecorder:
    """The two calls the pass makes on the API server."""

    events: list[tuple[str, str, str, str]] = field(default_factory=list)

    async def get(self, api_version: str, kind: str, namespace: str, name: str
                  ) -> dict[str, Any]:
        assert (api_version, kind) == (API_VERSION, KIND)
        return {"metadata": {"namespace": namespace, "name": name, "uid": "u1"}}

    async def post_event(self, pool: dict[str, Any], kind: str, reason: str, message: str
                         ) -> None:
        self.events.append((pool["metadata"]["name"], kind, reason, message))


@pytest.fixture
async def reader() -> AsyncIterator[BacklogReader]:
    backlog_reader = BacklogReader()
    yield backlog_reader
    await backlog_reader.close()


async def test_a_leaking_workers_report_becomes_one_event_on_its_pool(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, redis_client: Redis,
        redis_url: str, reader: BacklogReader) -> None:
    config = runtime_pool.update(namespace="agents", workers=1, concurrency=1,
                                 max_worker_memory_bytes=150 * MB,
                                 worker_memory_recycle_ratio=0.6)
    key = memory_reports_key(config.key_prefix)
    await redis_client.xadd(key, {"report": "{}", "message": "from before the operator"})
    await asyncio.sleep(0.01)  # the operator starts a moment after that report
    kube = EventRecorder()
    registry = QueueRegistry()
    registry.seed([queue_entry("agents", config.pool, redis_url)])
    poster = MemoryReportPoster(cast(Kube, kube), registry, reader)
    start_supervisor(runtime_pool)

    # The pool as the operator knows it, namespace included (its keys say so).
    async with await TaskClient.connect(redis_url, config) as client:
        ids = await client.submit_many([{"mb": 10, "sleep": 0.2}] * 12, handler="leak")
        await client.wait_many(ids, max_wait=60)

    async def posted() -> list[tuple[str, str, str, str]]:
        await poster.run_once()
        return kube.events

    events = await eventually_async(posted, within=20)
    stored: list[Any] = await redis_client.xrange(key)  # type: ignore[assignment]
    assert len(events) == len(stored) - 1  # all but the report older than the operator
    pool, kind, reason, message = events[0]
    assert (pool, kind, reason) == (config.pool, "Warning", REASON)
    assert message.startswith("worker pod0-")
    assert "recycled for memory" in message
    assert "growth came with handler leak" in message
    await poster.run_once()
    assert len(kube.events) == len(events)  # each report once
