"""Pod deletion costs: idle pods are cheaper to remove than busy ones."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from agentpool_operator.metrics_api.backlog import Backlog
from agentpool_operator.metrics_api.podcost import (
    POD_DELETION_COST,
    DeletionCostKeeper,
    deletion_costs,
    pod_for_consumer,
)
from agentpool_operator.metrics_api.pools import PoolDirectory
from agentpool_operator.metrics_api.telemetry import Telemetry
from tests.unit.operator.metrics_api_fakes import FakeKube, FakeReader

PODS = ["research-7d9f-abcde", "research-7d9f-fghij", "research-7d9f-klmno"]


def test_consumers_map_to_the_pod_they_run_in() -> None:
    assert pod_for_consumer("research-7d9f-abcde-1a2b3c-0.1", PODS) == "research-7d9f-abcde"
    assert pod_for_consumer("research-7d9f-zzzzz-1a2b3c-0.1", PODS) is None
    assert pod_for_consumer("cli-client", PODS) is None
    # The longest matching pod name wins when one pod name prefixes another.
    assert pod_for_consumer("a-b-c-0a0b0c-1.2", ["a-b", "a-b-c"]) == "a-b-c"


def test_costs_count_the_tasks_each_pod_runs() -> None:
    costs = deletion_costs(PODS, {
        "research-7d9f-abcde-1a2b3c-0.1": 2, "research-7d9f-abcde-1a2b3c-1.3": 1,
        "research-7d9f-klmno-9f8e7d-0.1": 0, "gone-pod-000000-0.1": 4})
    assert costs == {"research-7d9f-abcde": 3, "research-7d9f-fghij": 0,
                     "research-7d9f-klmno": 0}


def _pod(name: str, cost: str | None = None, terminating: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "annotations": {}}
    if cost is not None:
        meta["annotations"][POD_DELETION_COST] = cost
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta}


async def test_a_pass_writes_only_changed_costs_and_sets_the_gauges() -> None:
    kube = FakeKube()
    kube.add_pool("agents", "research", "redis://redis:6379/0")
    kube.pods["agents"] = [_pod(PODS[0], "0"), _pod(PODS[1], "0"), _pod(PODS[2]),
                           _pod("research-7d9f-xxxxx", terminating=True)]
    reader = FakeReader({"agentpool:{agents/research}:tasks": Backlog(
        waiting=4, in_flight=2, per_consumer={f"{PODS[0]}-1a2b3c-0.1": 2})})
    telemetry = Telemetry()
    keeper = DeletionCostKeeper(kube.as_kube(), PoolDirectory(kube.as_kube()),
                                reader.as_reader(), telemetry)
    await keeper.run_once()
    assert kube.patches == [("agents", PODS[0], POD_DELETION_COST, "2"),
                            ("agents", PODS[2], POD_DELETION_COST, "0")]
    exposition = _exposition(telemetry)
    assert 'agentpool_queue_backlog{agentpool="research",namespace="agents"} 6.0' in exposition
    assert ('agentpool_queue_in_flight_tasks{agentpool="research",namespace="agents"} 2.0'
            in exposition)

    kube.patches.clear()
    await keeper.run_once()
    assert kube.patches == []  # steady state: no writes

    # A deleted pool's series go away.
    kube.pools.clear()
    await keeper.run_once()
    assert "agentpool_queue_backlog{" not in _exposition(telemetry)


def _exposition(telemetry: Telemetry) -> str:
    return generate_latest(telemetry.registry).decode()
