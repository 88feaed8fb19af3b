"""The Events a reconcile posts on its AgentPool, as (type, reason, message) (pure).

Applied children are reported in one Event per reason and reconcile ("created ConfigMap
p-config, Service p, ..."), not one per child: the same information for a fraction of the
writes when many pools are created at once. Messages name fields, never values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentpool_operator.api import ConditionType

Announcement = tuple[str, str, str]
"""(Event type, reason, message)"""


@dataclass(frozen=True)
class Applied:
    kind: str
    name: str
    changed: list[str] = field(default_factory=list)
    """Paths that differed from the live object; empty when the child was created."""


def applied(children: Sequence[Applied]) -> list[Announcement]:
    created = [f"{c.kind} {c.name}" for c in children if not c.changed]
    updated = [f"{c.kind} {c.name} ({', '.join(c.changed[:5])})" for c in children if c.changed]
    found: list[Announcement] = []
    if created:
        found.append(("Normal", "Created", "created " + ", ".join(created)))
    if updated:
        found.append(("Normal", "Updated", "updated " + "; ".join(updated)))
    return found


def flips(current: dict[str, Any], desired: dict[str, Any]) -> list[Announcement]:
    """Events for conditions whose status flipped: Degraded turning True, Ready either way
    (but not a new pool's first Ready=False)."""
    before = {c["type"]: c for c in current.get("conditions") or []}
    found: list[Announcement] = []
    for condition in desired["conditions"]:
        old = before.get(condition["type"])
        if old is not None and old["status"] == condition["status"]:
            continue
        if condition["type"] == ConditionType.DEGRADED and condition["status"] == "True":
            found.append(("Warning", condition["reason"], condition["message"]))
        elif condition["type"] == ConditionType.READY and (old is not None or
                                                            condition["status"] == "True"):
            kind = "Normal" if condition["status"] == "True" else "Warning"
            found.append((kind, condition["reason"], condition["message"]))
    return found
