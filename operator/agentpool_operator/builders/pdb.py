"""The PodDisruptionBudget `<pool>`: voluntary evictions (node drains) take one pod at a time.

Every evicted pod drains its running tasks first, so evicting one at a time keeps most of the
pool's capacity during cluster maintenance.
"""

from __future__ import annotations

from agentpool_operator.builders.common import Manifest, label_selector, object_meta
from agentpool_operator.builders.context import PoolContext


def build_pdb(ctx: PoolContext) -> Manifest:
    """The `<pool>` PodDisruptionBudget."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(ctx, ctx.name),
        "spec": {
            "maxUnavailable": 1,
            "selector": label_selector(ctx.name),
            # A crash-looping pod does no work: it must not block a node drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
