"""Pure builders of an AgentPool's child objects: `PoolContext` in, manifests out.

Called by the reconciler, which applies every manifest with server-side apply (field manager
`agentpool-operator`, force) and deletes optional children that come back as None. Nothing
in this package does I/O, reads the clock or the environment, or imports kopf or lightkube.

`kinds` is the registry of child kinds everything else derives from. One module per child:
`config` (ConfigMap), `secret` (derived PgBouncer Secret, with the DSN
parser), `deployment` (+ `pgbouncer` sidecar, `scheduling`), `service`, `pdb`, `hpa`,
`scaledobject` (KEDA instead of the HPA), `podmonitor`; `common` holds names, labels and
owner references, `confighash` the pod template's config hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from agentpool_operator.builders.common import (
    CONFIG_HASH_ANNOTATION,
    FIELD_MANAGER,
    Manifest,
    common_labels,
    config_map_name,
    owner_reference,
    secret_name,
    selector_labels,
    selector_string,
    worker_labels,
)
from agentpool_operator.builders.config import build_config_map, runtime_config
from agentpool_operator.builders.confighash import config_hash
from agentpool_operator.builders.context import PoolContext, SecretValues
from agentpool_operator.builders.deployment import build_deployment
from agentpool_operator.builders.dsn import (
    DatabaseDsn,
    DsnOptions,
    InvalidDatabaseDsn,
    parse_database_dsn,
)
from agentpool_operator.builders.hpa import QUEUE_BACKLOG_METRIC, build_hpa
from agentpool_operator.builders.kinds import CHILD_KINDS, ChildKind
from agentpool_operator.builders.pdb import build_pdb
from agentpool_operator.builders.podmonitor import build_pod_monitor
from agentpool_operator.builders.scaledobject import (
    build_keda_secret,
    build_scaled_object,
    build_trigger_authentication,
    keda_name,
)
from agentpool_operator.builders.secret import build_secret
from agentpool_operator.builders.service import build_service


@dataclass(frozen=True)
class Children:
    """The desired child objects of one AgentPool.

    `secret` is None without a database (there is no credential to hold); `hpa` without
    autoscaling; `pod_monitor` unless requested and served by the cluster. The reconciler
    deletes an existing child whose desired manifest is None.
    """

    config_map: Manifest
    secret: Manifest | None
    deployment: Manifest
    service: Manifest
    pdb: Manifest
    hpa: Manifest | None
    pod_monitor: Manifest | None
    keda_secret: Manifest | None = None
    trigger_authentication: Manifest | None = None
    scaled_object: Manifest | None = None
    """The KEDA trio, instead of `hpa`, with `autoscaling.provider: keda` and KEDA installed."""

    @property
    def manifests(self) -> tuple[Manifest, ...]:
        """The non-None manifests in apply order (`kinds.CHILD_KINDS`' order)."""
        found = (getattr(self, child.field) for child in CHILD_KINDS)
        return tuple(manifest for manifest in found if manifest is not None)


def build_children(ctx: PoolContext) -> Children:
    """Every child of the pool, one builder per entry of `kinds.CHILD_KINDS`. Raises
    `InvalidDatabaseDsn` for an unusable database DSN."""
    built = {child.field: child.build(ctx) for child in CHILD_KINDS}
    missing = [c.field for c in CHILD_KINDS if not c.optional and built[c.field] is None]
    if missing:  # a builder bug: reported by the plan step as such
        raise ValueError(f"no manifest built for the required children {missing}")
    return Children(**cast(dict[str, Any], built))


__all__ = [
    "CHILD_KINDS",
    "CONFIG_HASH_ANNOTATION",
    "FIELD_MANAGER",
    "QUEUE_BACKLOG_METRIC",
    "ChildKind",
    "Children",
    "DatabaseDsn",
    "DsnOptions",
    "InvalidDatabaseDsn",
    "Manifest",
    "PoolContext",
    "SecretValues",
    "build_children",
    "build_config_map",
    "build_deployment",
    "build_hpa",
    "build_keda_secret",
    "build_pdb",
    "build_pod_monitor",
    "build_scaled_object",
    "build_secret",
    "build_service",
    "build_trigger_authentication",
    "common_labels",
    "config_hash",
    "config_map_name",
    "keda_name",
    "owner_reference",
    "parse_database_dsn",
    "runtime_config",
    "secret_name",
    "selector_labels",
    "selector_string",
    "worker_labels",
]
