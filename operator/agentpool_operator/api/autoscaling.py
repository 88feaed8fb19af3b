"""The autoscaling section of the AgentPool spec: queue-driven scaling and its behaviour.

`provider` picks the autoscaler object: an HPA (`builders/hpa.py`) or a KEDA ScaledObject
(`builders/scaledobject.py`). The scale-up/scale-down rules mirror the HPA's `behavior`
fields so the operator can copy them into either; the defaults scale up fast and down
slowly, because every removed pod first drains its running tasks.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agentpool_operator.api.common import ApiModel, section

QUEUE_BACKLOG_METRIC = "agentpool_queue_backlog"
"""The External metric a pool's HPA scales on (tasks queued or running on its stream,
labelled agentpool.dev/pool), served by the metrics API."""


class ScalingPolicy(ApiModel):
    """A limit on how much the pool may scale within one period."""

    type: Literal["Pods", "Percent"]
    """Pods: change by at most `value` pods; Percent: by at most `value` percent."""
    value: int = Field(ge=1)
    """Amount of change allowed per period."""
    period_seconds: int = Field(ge=1, le=1800)
    """Length of the period the policy applies to."""


class ScaleUpRules(ApiModel):
    """How fast the pool grows (HorizontalPodAutoscaler scaleUp behaviour)."""

    stabilization_window_seconds: int = Field(default=0, ge=0, le=3600)
    """Look-back window: the pool grows only to the lowest recommendation in it."""
    select_policy: Literal["Max", "Min", "Disabled"] = "Max"
    """Which policy wins when several apply; Disabled never scales up."""
    policies: list[ScalingPolicy] = Field(
        default=[
            ScalingPolicy(type="Percent", value=100, period_seconds=15),
            ScalingPolicy(type="Pods", value=4, period_seconds=15),
        ],
        min_length=1,
        max_length=10,
    )
    """Limits on growth per period."""


class ScaleDownRules(ApiModel):
    """How fast the pool shrinks (HorizontalPodAutoscaler scaleDown behaviour). Slow by
    default: every removed pod drains its running tasks first."""

    stabilization_window_seconds: int = Field(default=300, ge=0, le=3600)
    """Look-back window: the pool shrinks only to the highest recommendation in it."""
    select_policy: Literal["Max", "Min", "Disabled"] = "Max"
    """Which policy wins when several apply; Disabled never scales down."""
    policies: list[ScalingPolicy] = Field(
        default=[ScalingPolicy(type="Pods", value=1, period_seconds=60)],
        min_length=1,
        max_length=10,
    )
    """Limits on shrinking per period."""


class AutoscalingSpec(ApiModel):
    """Queue-driven autoscaling between minReplicas and maxReplicas."""

    enabled: bool = False
    """Let the operator's autoscaler set spec.replicas from the queue backlog; when false,
    spec.replicas is set by hand or with kubectl scale."""
    provider: Literal["builtin", "keda"] = "builtin"
    """Who reads the backlog. builtin: a HorizontalPodAutoscaler on the External metric
    agentpool_queue_backlog (waiting + in-flight tasks), served by the AgentPool metrics API
    server the chart installs. keda: a KEDA ScaledObject with a redis-streams trigger, for
    clusters whose external metrics API already belongs to KEDA; while KEDA's CRDs are not
    installed the pool falls back to builtin."""
    target_backlog_per_worker: int = Field(default=1, ge=1, le=10_000)
    """Queued plus running tasks the autoscaler aims for per worker process: the pool is
    sized to backlog / (targetBacklogPerWorker x workers.perPod) pods."""
    scale_up: ScaleUpRules = section(ScaleUpRules)
    """Scale-up behaviour."""
    scale_down: ScaleDownRules = section(ScaleDownRules)
    """Scale-down behaviour."""
