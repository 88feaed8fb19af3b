"""Status computation: conditions reflect the observation; timestamps move only on flips."""

from __future__ import annotations

import datetime as dt
from typing import Any

from agentpool_operator.status import (
    Observation,
    Problem,
    compute_status,
    crash_looping,
    deployment_problems,
    status_changed,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def deployment(available: int, replicas: int = 2, updated: int | None = None,
               conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"metadata": {"generation": 3}, "status": {
        "observedGeneration": 3, "replicas": replicas, "readyReplicas": available,
        "availableReplicas": available, "updatedReplicas": replicas if updated is None else updated,
        "conditions": conditions or []}}


def observe(dep: dict[str, Any] | None, problems: list[Problem] | None = None) -> Observation:
    return Observation(generation=7, min_replicas=1, spec_replicas=2, selector="a=b",
                       deployment=dep, problems=problems or [])


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_a_fully_available_pool_is_ready_not_progressing_not_degraded() -> None:
    status = compute_status(observe(deployment(available=2)), {}, T0)
    assert conditions(status) == {"Ready": ("True", "MinimumReplicasAvailable"),
                                  "Progressing": ("False", "Complete"),
                                  "Degraded": ("False", "AsExpected")}
    assert status["observedGeneration"] == 7
    assert all(c["observedGeneration"] == 7 for c in status["conditions"])
    assert (status["replicas"], status["readyReplicas"], status["selector"]) == (2, 2, "a=b")


def test_a_rollout_in_flight_is_progressing() -> None:
    status = compute_status(observe(deployment(available=2, updated=1)), {}, T0)
    assert conditions(status)["Progressing"] == ("True", "RollingOut")
    assert conditions(status)["Ready"][0] == "True"


def test_below_min_replicas_is_not_ready() -> None:
    status = compute_status(observe(deployment(available=0)), {}, T0)
    assert conditions(status)["Ready"] == ("False", "MinimumReplicasUnavailable")


def test_a_blocking_problem_makes_the_pool_not_ready_and_degraded_with_its_reason() -> None:
    problem = Problem(reason="SecretMissing", message="Secret x does not exist", blocking=True)
    status = compute_status(observe(None, [problem]), {}, T0)
    assert conditions(status)["Ready"] == ("False", "SecretMissing")
    assert conditions(status)["Degraded"] == ("True", "SecretMissing")


def test_transition_time_moves_only_when_a_status_flips_and_nothing_is_rewritten() -> None:
    first = compute_status(observe(deployment(available=2)), {}, T0)
    again = compute_status(observe(deployment(available=2)), first, T1)
    assert again == first
    assert not status_changed(first, again)

    flipped = compute_status(observe(deployment(available=0)), first, T1)
    times = {c["type"]: c["lastTransitionTime"] for c in flipped["conditions"]}
    assert times["Ready"] == "2026-01-01T00:05:00Z"
    assert times["Degraded"] == "2026-01-01T00:00:00Z"
    assert status_changed(first, flipped)


def test_crash_looping_containers_are_named() -> None:
    pods = [{"metadata": {"name": "p-1"}, "status": {"containerStatuses": [
        {"name": "runtime", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}},
            {"metadata": {"name": "p-2"}, "status": {"containerStatuses": [
                {"name": "runtime", "state": {"running": {}}}]}}]
    problem = crash_looping(pods)
    assert problem is not None
    assert problem.reason == "CrashLooping"
    assert "p-1/runtime" in problem.message
    assert "p-2" not in problem.message
    assert crash_looping(pods[1:]) is None


def test_deployment_controller_failures_become_problems() -> None:
    dep = deployment(available=0, conditions=[
        {"type": "ReplicaFailure", "status": "True", "message": "quota exceeded"},
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": "too slow"}])
    reasons = [p.reason for p in deployment_problems(dep)]
    assert reasons == ["PodCreationFailed", "RolloutStuck"]
