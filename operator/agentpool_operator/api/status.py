"""The AgentPool status: what the operator observed, as written to the status subresource.

`replicas` and `selector` are the scale subresource's status paths (an HPA needs the
selector); the printer columns read `availableReplicas`, `queueBacklog` and the Ready
condition. The operator builds it with `AgentPoolStatus(...).to_json()`; conditions are
updated with `conditions.set_condition`.
"""

from __future__ import annotations

from pydantic import Field

from agentpool_operator.api.common import ApiModel
from agentpool_operator.api.conditions import Condition


class AgentPoolStatus(ApiModel):
    """Observed state of an AgentPool, written by the operator."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation the operator last acted on."""
    replicas: int | None = Field(default=None, ge=0)
    """Pods that exist (the scale subresource's status replicas)."""
    ready_replicas: int | None = Field(default=None, ge=0)
    """Pods whose workers are ready to take tasks."""
    available_replicas: int | None = Field(default=None, ge=0)
    """Pods that have been ready for the minimum ready time."""
    selector: str | None = None
    """Label selector of the pool's pods, serialized (e.g. `app.kubernetes.io/instance=x`):
    the scale subresource's selector, which a HorizontalPodAutoscaler needs."""
    queue_backlog: int | None = Field(default=None, ge=0)
    """Tasks queued or running on the pool's stream at the last observation."""
    conditions: list[Condition] | None = Field(
        default=None,
        max_length=32,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    """Current state: Ready (summary), Progressing (rolling out or scaling) and Degraded."""
