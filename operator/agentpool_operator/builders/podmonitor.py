"""The PodMonitor `<pool>` (monitoring.coreos.com/v1): tells a Prometheus Operator to scrape
the workers' metrics endpoint. Built only when the user asks for it and the cluster serves
the PodMonitor API (the reconciler detects that into `PoolContext.pod_monitor_api`).
"""

from __future__ import annotations

from agentpool_operator.builders.common import (
    METRICS_PORT_NAME,
    Manifest,
    label_selector,
    object_meta,
)
from agentpool_operator.builders.context import PoolContext

SCRAPE_INTERVAL = "15s"


def build_pod_monitor(ctx: PoolContext) -> Manifest | None:
    """The `<pool>` PodMonitor, or None when not requested, metrics are off or the API is
    missing."""
    monitoring = ctx.spec.monitoring
    if not (monitoring.pod_monitor and monitoring.metrics and ctx.pod_monitor_api):
        return None
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": object_meta(ctx, ctx.name),
        "spec": {
            "selector": label_selector(ctx.name),
            "podMetricsEndpoints": [
                {"port": METRICS_PORT_NAME, "path": "/metrics", "interval": SCRAPE_INTERVAL}
            ],
        },
    }
