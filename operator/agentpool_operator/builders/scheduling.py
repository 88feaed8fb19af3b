"""Where and as whom the worker pods run: scheduling overrides and the pod securityContext.

Called by `deployment.py`. Copies `spec.pod`'s scheduling fields into the pod spec, adding the
pool's own selector where a field selects the pool's pods, and a default spread across nodes
so one node failure does not take the whole pool down.
"""

from __future__ import annotations

import copy
from typing import Any

from agentpool_operator.builders.common import label_selector
from agentpool_operator.builders.context import PoolContext

HOSTNAME_TOPOLOGY_KEY = "kubernetes.io/hostname"


def pod_security_context(uid: int) -> dict[str, Any]:
    """Non-root with a fixed uid/gid; fsGroup makes mounted credentials group-readable."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def topology_spread(ctx: PoolContext) -> list[dict[str, Any]]:
    """The user's constraints (counting this pool's pods unless they chose a selector), or
    a soft spread across nodes."""
    constraints = ctx.spec.pod.topology_spread_constraints
    if not constraints:
        return [
            {
                "maxSkew": 1,
                "topologyKey": HOSTNAME_TOPOLOGY_KEY,
                # Soft: a small cluster must still be able to run the whole pool.
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": label_selector(ctx.name),
            }
        ]
    spread = []
    for constraint in constraints:
        item = constraint.to_json()
        item.setdefault("labelSelector", label_selector(ctx.name))
        spread.append(item)
    return spread


def scheduling(ctx: PoolContext) -> dict[str, Any]:
    """The pod spec's scheduling fields; unset overrides are left out."""
    pod = ctx.spec.pod
    fields: dict[str, Any] = {}
    if pod.node_selector:
        fields["nodeSelector"] = dict(pod.node_selector)
    if pod.tolerations:
        fields["tolerations"] = [toleration.to_json() for toleration in pod.tolerations]
    if pod.affinity:
        fields["affinity"] = copy.deepcopy(pod.affinity)  # free-form: not ours to share
    if pod.priority_class_name is not None:
        fields["priorityClassName"] = pod.priority_class_name
    fields["topologySpreadConstraints"] = topology_spread(ctx)
    if pod.image_pull_secrets:
        fields["imagePullSecrets"] = [ref.to_json() for ref in pod.image_pull_secrets]
    return fields
