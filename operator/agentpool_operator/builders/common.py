"""Names, labels, selectors and owner references shared by every child builder.

Pure helpers called by the builders in this package (and by the reconciler, which needs the
same names to observe and prune children and the serialized selector for
`status.selector`). Keeping them in one place is what makes the children, the scale
subresource and the PodMonitor agree on which pods belong to a pool.
"""

from __future__ import annotations

from typing import Any

from agentpool_operator.api import API_VERSION, KIND, AgentPoolSpec

# The API's label keys, re-exported for the builders.
from agentpool_operator.api.labels import COMPONENT_LABEL as COMPONENT_LABEL
from agentpool_operator.api.labels import CONFIG_HASH_ANNOTATION as CONFIG_HASH_ANNOTATION
from agentpool_operator.api.labels import INSTANCE_LABEL as INSTANCE_LABEL
from agentpool_operator.api.labels import MANAGED_BY_LABEL as MANAGED_BY_LABEL
from agentpool_operator.api.labels import NAME_LABEL as NAME_LABEL
from agentpool_operator.api.labels import PART_OF_LABEL as PART_OF_LABEL
from agentpool_operator.api.labels import POOL_LABEL as POOL_LABEL
from agentpool_operator.builders.context import PoolContext

Manifest = dict[str, Any]
"""A plain Kubernetes object, ready for server-side apply."""

FIELD_MANAGER = "agentpool-operator"
"""The server-side apply field manager the reconciler uses for every child."""


APP_NAME = "agentpool"
WORKER_COMPONENT = "worker"

METRICS_PORT_NAME = "metrics"


def pgbouncer_exporter_enabled(spec: AgentPoolSpec) -> bool:
    """Whether the pods export PgBouncer's metrics: asked for, and PgBouncer exists.

    The runtime's environment (the stats URL), the derived Secret (stats user) and
    PgBouncer's ini (stats_users) all follow this one decision."""
    return spec.database is not None and spec.monitoring.pgbouncer_exporter.enabled


def config_map_name(pool: str) -> str:
    """The ConfigMap holding the runtime config file and PgBouncer's ini."""
    return f"{pool}-config"


def secret_name(pool: str) -> str:
    """The derived Secret holding PgBouncer's credentials and the runtime's database URL."""
    return f"{pool}-pgbouncer"


def selector_labels(pool: str) -> dict[str, str]:
    """The labels that select a pool's pods (Deployment, Service, PDB, PodMonitor).

    Deliberately minimal and fixed: a Deployment's selector is immutable, so it must never
    grow a label that could later change.
    """
    return {NAME_LABEL: APP_NAME, INSTANCE_LABEL: pool}


def selector_string(pool: str) -> str:
    """`selector_labels` serialized for `status.selector` (the scale subresource's selector)."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(pool).items()))


def common_labels(pool: str) -> dict[str, str]:
    """Labels on every child object of a pool."""
    return {
        **selector_labels(pool),
        MANAGED_BY_LABEL: "agentpool-operator",
        PART_OF_LABEL: APP_NAME,
        POOL_LABEL: pool,
    }


def worker_labels(pool: str) -> dict[str, str]:
    """Labels on the Deployment and its pods: the common ones plus the component."""
    return {**common_labels(pool), COMPONENT_LABEL: WORKER_COMPONENT}


def owner_reference(ctx: PoolContext) -> dict[str, Any]:
    """The controller owner reference to the AgentPool: garbage collection deletes the
    children with the pool, and the reconciler recognises its own objects by it."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": ctx.name,
        "uid": ctx.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(
    ctx: PoolContext, name: str, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """`metadata` of a child: name, namespace, labels (common ones by default), owner."""
    return {
        "name": name,
        "namespace": ctx.namespace,
        "labels": dict(common_labels(ctx.name) if labels is None else labels),
        "ownerReferences": [owner_reference(ctx)],
    }


def label_selector(pool: str) -> dict[str, Any]:
    """A `LabelSelector` object matching the pool's pods."""
    return {"matchLabels": selector_labels(pool)}


def container_security_context() -> dict[str, Any]:
    """The hardened securityContext of every container we run: no privilege escalation, no
    capabilities, nothing writable but the mounted emptyDir (restricted Pod Security level)."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
