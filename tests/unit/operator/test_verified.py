"""When a Deployment update only needs a status refresh, and when it needs a full reconcile."""

from __future__ import annotations

import copy
from typing import Any

from agentpool_operator.verified import Verified, still_holds

OURS: dict[str, Any] = {
    "labels": {"app": "p"}, "annotations": {"agentpool.dev/applied-hash": "abc"},
    "ownerReferences": [{"kind": "AgentPool", "name": "p", "uid": "u1"}]}
VERIFIED = Verified(uid="u1", generation=3, min_replicas=1, spec_replicas=2,
                    deployment_generation=1, deployment_metadata=OURS)


def pool(**meta: Any) -> dict[str, Any]:
    return {"metadata": {"uid": "u1", "generation": 3, **meta}}


def deployment(**meta: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = copy.deepcopy(OURS)
    metadata["annotations"]["deployment.kubernetes.io/revision"] = "1"  # not ours: ignored
    metadata.update({"generation": 1, **meta})
    return {"metadata": metadata, "status": {"availableReplicas": 1}}


def test_a_status_update_of_the_verified_deployment_holds() -> None:
    assert still_holds(VERIFIED, pool(), deployment())


def test_a_spec_change_of_the_pool_or_a_new_pool_does_not_hold() -> None:
    assert not still_holds(VERIFIED, pool(generation=4), deployment())
    assert not still_holds(VERIFIED, pool(uid="u2"), deployment())
    assert not still_holds(VERIFIED, pool(deletionTimestamp="2024-01-01T00:00:00Z"),
                           deployment())


def test_an_edited_or_deleting_deployment_does_not_hold() -> None:
    assert not still_holds(VERIFIED, pool(), deployment(generation=2))
    assert not still_holds(VERIFIED, pool(), deployment(labels={}))
    assert not still_holds(VERIFIED, pool(), deployment(
        annotations={"agentpool.dev/applied-hash": "other"}))
    assert not still_holds(VERIFIED, pool(), deployment(deletionTimestamp="2024-01-01T00:00:00Z"))
