"""Crash loops are found by looking at a pool's pods on a schedule of its own, not on every
Deployment change: a rollout that becomes available within the first look's delay lists no
pods, a crash loop is reported at the first look and stays reported between looks, and pods
that stay unschedulable are looked at less and less often."""

from __future__ import annotations

import copy
from typing import Any

from agentpool_operator.pod_checks import PodChecks
from agentpool_operator.reconcile import Reconciler
from tests.unit.operator.fake_cluster import FakeCluster
from tests.unit.operator.test_reconcile_steps import (
    NS,
    POOL_KEY,
    REDIS,
    SPEC,
    degraded,
    pool_object,
    reconcile,
    reconciler,
)

DEPLOYMENT = ("apps/v1", "Deployment", NS, "echo")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def crash_looping_pod() -> dict[str, Any]:
    return {"metadata": {"name": "echo-abc"}, "status": {"containerStatuses": [
        {"name": "runtime", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}


def started(clock: Clock) -> tuple[FakeCluster, Reconciler]:
    cluster = FakeCluster(secrets={(NS, "echo-redis"): REDIS})
    cluster.put(pool_object(SPEC))
    r = reconciler(cluster)
    r.pod_checks = PodChecks(clock=clock)
    return cluster, r


def deployment_status(cluster: FakeCluster, r: Reconciler, unavailable: int) -> None:
    """The Deployment controller reports its pods; the watch delivers the change."""
    deployment = cluster.objects[DEPLOYMENT]
    deployment["metadata"]["resourceVersion"] += "0"
    deployment["status"] = {"observedGeneration": deployment["metadata"]["generation"],
                            "replicas": 2, "updatedReplicas": 2,
                            "availableReplicas": 2 - unavailable,
                            "readyReplicas": 2 - unavailable, "unavailableReplicas": unavailable}
    r.store.deployment_event(POOL_KEY, copy.deepcopy(deployment), deleted=False)


def pod_lists(cluster: FakeCluster) -> int:
    return sum(1 for request in cluster.requests if request[:2] == ("list", "Pod"))


async def test_a_rollout_available_before_the_first_look_lists_no_pods() -> None:
    clock = Clock()
    cluster, r = started(clock)
    await reconcile(r, cluster)
    deployment_status(cluster, r, unavailable=2)
    assert await reconcile(r, cluster) == "requeue 10s"
    clock.now += 4
    deployment_status(cluster, r, unavailable=1)
    assert await reconcile(r, cluster) == "requeue 6s"  # the schedule runs from the first
    clock.now += 3
    deployment_status(cluster, r, unavailable=0)
    assert await reconcile(r, cluster) == "done"
    assert pod_lists(cluster) == 0


async def test_a_crash_loop_is_reported_at_the_first_look_and_kept_until_the_next() -> None:
    clock = Clock()
    cluster, r = started(clock)
    cluster.pods = [crash_looping_pod()]
    await reconcile(r, cluster)
    deployment_status(cluster, r, unavailable=2)
    assert await reconcile(r, cluster) == "requeue 10s"
    assert degraded(cluster) is None

    clock.now += 10
    assert await reconcile(r, cluster) == "requeue 10s"  # while it loops: every 10 s
    assert (pod_lists(cluster), degraded(cluster)) == (1, "CrashLooping")

    clock.now += 2  # a status change between looks keeps what the last look found
    deployment_status(cluster, r, unavailable=1)
    assert await reconcile(r, cluster) == "requeue 8s"
    assert (pod_lists(cluster), degraded(cluster)) == (1, "CrashLooping")

    cluster.pods = []  # fixed: the next look clears it, and so does full availability
    clock.now += 8
    assert await reconcile(r, cluster) == "requeue 20s"
    assert (pod_lists(cluster), degraded(cluster)) == (2, None)


async def test_pods_that_stay_unavailable_are_looked_at_less_and_less_often() -> None:
    clock = Clock()
    cluster, r = started(clock)
    await reconcile(r, cluster)
    deployment_status(cluster, r, unavailable=2)
    delays = [await reconcile(r, cluster)]
    for _ in range(7):
        clock.now += float(delays[-1].split()[1].rstrip("s"))
        delays.append(await reconcile(r, cluster))
    assert delays == ["requeue 10s", "requeue 20s", "requeue 40s", "requeue 80s",
                      "requeue 160s", "requeue 300s", "requeue 300s", "requeue 300s"]
    assert pod_lists(cluster) == 7

    deployment_status(cluster, r, unavailable=0)  # available: a new unavailability starts over
    assert await reconcile(r, cluster) == "done"
    deployment_status(cluster, r, unavailable=1)
    assert await reconcile(r, cluster) == "requeue 10s"
