"""The HorizontalPodAutoscaler: scales the AgentPool on the queue backlog."""

from __future__ import annotations

from agentpool_operator.builders import QUEUE_BACKLOG_METRIC, build_hpa
from tests.unit.operator.builder_samples import full_ctx, minimal_ctx


def test_no_hpa_without_autoscaling() -> None:
    assert build_hpa(minimal_ctx()) is None
    assert build_hpa(full_ctx({"autoscaling": {"enabled": False}})) is None


def test_hpa_targets_the_agentpool_scale_subresource() -> None:
    hpa = build_hpa(full_ctx())
    assert hpa is not None
    assert (hpa["apiVersion"], hpa["kind"]) == ("autoscaling/v2", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "agentpool.dev/v1alpha1",
        "kind": "AgentPool",
        "name": "research",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 20)


def test_min_replicas_is_at_least_one() -> None:
    hpa = build_hpa(minimal_ctx({"minReplicas": 0, "autoscaling": {"enabled": True}}))
    assert hpa is not None
    assert hpa["spec"]["minReplicas"] == 1


def test_backlog_metric_target_per_pod() -> None:
    hpa = build_hpa(full_ctx())
    assert hpa is not None
    assert QUEUE_BACKLOG_METRIC == "agentpool_queue_backlog"
    # targetBacklogPerWorker 2 x perPod 4, as a quantity string.
    assert hpa["spec"]["metrics"] == [
        {
            "type": "External",
            "external": {
                "metric": {
                    "name": QUEUE_BACKLOG_METRIC,
                    "selector": {"matchLabels": {"agentpool.dev/pool": "research"}},
                },
                "target": {"type": "AverageValue", "averageValue": "8"},
            },
        }
    ]


def test_behavior_copies_scale_rules() -> None:
    hpa = build_hpa(full_ctx())
    assert hpa is not None
    assert hpa["spec"]["behavior"] == {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": 30},
                {"type": "Pods", "value": 4, "periodSeconds": 30},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": 600,
            "selectPolicy": "Min",
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
        },
    }


def test_default_behavior_scales_down_slowly() -> None:
    hpa = build_hpa(minimal_ctx({"autoscaling": {"enabled": True}}))
    assert hpa is not None
    scale_down = hpa["spec"]["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] == 300
    assert scale_down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]
