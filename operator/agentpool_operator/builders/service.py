"""The headless Service `<pool>`: a stable DNS name and endpoints for the workers' metrics.

Workers take their tasks from the queue, so nothing sends them requests; the Service only
lists the pods (for scrape configs that discover endpoints) and is headless so no virtual
IP is allocated for it.
"""

from __future__ import annotations

from typing import Any

from agentpool_operator.builders.common import (
    METRICS_PORT_NAME,
    Manifest,
    object_meta,
    selector_labels,
)
from agentpool_operator.builders.context import PoolContext


def build_service(ctx: PoolContext) -> Manifest:
    """The `<pool>` Service (its one port also serves PgBouncer's metrics, when on)."""
    ports: list[dict[str, Any]] = [
        # protocol is part of the ports list's merge key: sent explicitly for apply.
        {
            "name": METRICS_PORT_NAME,
            "port": ctx.spec.monitoring.metrics_port,
            "targetPort": METRICS_PORT_NAME,
            "protocol": "TCP",
        }
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(ctx, ctx.name),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(ctx.name),
            "ports": ports,
            # Pods still warming up or draining have no meaningful metrics endpoint yet.
            "publishNotReadyAddresses": False,
        },
    }
