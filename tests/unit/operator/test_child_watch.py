"""Watched children: which events reconcile a pool, and how a relist audit keeps the cache true.

Pure: the store's bookkeeping only; no request is made.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from agentpool_operator.apply import recreatable
from agentpool_operator.cache import LatestObjects, digest_secret, same_content
from agentpool_operator.instrumentation import OperatorMetrics
from agentpool_operator.store import PoolStore

POOL_UID = "pool-uid"


def reconciler() -> PoolStore:
    found = PoolStore()
    found.pools.put(("ns", "p"), {"metadata": {"name": "p", "namespace": "ns",
                                               "uid": POOL_UID, "resourceVersion": "1"}})
    return found


def child(kind: str, version: str, owner_uid: str = POOL_UID, **fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "metadata": {
        "name": "p", "namespace": "ns", "resourceVersion": version, "uid": "c1",
        "ownerReferences": [{"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
                             "name": "p", "uid": owner_uid, "controller": True}]}, **fields}


def test_an_edit_reconciles_the_pool_fully_but_our_echo_and_status_updates_do_not() -> None:
    r = reconciler()
    ours = child("Service", "10", spec={"clusterIP": "None"})
    r.children.put(("v1", "Service", "ns", "p"), ours, watched=False)  # our apply's answer
    assert r.child_event("v1", "Service", ours, "MODIFIED") is None  # its echo
    assert r.children.watched(("v1", "Service", "ns", "p")) is not None  # now confirmed
    status_only = child("Service", "11", spec={"clusterIP": "None"}, status={"x": 1})
    assert r.child_event("v1", "Service", status_only, "MODIFIED") is None
    edited = child("Service", "12", spec={"clusterIP": "None", "ports": []})
    assert r.child_event("v1", "Service", edited, "MODIFIED") == ("ns", "p")
    assert r.take_full(("ns", "p"))


def test_a_late_older_event_is_ignored() -> None:
    r = reconciler()
    r.children.put(("v1", "Service", "ns", "p"), child("Service", "20"), watched=False)
    assert r.child_event("v1", "Service", child("Service", "19", spec={"a": 1}),
                         "MODIFIED") is None
    assert (r.children.get(("v1", "Service", "ns", "p")) or {})["metadata"][
        "resourceVersion"] == "20"


def test_a_deletion_reconciles_the_pool_and_rereads_it() -> None:
    r = reconciler()
    r.children.put(("v1", "Service", "ns", "p"), child("Service", "10"))
    assert r.child_event("v1", "Service", child("Service", "11"), "DELETED") == ("ns", "p")
    assert r.children.get(("v1", "Service", "ns", "p")) is None
    assert r.pools.get(("ns", "p")) is None  # read again: the pool may be what was deleted


def test_children_of_an_earlier_pool_of_that_name_are_left_to_the_garbage_collector() -> None:
    r = reconciler()
    assert r.child_event("v1", "Service", child("Service", "5", owner_uid="old"),
                         "DELETED") is None
    assert r.pools.get(("ns", "p")) is not None


def test_a_listed_child_new_to_us_is_kept_and_waits_for_the_resync() -> None:
    r = reconciler()
    assert r.child_event("v1", "ConfigMap", child("ConfigMap", "3"), None) is None
    assert r.children.watched(("v1", "ConfigMap", "ns", "p")) is not None


def test_a_relist_reconciles_the_pools_of_edited_and_vanished_children() -> None:
    r = reconciler()
    r.children.put(("v1", "Service", "ns", "p"), child("Service", "10"))
    r.children.put(("v1", "ConfigMap", "ns", "p"), child("ConfigMap", "10", data={"a": "1"}))
    # The Service was deleted while no watch ran: the list lacks it.
    assert r.audit("v1", "Service", set(), "20") == {("ns", "p")}
    assert r.children.get(("v1", "Service", "ns", "p")) is None
    assert r.take_full(("ns", "p"))
    # Listed and unchanged: nothing to do; listed and edited: reconcile.
    assert r.child_event("v1", "ConfigMap", child("ConfigMap", "10", data={"a": "1"}),
                         None) is None
    assert r.audit("v1", "ConfigMap", {("ns", "p")}, "20") == set()
    assert r.child_event("v1", "ConfigMap", child("ConfigMap", "21", data={"a": "2"}),
                         None) == ("ns", "p")


def test_a_relist_keeps_what_our_own_writes_made_after_it() -> None:
    r = reconciler()
    r.children.put(("v1", "Service", "ns", "p"), child("Service", "30"), watched=False)
    assert r.audit("v1", "Service", set(), "20") == set()
    assert r.children.get(("v1", "Service", "ns", "p")) is not None


def test_a_relist_of_deployments_keys_them_by_pool() -> None:
    r = reconciler()
    deployment = {**child("Deployment", "10"), "apiVersion": "apps/v1"}
    r.deployments.put(("ns", "p"), deployment)
    assert r.audit("apps/v1", "Deployment", {("ns", "p")}, "20") == set()
    assert r.audit("apps/v1", "Deployment", set(), "20") == {("ns", "p")}
    assert r.deployments.get(("ns", "p")) is None


def test_own_answers_stay_unconfirmed_until_the_watch_delivers_them() -> None:
    cache: LatestObjects[str] = LatestObjects()
    cache.put("a", child("Service", "5"))
    cache.put("a", child("Service", "6"), watched=False)
    assert cache.watched("a") is None
    cache.put("a", child("Service", "6"), watched=False)
    assert cache.watched("a") is None
    cache.put("a", child("Service", "6"))
    assert cache.watched("a") is not None
    cache.put("a", child("Service", "6"), watched=False)  # the same version: still confirmed
    assert cache.watched("a") is not None


def test_secret_values_are_never_cached_but_still_compare() -> None:
    secret = {**child("Secret", "4"), "data": {"dsn": "cG9zdGdyZXM6Ly9zM2NyZXQ="}}
    cache: LatestObjects[str] = LatestObjects()
    cache.put("s", secret)
    kept = cache.get("s") or {}
    assert "cG9zdGdyZXM6Ly9zM2NyZXQ=" not in str(kept)
    assert kept["data"] == digest_secret(secret)["data"] == digest_secret(kept)["data"]
    assert same_content(secret, kept)
    assert not same_content({**secret, "data": {"dsn": "b3RoZXI="}}, kept)


def test_only_kinds_the_operator_may_delete_are_made_anew_and_never_the_deployment() -> None:
    def manifest(api_version: str, kind: str) -> dict[str, Any]:
        return {**child(kind, "1"), "apiVersion": api_version}

    for api_version, kind in [("policy/v1", "PodDisruptionBudget"), ("v1", "Secret")]:
        assert recreatable(manifest(api_version, kind), manifest(api_version, kind))
    for api_version, kind in [("apps/v1", "Deployment"), ("v1", "ConfigMap"), ("v1", "Service")]:
        assert not recreatable(manifest(api_version, kind), manifest(api_version, kind))
    pdb = manifest("policy/v1", "PodDisruptionBudget")
    assert not recreatable(None, pdb)  # nothing live (a first reconcile does not look)
    someone_elses = {**child("PodDisruptionBudget", "1", owner_uid="other"),
                     "apiVersion": "policy/v1"}
    assert not recreatable(someone_elses, pdb)


def test_objects_with_our_label_but_no_pool_owner_are_not_kept() -> None:
    r = reconciler()
    unowned = child("ConfigMap", "3")
    unowned["metadata"].pop("ownerReferences")
    assert r.child_event("v1", "ConfigMap", unowned, None) is None
    assert r.child_event("v1", "ConfigMap", {**unowned, "data": {"a": "1"}}, "MODIFIED") is None
    assert len(r.children) == 0
    assert r.child_event("v1", "Service", child("Service", "4", owner_uid="old"), "ADDED") is None
    assert len(r.children) == 0


def test_the_hpas_conditions_are_kept_for_metrics_and_forgotten_with_it() -> None:
    r = reconciler()
    failing = child("HorizontalPodAutoscaler", "7", status={"conditions": [
        {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale"},
        {"type": "ScalingActive", "status": "False", "reason": "FailedGetExternalMetric"}]})
    # A status update reconciles nothing, but its conditions are noted.
    r.child_event("autoscaling/v2", "HorizontalPodAutoscaler", failing, "MODIFIED")
    assert r.autoscalers[("ns", "p")]["ScalingActive"] == ("False", "FailedGetExternalMetric")
    metrics = OperatorMetrics(lambda: {}, autoscalers=lambda: r.autoscalers)
    exposed = generate_latest(metrics.registry).decode()
    assert ('agentpool_operator_autoscaler_condition{agentpool="p",condition="ScalingActive",'
            'namespace="ns",reason="FailedGetExternalMetric"} 0.0') in exposed
    r.child_event("autoscaling/v2", "HorizontalPodAutoscaler",
                  child("HorizontalPodAutoscaler", "8"), "DELETED")
    assert ("ns", "p") not in r.autoscalers
