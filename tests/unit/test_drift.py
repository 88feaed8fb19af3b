"""Drift detection: live objects that already hold the desired fields need no write."""

from __future__ import annotations

from typing import Any

from agentpool_operator.drift import APPLIED_HASH, contains, differing_paths, with_applied_hash

DESIRED: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "p", "namespace": "ns", "labels": {"a": "1"}},
    "spec": {"replicas": 2, "template": {"spec": {"containers": [
        {"name": "runtime", "image": "img:1",
         "resources": {"limits": {"memory": "1024Mi", "cpu": "0.5"}}, "env": []}]}}},
}


def live_from(desired: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns: defaults added, quantities canonical, empties dropped."""
    live = with_applied_hash(desired)
    live["metadata"]["uid"] = "u"
    live["metadata"]["labels"]["added-by-someone"] = "x"
    container = live["spec"]["template"]["spec"]["containers"][0]
    container["resources"]["limits"] = {"memory": "1Gi", "cpu": "500m"}
    container["terminationMessagePath"] = "/dev/termination-log"
    del container["env"]
    live["spec"]["strategy"] = {"type": "RollingUpdate"}
    return live


def test_a_live_object_with_defaults_and_canonical_quantities_matches() -> None:
    assert contains(live_from(DESIRED), with_applied_hash(DESIRED))


def test_a_hand_edited_field_is_drift() -> None:
    live = live_from(DESIRED)
    live["spec"]["replicas"] = 5
    desired = with_applied_hash(DESIRED)
    assert not contains(live, desired)
    assert differing_paths(live, desired) == [".spec.replicas"]


def test_a_removed_list_item_is_drift() -> None:
    live = live_from(DESIRED)
    live["spec"]["template"]["spec"]["containers"] = []
    assert not contains(live, with_applied_hash(DESIRED))


def test_removing_a_field_from_the_desired_state_changes_the_stamp() -> None:
    smaller = {**DESIRED, "metadata": {"name": "p", "namespace": "ns"}}
    live = live_from(DESIRED)
    # The live object still has every field the smaller manifest asks for, but was applied
    # from a different manifest, so an apply is needed to drop the label we no longer own.
    assert not contains(live, with_applied_hash(smaller))
    assert with_applied_hash(smaller)["metadata"]["annotations"][APPLIED_HASH] != (
        live["metadata"]["annotations"][APPLIED_HASH])


def test_int_and_bool_are_not_confused() -> None:
    assert not contains({"a": 1}, {"a": True})
    assert contains({"a": "8080"}, {"a": 8080})
