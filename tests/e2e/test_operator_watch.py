"""Watched children: a deleted or edited child is repaired within seconds, not at the next resync.

The operator here resyncs only every 10 minutes, so a repair within seconds can only come from
the child's own watch event. Every write the operator makes is counted in the API server's
audit log: a repair writes the repaired child (and its Event), nothing else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agentpool_dev.cluster import Cluster
from tests.plugins.operator import OPERATOR_USER, OperatorProcess, Pools, running_operator
from tests.waiting import eventually

pytestmark = pytest.mark.cluster
LONG_RESYNC_SECONDS = 600
REPAIR_SECONDS = 10.0


@pytest.fixture(scope="module")
def slow_operator(cluster: Cluster, agentpool_crd: dict[str, Any],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    if not (cluster.state_dir / "pki" / "ca.key").exists():
        pytest.skip("counts the operator's writes in the harness's audit log, which an existing "
                    "cluster (AGENTPOOL_TEST_KUBECONFIG) does not have")
    kubeconfig = cluster.kubeconfig_for(OPERATOR_USER, ("system:masters",))
    with running_operator(OperatorProcess(cluster, kubeconfig,
                                          tmp_path_factory.mktemp("operator") / "log",
                                          resync_seconds=LONG_RESYNC_SECONDS)) as process:
        yield process


def settled(pools: Pools, name: str) -> None:
    pools.wait_ready(name)
    eventually(lambda: (pools.condition(name, "Progressing") or {}).get("status") == "False")
    time.sleep(2)  # the rollout's last status updates


def writes_since(operator: OperatorProcess, namespace: str, before: int
                 ) -> list[tuple[str, str, str]]:
    time.sleep(3)  # anything a repair might still write
    return sorted((e["verb"], e["objectRef"].get("resource", ""),
                   e["objectRef"].get("name", "") if e["objectRef"].get("resource") != "events"
                   else "") for e in operator.writes(namespace)[before:])


def repaired_within(check: Any) -> float:
    started = time.monotonic()
    eventually(check, timeout=REPAIR_SECONDS * 3, interval=0.2)
    return time.monotonic() - started


def test_a_deleted_service_is_recreated_within_seconds(slow_operator: OperatorProcess,
                                                       pools: Pools) -> None:
    pools.create("svc")
    settled(pools, "svc")
    uid = (pools.get("service", "svc") or {})["metadata"]["uid"]
    before = len(slow_operator.writes(pools.namespace))

    pools.cluster.kubectl("-n", pools.namespace, "delete", "service", "svc")
    took = repaired_within(lambda: (pools.get("service", "svc") or {}).get(
        "metadata", {}).get("uid") not in (None, uid))

    assert took < REPAIR_SECONDS, f"re-created after {took:.1f}s"
    # The Service (server-side apply) and the Event announcing it: nothing else.
    assert writes_since(slow_operator, pools.namespace, before) == [
        ("create", "events", ""), ("patch", "services", "svc")]


def test_edited_pdb_and_configmap_are_restored_within_seconds(
        slow_operator: OperatorProcess, pools: Pools) -> None:
    pools.create("edit")
    settled(pools, "edit")
    config = (pools.get("configmap", "edit-config") or {})["data"]
    before = len(slow_operator.writes(pools.namespace))
    kubectl = pools.cluster.kubectl

    kubectl("-n", pools.namespace, "patch", "pdb", "edit", "--type=merge",
            "-p", json.dumps({"spec": {"maxUnavailable": 3}}))
    kubectl("-n", pools.namespace, "patch", "configmap", "edit-config", "--type=merge",
            "-p", json.dumps({"data": {"runtime.yaml": "edited: true\n"}}))
    took = repaired_within(lambda: (pools.get("pdb", "edit") or {})["spec"].get(
        "maxUnavailable") == 1 and (pools.get("configmap", "edit-config") or {})["data"] == config)

    assert took < REPAIR_SECONDS, f"restored after {took:.1f}s"
    found = writes_since(slow_operator, pools.namespace, before)
    assert [w for w in found if w[1] != "events"] == [
        ("patch", "configmaps", "edit-config"), ("patch", "poddisruptionbudgets", "edit")]
    assert 1 <= len(found) - 2 <= 2  # "updated ..." Event(s): one per reconcile that repaired


def test_a_quiet_pool_makes_no_writes_while_its_children_are_watched(
        slow_operator: OperatorProcess, pools: Pools) -> None:
    pools.create("quiet", replicas=2)
    settled(pools, "quiet")
    before = len(slow_operator.writes(pools.namespace))
    time.sleep(10)  # status updates of the PDB (disruption controller) and Deployment arrive
    assert writes_since(slow_operator, pools.namespace, before) == []


def test_a_pdb_switched_to_min_available_is_made_anew(
        slow_operator: OperatorProcess, pools: Pools) -> None:
    pools.create("minav")
    settled(pools, "minav")
    before = len(slow_operator.writes(pools.namespace))
    pools.cluster.kubectl("-n", pools.namespace, "patch", "pdb", "minav", "--type=json", "-p",
                          json.dumps([{"op": "remove", "path": "/spec/maxUnavailable"},
                                      {"op": "add", "path": "/spec/minAvailable", "value": 1}]))
    # Apply cannot drop kubectl's minAvailable, and both together are invalid: the operator
    # re-creates the PDB.
    took = repaired_within(lambda: (pools.get("pdb", "minav") or {}).get("spec", {}).get(
        "maxUnavailable") == 1)
    assert took < REPAIR_SECONDS, f"restored after {took:.1f}s"
    assert "minAvailable" not in (pools.get("pdb", "minav") or {})["spec"]
    # The refused apply, the deletion and the apply anew; nothing else but Event(s).
    found = writes_since(slow_operator, pools.namespace, before)
    assert [w for w in found if w[1] != "events"] == [
        ("delete", "poddisruptionbudgets", "minav"), ("patch", "poddisruptionbudgets", "minav"),
        ("patch", "poddisruptionbudgets", "minav")]
    assert (pools.condition("minav", "Degraded") or {}).get("status") == "False"
