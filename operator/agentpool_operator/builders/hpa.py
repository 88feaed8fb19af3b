"""The HorizontalPodAutoscaler `<pool>` (autoscaling/v2), when autoscaling is enabled.

It scales the AgentPool itself through the CRD's scale subresource (it writes
`AgentPool.spec.replicas`, which the operator copies into the Deployment), on the queue
backlog exported as an External metric by the AgentPool metrics API server
(`agentpool_operator.metrics_api`). Not built when the pool asks for KEDA and KEDA is there.
"""

from __future__ import annotations

from typing import Any

from agentpool_operator.api import API_VERSION, KIND, AgentPoolSpec, AutoscalingSpec
from agentpool_operator.api.autoscaling import QUEUE_BACKLOG_METRIC as QUEUE_BACKLOG_METRIC
from agentpool_operator.api.models import ScaleDownRules, ScaleUpRules
from agentpool_operator.builders.common import POOL_LABEL, Manifest, object_meta
from agentpool_operator.builders.context import PoolContext


def _rules(rules: ScaleUpRules | ScaleDownRules) -> dict[str, Any]:
    return {
        "stabilizationWindowSeconds": rules.stabilization_window_seconds,
        "selectPolicy": rules.select_policy,
        "policies": [
            {"type": policy.type, "value": policy.value, "periodSeconds": policy.period_seconds}
            for policy in rules.policies
        ],
    }


def behavior(autoscaling: AutoscalingSpec) -> dict[str, Any]:
    """The HPA `behavior` from the spec (also passed to the HPA that KEDA creates)."""
    return {"scaleUp": _rules(autoscaling.scale_up), "scaleDown": _rules(autoscaling.scale_down)}


def per_pod_target(spec: AgentPoolSpec) -> int:
    """The backlog one pod should carry: every worker process of it takes its share."""
    return spec.autoscaling.target_backlog_per_worker * spec.workers.per_pod


def build_hpa(ctx: PoolContext) -> Manifest | None:
    """The `<pool>` HorizontalPodAutoscaler, or None when autoscaling is disabled or a KEDA
    ScaledObject does the job (`builders/scaledobject.py`)."""
    spec = ctx.spec
    autoscaling = spec.autoscaling
    if not autoscaling.enabled or ctx.uses_keda:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": object_meta(ctx, ctx.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": API_VERSION, "kind": KIND, "name": ctx.name},
            # The autoscaler cannot grow a pool from zero pods (no pod reports any load).
            "minReplicas": max(1, spec.min_replicas),
            "maxReplicas": spec.max_replicas,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": QUEUE_BACKLOG_METRIC,
                            "selector": {"matchLabels": {POOL_LABEL: ctx.name}},
                        },
                        # AverageValue: the HPA divides the backlog by the current replicas.
                        "target": {"type": "AverageValue",
                                   "averageValue": str(per_pod_target(spec))},
                    },
                }
            ],
            "behavior": behavior(autoscaling),
        },
    }
