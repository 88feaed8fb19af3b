"""The PodMonitor `<pool>` (monitoring.coreos.com/v1): tells a Prometheus Operator to scrape
the workers' metrics endpoint (which, with a database, also serves PgBouncer's). Built only when
the user asks for it and the cluster serves the PodMonitor API (the reconciler detects that
into `PoolContext.pod_monitor_api`).
"""

from __future__ import annotations

from typing import Any

from agentpool_operator.builders.common import (
    METRICS_PORT_NAME,
    POOL_LABEL,
    Manifest,
    label_selector,
    object_meta,
)
from agentpool_operator.builders.context import PoolContext

SCRAPE_INTERVAL = "15s"
# The dashboards and alerts name a pool by (namespace, agentpool), as the chart's PodMonitor
# does: the pod label `agentpool.dev/pool` becomes the `agentpool` label of every series.
_POOL_SOURCE_LABEL = "__meta_kubernetes_pod_label_" + POOL_LABEL.replace(".", "_").replace(
    "/", "_"
)


def _endpoint(port: str) -> dict[str, Any]:
    return {
        "port": port,
        "path": "/metrics",
        "interval": SCRAPE_INTERVAL,
        "relabelings": [
            {"sourceLabels": [_POOL_SOURCE_LABEL], "targetLabel": "agentpool",
             "action": "replace"}
        ],
    }


def build_pod_monitor(ctx: PoolContext) -> Manifest | None:
    """The `<pool>` PodMonitor, or None when not requested, metrics are off or the API is
    missing."""
    monitoring = ctx.spec.monitoring
    if not (monitoring.pod_monitor and monitoring.metrics and ctx.pod_monitor_api):
        return None
    endpoints = [_endpoint(METRICS_PORT_NAME)]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": object_meta(ctx, ctx.name),
        "spec": {"selector": label_selector(ctx.name), "podMetricsEndpoints": endpoints},
    }
