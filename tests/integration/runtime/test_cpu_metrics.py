"""CPU time as metrics, from a real supervisor: per worker slot, per pod (the supervisor and
its workers), and the supervisor's own `process_*` series."""

from __future__ import annotations

import pytest

from agent_runtime.sdk.client import TaskClient
from tests.plugins.runtime import RuntimePool, StartSupervisor

pytestmark = [pytest.mark.services, pytest.mark.slow]


async def test_cpu_a_handler_spends_is_counted_for_its_worker_slot_and_its_pod(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor,
        task_client: TaskClient) -> None:
    runtime_pool.update(workers=2, concurrency=1)
    supervisor = start_supervisor(runtime_pool)
    idle = supervisor.metric("agentpool_pod_cpu_seconds_total")
    result = await task_client.wait(await task_client.submit({"seconds": 1.5}, handler="burn"),
                                    max_wait=30)
    assert result.status == "succeeded"
    spent = float(result.result)

    def slots() -> dict[str, float]:
        return {slot: supervisor.metric("agentpool_worker_cpu_seconds_total", slot=slot)
                for slot in ("0", "1")}

    busy = supervisor.metric_reaching("agentpool_worker_cpu_seconds_total", spent, within=5)
    assert spent <= busy < spent + 1.0  # plus the warm-up and idling of both workers
    by_slot = slots()
    assert max(by_slot.values()) >= spent  # one slot did the work
    # Sampled on the supervisor's ticks, like the slots' series: wait for the sample that
    # includes the work, not the one that happened to be current.
    pod = supervisor.metric_reaching("agentpool_pod_cpu_seconds_total", idle + spent, within=5)
    assert pod >= sum(by_slot.values())
    assert pod - idle >= spent
    assert supervisor.metric("process_cpu_seconds_total") > 0
    assert supervisor.metric("process_resident_memory_bytes") > 0
