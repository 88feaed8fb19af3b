"""Pod deletion costs, kept by the operator: idle pods are cheaper to remove than busy ones,
quietly (no write and no list for idle pools), and one unreadable pool never stops the pass."""

from __future__ import annotations

import logging

import pytest

from agent_runtime.queue.backlog import Backlog
from agentpool_operator.deletioncost import (
    POD_DELETION_COST,
    DeletionCostKeeper,
    deletion_costs,
    pod_for_consumer,
)
from agentpool_operator.queues import QueueRegistry
from tests.unit.operator.kube_fakes import FakeOperatorKube, pod
from tests.unit.operator.metrics_api_fakes import FakeReader, queue_entry

PODS = ["research-7d9f-abcde", "research-7d9f-fghij", "research-7d9f-klmno"]
STREAM = "agentpool:{agents/research}:tasks"
URL = "redis://:queue-secret-pw@redis:6379/0"


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


def registry_of(*entries: tuple[str, str]) -> QueueRegistry:
    registry = QueueRegistry()
    registry.seed(queue_entry(namespace, name, URL) for namespace, name in entries)
    return registry


async def test_only_changed_costs_are_written_and_a_pod_without_one_already_costs_zero(
) -> None:
    kube = FakeOperatorKube(pods={"agents": [
        pod(PODS[0], "research", "0"), pod(PODS[1], "research", "5"),
        pod(PODS[2], "research"), pod("research-7d9f-xxxxx", "research", terminating=True)]})
    reader = FakeReader({STREAM: Backlog(waiting=4, in_flight=2,
                                         per_consumer={f"{PODS[0]}-1a2b3c-0.1": 2})})
    keeper = DeletionCostKeeper(kube.as_kube(), registry_of(("agents", "research")),
                                reader.as_reader())
    await keeper.run_once()
    assert kube.patches == [("agents", PODS[0], POD_DELETION_COST, "2"),
                            ("agents", PODS[1], POD_DELETION_COST, "0")]
    kube.patches.clear()
    await keeper.run_once()
    assert kube.patches == []  # steady state: no writes


async def test_an_idle_pool_is_listed_once_and_then_costs_nothing() -> None:
    kube = FakeOperatorKube(pods={"agents": [pod(p, "research") for p in PODS]})
    reader = FakeReader({STREAM: Backlog(waiting=0, in_flight=0)})
    keeper = DeletionCostKeeper(kube.as_kube(), registry_of(("agents", "research")),
                                reader.as_reader())
    for _ in range(3):
        await keeper.run_once()
    assert kube.pod_lists == [("agents", "research")]
    assert kube.patches == []

    # Work arrives: the pods are listed on every pass while it runs, and back to 0 after.
    reader.backlogs[STREAM] = Backlog(0, 1, per_consumer={f"{PODS[2]}-0a0b0c-0.1": 1})
    await keeper.run_once()
    reader.backlogs[STREAM] = Backlog(0, 0)
    await keeper.run_once()
    await keeper.run_once()
    assert kube.patches == [("agents", PODS[2], POD_DELETION_COST, "1"),
                            ("agents", PODS[2], POD_DELETION_COST, "0")]
    assert len(kube.pod_lists) == 3


@pytest.mark.parametrize("failure", [
    ConnectionError("refused"), ValueError("Redis URL must specify a scheme"),
    KeyError("pending")], ids=["connection", "url", "unexpected"])
async def test_one_unreadable_pool_never_stops_the_pass_for_the_others(
        failure: Exception, caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeOperatorKube(pods={"agents": [pod(PODS[0], "research")],
                                  "team": [pod("good-1", "good")]})
    reader = FakeReader({"agentpool:{team/good}:tasks": Backlog(
        0, 2, per_consumer={"good-1-0a0b0c-0.1": 2})}, failing={STREAM: failure})
    keeper = DeletionCostKeeper(kube.as_kube(), registry_of(("agents", "research"),
                                                            ("team", "good")),
                                reader.as_reader())
    with caplog.at_level(logging.WARNING):
        await keeper.run_once()
        await keeper.run_once()
    assert kube.patches == [("team", "good-1", POD_DELETION_COST, "2")]
    assert keeper.passes == 2
    warnings = [r.getMessage() for r in caplog.records if "agents/research" in r.getMessage()]
    assert len(warnings) == 1  # once per failure, not once per pass
    assert "queue-secret-pw" not in caplog.text


async def test_a_refused_patch_is_reported_and_the_other_pools_still_get_theirs(
        caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeOperatorKube(pods={"agents": [pod(PODS[0], "research")]})
    reader = FakeReader({STREAM: Backlog(0, 1, per_consumer={f"{PODS[0]}-0a0b0c-0.1": 1})})
    kube.refuse_writes = 'pods "x" is forbidden'
    keeper = DeletionCostKeeper(kube.as_kube(), registry_of(("agents", "research")),
                                reader.as_reader())
    with caplog.at_level(logging.WARNING):
        await keeper.run_once()
    assert "forbidden" in caplog.text
    kube.refuse_writes = None
    await keeper.run_once()
    assert kube.patches == [("agents", PODS[0], POD_DELETION_COST, "1")]
