"""What a pool's last full reconcile established, and whether it still holds (pure).

A rolling-out Deployment updates its status several times per pod. Each update only changes
what the pool's status reports, so when the pool and the Deployment we applied are still the
versions the last full reconcile saw, the status is refreshed from the watched bodies without
reading secrets or children again. Anything else (a spec change, an edited Deployment, the
periodic resync) gets a full reconcile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentpool_operator.drift import contains


@dataclass(frozen=True)
class Verified:
    uid: str
    generation: int
    """The pool's metadata.generation its children were built for."""
    min_replicas: int
    spec_replicas: int
    deployment_generation: int
    """The Deployment's metadata.generation when it was found or made to match."""
    deployment_metadata: dict[str, Any]
    """The metadata we apply to the Deployment (labels, annotations with the applied hash,
    ownerReferences): an edit of any of it voids the verification."""


def _generation(obj: dict[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)


def still_holds(verified: Verified, pool: dict[str, Any], deployment: dict[str, Any]) -> bool:
    """Whether only the Deployment's status can have changed since `verified` was taken."""
    meta = pool.get("metadata") or {}
    if meta.get("deletionTimestamp") or meta.get("uid") != verified.uid:
        return False
    if _generation(pool) != verified.generation:
        return False
    # A spec edit of the Deployment bumps its generation; a metadata edit shows here.
    deployment_meta = deployment.get("metadata") or {}
    return (not deployment_meta.get("deletionTimestamp")
            and _generation(deployment) == verified.deployment_generation
            and contains(deployment_meta, verified.deployment_metadata))
