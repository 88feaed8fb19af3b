"""The one registry of an AgentPool's child kinds (pure data).

Everything that needs to know which children a pool has reads it from here: `build_children`
(the `Children` record and the apply order), the watches (`watches.py`), pruning and
re-creation (`apply.py`), the CRDs the resync checks for, the client's resource table
(`k8s.py`) and the test that holds the chart's RBAC to exactly these kinds. Adding a child is
adding an entry (and its builder).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agentpool_operator.builders.common import Manifest, config_map_name, secret_name
from agentpool_operator.builders.config import build_config_map
from agentpool_operator.builders.context import PoolContext
from agentpool_operator.builders.deployment import build_deployment
from agentpool_operator.builders.hpa import build_hpa
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

POD_MONITOR_CRD = "podmonitors.monitoring.coreos.com"
KEDA_CRD = "scaledobjects.keda.sh"


def _pool_name(pool: str) -> str:
    return pool


@dataclass(frozen=True, kw_only=True)
class ChildKind:
    """One child of every pool (or of the pools whose spec asks for it)."""

    field: str
    """Its attribute of `builders.Children`."""
    api_version: str
    kind: str
    plural: str
    name: Callable[[str], str]
    """The child's name, from the pool's name."""
    build: Callable[[PoolContext], Manifest | None]
    optional: bool = False
    """Only some specs have it (the builder may return None): pruned once no longer wanted."""
    recreatable: bool = False
    """Deleted and made anew when another manager's edit makes our apply invalid (apply
    cannot remove fields it does not own). Never the Deployment: that would take every pod
    down at once; a ConfigMap or Service so refused is reported instead."""
    crd: str | None = None
    """The CRD that must be served for this kind to exist (watched, built, pruned)."""

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


CHILD_KINDS: tuple[ChildKind, ...] = (
    # Apply order: what the pods mount and what selects them before the Deployment; what only
    # observes the running pool after it.
    ChildKind(field="config_map", api_version="v1", kind="ConfigMap", plural="configmaps",
              name=config_map_name, build=build_config_map),
    ChildKind(field="secret", api_version="v1", kind="Secret", plural="secrets",
              name=secret_name, build=build_secret, optional=True, recreatable=True),
    ChildKind(field="service", api_version="v1", kind="Service", plural="services",
              name=_pool_name, build=build_service),
    ChildKind(field="pdb", api_version="policy/v1", kind="PodDisruptionBudget",
              plural="poddisruptionbudgets", name=_pool_name, build=build_pdb,
              recreatable=True),
    ChildKind(field="deployment", api_version="apps/v1", kind="Deployment",
              plural="deployments", name=_pool_name, build=build_deployment),
    ChildKind(field="hpa", api_version="autoscaling/v2", kind="HorizontalPodAutoscaler",
              plural="horizontalpodautoscalers", name=_pool_name, build=build_hpa,
              optional=True, recreatable=True),
    ChildKind(field="keda_secret", api_version="v1", kind="Secret", plural="secrets",
              name=keda_name, build=build_keda_secret, optional=True, recreatable=True,
              crd=KEDA_CRD),
    ChildKind(field="trigger_authentication", api_version="keda.sh/v1alpha1",
              kind="TriggerAuthentication", plural="triggerauthentications", name=keda_name,
              build=build_trigger_authentication, optional=True, recreatable=True,
              crd=KEDA_CRD),
    ChildKind(field="scaled_object", api_version="keda.sh/v1alpha1", kind="ScaledObject",
              plural="scaledobjects", name=_pool_name, build=build_scaled_object,
              optional=True, recreatable=True, crd=KEDA_CRD),
    ChildKind(field="pod_monitor", api_version="monitoring.coreos.com/v1", kind="PodMonitor",
              plural="podmonitors", name=_pool_name, build=build_pod_monitor, optional=True,
              recreatable=True, crd=POD_MONITOR_CRD),
)

DEPLOYMENT = ("apps/v1", "Deployment")
"""Watched on its own: its events refresh the pool's status (it carries the pods' state)."""

WATCHED_KINDS: tuple[tuple[str, str, str], ...] = tuple(dict.fromkeys(
    (child.api_version, child.kind, child.plural) for child in CHILD_KINDS
    if (child.api_version, child.kind) != DEPLOYMENT))
"""(api version, kind, plural) of the children watched by label besides the Deployment; the
CRD-backed ones while their CRDs exist."""

RECREATABLE_KINDS = frozenset((c.api_version, c.kind) for c in CHILD_KINDS if c.recreatable)

CHILD_CRDS = tuple(dict.fromkeys(c.crd for c in CHILD_KINDS if c.crd is not None))
"""CRDs some children need; the resync checks which the cluster serves."""


def crd_of(api_version: str, kind: str) -> str | None:
    """The CRD a watched kind needs to exist, None when it always does (a Secret is watched
    for every pool, though KEDA's Secret needs KEDA's CRD)."""
    crds = {c.crd for c in CHILD_KINDS if (c.api_version, c.kind) == (api_version, kind)}
    return None if None in crds else min(c for c in crds if c is not None)
