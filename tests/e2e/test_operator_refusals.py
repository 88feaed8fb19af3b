"""What the operator does with what it must not or cannot build: it reports, once, and waits.

Each test reproduces a defect class found with hostile-but-realistic AgentPools: an object of
a child's name made by someone else (was adopted, then garbage-collected with the pool), two
pools on one queue (stole each other's tasks), a stored spec the current CRD would refuse (the
build raised, retried forever, no status), an API refusal longer than a condition may hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.operator import OperatorProcess, Pools
from tests.waiting import eventually

pytestmark = pytest.mark.cluster
CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "agentpool.dev_agentpools.yaml"


def degraded(pools: Pools, name: str, reason: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        condition = pools.condition(name, "Degraded")
        if condition and condition["status"] == "True" and condition["reason"] == reason:
            return condition
        return None
    result: dict[str, Any] = eventually(found)
    return result


def events(pools: Pools, name: str, reason: str) -> list[dict[str, Any]]:
    listed = json.loads(pools.cluster.kubectl("-n", pools.namespace, "get", "events",
                                              "-o", "json").stdout)["items"]
    return [e for e in listed if e["involvedObject"]["name"] == name and e["reason"] == reason]


def writes_for(operator: OperatorProcess, pools: Pools, name: str) -> list[tuple[str, str]]:
    return [(e["verb"], e["objectRef"].get("resource", ""))
            for e in operator.writes(pools.namespace)
            if e["objectRef"].get("name", "").startswith(name)]


def test_an_object_with_a_childs_name_is_reported_never_taken_over(
        operator: OperatorProcess, pools: Pools) -> None:
    mine = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"mine": "yes"},
            "metadata": {"name": "kappa-config", "namespace": pools.namespace}}
    pools.cluster.kubectl("apply", "-f", "-", input=json.dumps(mine))
    pools.create("kappa")

    condition = degraded(pools, "kappa", "ChildConflict")
    assert "ConfigMap kappa-config already exists" in condition["message"]
    assert "was not created by this AgentPool" in condition["message"]
    config_map = pools.get("configmap", "kappa-config") or {}
    assert config_map["data"] == {"mine": "yes"}
    assert "ownerReferences" not in config_map["metadata"]
    assert pools.get("deployment", "kappa") is None

    # Deleting the pool leaves the user's object alone (it was never made ours).
    pools.cluster.kubectl("-n", pools.namespace, "delete", "agentpool", "kappa", "--wait")
    operator.wait_resyncs(1)
    assert (pools.get("configmap", "kappa-config") or {}).get("data") == {"mine": "yes"}

    # Once the name is free, the pool is built.
    pools.cluster.kubectl("-n", pools.namespace, "delete", "configmap", "kappa-config")
    pools.create("kappa")
    pools.wait_ready("kappa")
    owners = (pools.get("configmap", "kappa-config") or {})["metadata"]["ownerReferences"]
    assert [o["kind"] for o in owners] == ["AgentPool"]


def test_a_second_pool_on_the_same_queue_is_not_started_until_the_first_goes(
        operator: OperatorProcess, pools: Pools) -> None:
    queue = {"redis": {"urlSecretRef": {"name": "mu-redis", "key": "url"}},
             "stream": "shared:tasks"}
    pools.create("mu", queue=queue)
    pools.wait_ready("mu")
    pools.create("nu", with_secret=False, queue=queue)

    condition = degraded(pools, "nu", "QueueConflict")
    assert "AgentPool mu already reads stream 'shared:tasks'" in condition["message"]
    assert pools.get("deployment", "nu") is None
    assert (pools.condition("mu", "Ready") or {}).get("status") == "True"

    pools.cluster.kubectl("-n", pools.namespace, "delete", "agentpool", "mu")
    pools.wait_ready("nu")
    assert pools.get("deployment", "nu") is not None


def test_a_stored_spec_the_crd_now_refuses_is_reported_once_and_not_retried(
        operator: OperatorProcess, pools: Pools) -> None:
    # An object stored under an older, laxer CRD: a name with a dot cannot name a Service.
    kubectl = pools.cluster.kubectl
    crd = json.loads(kubectl("get", "crd", "agentpools.agentpool.dev", "-o", "json").stdout)
    rules = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    index = next(i for i, rule in enumerate(rules) if "matches" in rule["rule"])
    # The operator sleeps through the laxer CRD: it first meets the pool under the current one,
    # whose root rules apply to every write, the status write included (the CI failure).
    with operator.paused():
        kubectl("patch", "crd", "agentpools.agentpool.dev", "--type=json", "-p", json.dumps([
            {"op": "remove",
             "path": f"/spec/versions/0/schema/openAPIV3Schema/x-kubernetes-validations/{index}"}]))
        try:
            pools.create("xi.v2")
        finally:
            kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))

    condition = degraded(pools, "xi.v2", "InvalidSpec")
    assert condition["message"].startswith("metadata.name: pool name 'xi.v2' must be an RFC "
                                           "1035 label")
    assert (pools.condition("xi.v2", "Ready") or {})["reason"] == "InvalidSpec"
    for kind in ("deployment", "configmap", "service"):
        assert pools.get(kind, "xi.v2") is None
        assert pools.get(kind, "xi.v2-config") is None
    settled = len(writes_for(operator, pools, "xi.v2"))
    operator.wait_resyncs(4)  # two full reconciles: nothing new to write or to post
    assert len(writes_for(operator, pools, "xi.v2")) == settled
    assert len(events(pools, "xi.v2", "InvalidSpec")) == 1


def test_an_api_refusal_longer_than_a_condition_is_reported_cut_short(
        operator: OperatorProcess, pools: Pools) -> None:
    # valueFrom is free-form in the CRD: the API server refuses these only in the Deployment,
    # with one error per variable, far beyond the 32768 characters a condition may hold.
    bad_path = "metadata.annotations['" + "x" * 300 + "'].nonsense"
    env = [{"name": f"V{i}", "valueFrom": {"fieldRef": {"fieldPath": bad_path}}}
           for i in range(120)]
    pools.create("omicron", pod={"env": env})

    condition = degraded(pools, "omicron", "ApplyFailed")
    assert "Deployment" in condition["message"]
    assert "omicron" in condition["message"]
    assert len(condition["message"]) <= 32768
    assert condition["message"].endswith("(truncated)")
    assert pools.get("deployment", "omicron") is None
    # The refusal is final for this spec: no request is sent again at the resyncs.
    settled = len(writes_for(operator, pools, "omicron"))
    operator.wait_resyncs(4)
    assert len(writes_for(operator, pools, "omicron")) == settled
    assert len(events(pools, "omicron", "ApplyFailed")) == 1

    # Fixing the spec clears it.
    pools.cluster.kubectl("-n", pools.namespace, "patch", "agentpool", "omicron",
                          "--type=json", "-p", '[{"op":"remove","path":"/spec/pod/env"}]')
    pools.wait_ready("omicron")
