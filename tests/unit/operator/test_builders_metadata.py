"""Names, labels, selectors, owner references and the `Children` bundle."""

from __future__ import annotations

import dataclasses

import pytest

from agentpool_operator.builders import (
    Children,
    build_children,
    config_map_name,
    secret_name,
    selector_labels,
    selector_string,
)
from tests.unit.operator.builder_samples import NAMESPACE, UID, full_ctx, minimal_ctx

COMMON = {
    "app.kubernetes.io/name": "agentpool",
    "app.kubernetes.io/managed-by": "agentpool-operator",
    "app.kubernetes.io/part-of": "agentpool",
}


def test_selector_is_name_and_instance_only() -> None:
    assert selector_labels("research") == {
        "app.kubernetes.io/name": "agentpool",
        "app.kubernetes.io/instance": "research",
    }
    assert (
        selector_string("research")
        == "app.kubernetes.io/instance=research,app.kubernetes.io/name=agentpool"
    )


def test_child_names() -> None:
    children = build_children(full_ctx())
    assert config_map_name("research") == "research-config"
    assert secret_name("research") == "research-pgbouncer"
    assert children.config_map["metadata"]["name"] == "research-config"
    assert children.secret is not None
    assert children.secret["metadata"]["name"] == "research-pgbouncer"
    for manifest in (
        children.deployment,
        children.service,
        children.pdb,
        children.hpa,
        children.pod_monitor,
    ):
        assert manifest is not None
        assert manifest["metadata"]["name"] == "research"


def test_every_child_has_labels_namespace_and_controller_owner() -> None:
    for manifest in build_children(full_ctx()).manifests:
        metadata = manifest["metadata"]
        assert metadata["namespace"] == NAMESPACE
        assert (
            metadata["labels"].items()
            >= {
                **COMMON,
                "app.kubernetes.io/instance": "research",
                "agentpool.dev/pool": "research",
            }.items()
        )
        assert metadata["ownerReferences"] == [
            {
                "apiVersion": "agentpool.dev/v1alpha1",
                "kind": "AgentPool",
                "name": "research",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_deployment_and_pods_are_the_worker_component() -> None:
    deployment = build_children(minimal_ctx()).deployment
    assert deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app.kubernetes.io/component"] == "worker"
    assert pod_labels.items() >= selector_labels("echo").items()


def test_every_selector_is_the_pool_selector() -> None:
    children = build_children(full_ctx())
    expected = {"matchLabels": selector_labels("research")}
    assert children.deployment["spec"]["selector"] == expected
    assert children.pdb["spec"]["selector"] == expected
    assert children.pod_monitor is not None
    assert children.pod_monitor["spec"]["selector"] == expected
    assert children.service["spec"]["selector"] == selector_labels("research")


def test_manifests_are_in_apply_order() -> None:
    kinds = [m["kind"] for m in build_children(full_ctx()).manifests]
    assert kinds == [
        "ConfigMap",
        "Secret",
        "Service",
        "PodDisruptionBudget",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodMonitor",
    ]


def test_optional_children_are_none_when_not_needed() -> None:
    children = build_children(minimal_ctx())
    assert (children.secret, children.hpa, children.pod_monitor) == (None, None, None)
    kinds = [m["kind"] for m in children.manifests]
    assert kinds == ["ConfigMap", "Service", "PodDisruptionBudget", "Deployment"]


def test_children_is_frozen() -> None:
    children = build_children(minimal_ctx())
    assert isinstance(children, Children)
    with pytest.raises(dataclasses.FrozenInstanceError):
        children.hpa = {}  # type: ignore[misc]


def test_builders_do_not_share_mutable_state() -> None:
    # The reconciler may mutate what it applies; a second build must be unaffected.
    ctx = full_ctx()
    first = build_children(ctx)
    first.deployment["spec"]["template"]["spec"]["affinity"]["mutated"] = True
    first.deployment["metadata"]["labels"]["mutated"] = "yes"
    second = build_children(ctx)
    assert "mutated" not in second.deployment["spec"]["template"]["spec"]["affinity"]
    assert "mutated" not in second.deployment["metadata"]["labels"]
