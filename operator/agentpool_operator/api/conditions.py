"""Status conditions in the `metav1.Condition` shape, and the pure helpers that update them.

The operator reports an AgentPool's state through three condition types (defined below with
what they mean). `set_condition` reproduces `meta.SetStatusCondition` from apimachinery: the
`lastTransitionTime` only moves when `status` flips. That matters beyond correctness of the
timestamp: if every reconcile produced a new timestamp, every reconcile would write status,
and each status write would trigger another watch event and another reconcile.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from enum import StrEnum
from typing import Literal

from pydantic import Field, field_serializer

from agentpool_operator.api.common import ApiModel

# Patterns and limits from k8s.io/apimachinery/pkg/apis/meta/v1 Condition.
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

ConditionStatus = Literal["True", "False", "Unknown"]


class ConditionType(StrEnum):
    """The condition types an AgentPool reports."""

    READY = "Ready"
    """True when the pool has its desired pods ready and can take tasks: the summary condition."""
    PROGRESSING = "Progressing"
    """True while the pool is rolling out a change or scaling towards `spec.replicas`."""
    DEGRADED = "Degraded"
    """True when something needs a human: crash-looping pods, unreachable queue or database."""
    SATURATED = "Saturated"
    """AgentBudget: True while any of its keys is saturated (at ~95 % of a limit, cooling down
    after a 429, or with tasks waiting for a permit); Unknown when its Redis cannot be read."""


class Reason(StrEnum):
    """Reasons shared by all condition types (operator code may add more, in CamelCase)."""

    RECONCILING = "Reconciling"
    """The operator has seen this generation and has not finished acting on it."""
    INVALID_SPEC = "InvalidSpec"
    """The spec passed the API server but the operator cannot act on it (message says why)."""
    AS_EXPECTED = "AsExpected"
    """Nothing to report: the observed state matches the spec."""
    MIN_AVAILABLE = "MinimumReplicasAvailable"
    """Ready: at least minReplicas pods are available."""
    MIN_UNAVAILABLE = "MinimumReplicasUnavailable"
    """Ready is False: fewer than minReplicas pods are available."""
    ROLLING_OUT = "RollingOut"
    """Progressing: a new pod template is not fully rolled out yet."""
    SCALING = "Scaling"
    """Progressing: the pod count is moving towards spec.replicas."""
    COMPLETE = "Complete"
    """Progressing is False: nothing in flight."""
    SECRET_MISSING = "SecretMissing"
    """Degraded: a referenced Secret or key does not exist (retried every 10 s)."""
    INVALID_DATABASE_DSN = "InvalidDatabaseDSN"
    """Degraded: the database Secret's DSN cannot be carried out by PgBouncer."""
    CRASH_LOOPING = "CrashLooping"
    """Degraded: a container of the pool is in CrashLoopBackOff."""
    APPLY_FAILED = "ApplyFailed"
    """Degraded: the API server refused a child (the message has its answer)."""
    POD_CREATION_FAILED = "PodCreationFailed"
    """Degraded: the Deployment controller cannot create pods (quota, ServiceAccount...)."""
    ROLLOUT_STUCK = "RolloutStuck"
    """Degraded: the rollout passed its progress deadline."""
    CHILD_CONFLICT = "ChildConflict"
    """Degraded: an object with a child's name exists and is not this pool's."""
    QUEUE_CONFLICT = "QueueConflict"
    """Degraded: another pool, created earlier, reads the same stream and group."""
    BUDGET_NOT_FOUND = "BudgetNotFound"
    """Degraded: a referenced AgentBudget does not exist (or the operator may not read it)."""
    BUDGET_NOT_SHARED = "BudgetNotShared"
    """Degraded: a referenced AgentBudget in another namespace is not shared with the pool's."""
    BUDGET_KEY_CONFLICT = "BudgetKeyConflict"
    """Degraded: two referenced AgentBudgets define the same key name."""
    BUDGET_SPLIT = "BudgetSplit"
    """AgentBudget not Ready: the pools using it queue on different Redis servers, where the
    budget's state lives, so each server would grant the whole limit."""
    KEYS_SATURATED = "KeysSaturated"
    """AgentBudget Saturated: at least one key is saturated (`status.keys` says which, why)."""
    BELOW_LIMITS = "BelowLimits"
    """AgentBudget Saturated is False (or a key is not saturated): below its limits."""
    NOT_USED = "NotUsed"
    """AgentBudget Saturated is False: no pool uses the budget, so nothing counts against it."""
    USAGE_PENDING = "UsagePending"
    """AgentBudget Saturated is Unknown: the queues of the pools using it are not known yet."""
    REDIS_UNREACHABLE = "RedisUnreachable"
    """AgentBudget Saturated is Unknown: the Redis holding the budget's usage cannot be read."""


class Condition(ApiModel):
    """One aspect of the AgentPool's current state (metav1.Condition)."""

    type: str = Field(max_length=316, pattern=CONDITION_TYPE_PATTERN)
    """Type of condition in CamelCase: Ready, Progressing or Degraded."""
    status: ConditionStatus
    """Status of the condition: True, False or Unknown."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The `.metadata.generation` the condition was set from; older means out of date."""
    last_transition_time: dt.datetime
    """When the condition last changed from one status to another."""
    reason: str = Field(min_length=1, max_length=1024, pattern=REASON_PATTERN)
    """A programmatic identifier in CamelCase for the condition's last transition."""
    message: str = Field(max_length=32768)
    """A human-readable message with details about the transition (may be empty)."""

    @field_serializer("last_transition_time")
    def _rfc3339(self, value: dt.datetime) -> str:
        # metav1.Time has second precision; writing more would look like a change every time.
        return rfc3339(value)


def rfc3339(value: dt.datetime) -> str:
    """A timestamp as Kubernetes writes it: UTC, whole seconds, `Z` suffix."""
    if value.tzinfo is None:
        raise ValueError("condition timestamps must be timezone-aware")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    """The condition of the given type, or None (which means Unknown)."""
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: Sequence[Condition], new: Condition
) -> tuple[list[Condition], bool]:
    """Return the conditions with `new` applied, and whether anything changed.

    Semantics of apimachinery's `meta.SetStatusCondition`: an absent type is appended as is;
    for an existing type, `status`, `reason`, `message` and `observedGeneration` are updated,
    and `lastTransitionTime` is taken from `new` only when `status` changes. Order is kept.
    """
    result: list[Condition] = []
    changed = False
    found = False
    for old in conditions:
        if old.type != new.type:
            result.append(old)
            continue
        found = True
        updated = new
        if old.status == new.status:
            updated = new.model_copy(update={"last_transition_time": old.last_transition_time})
        changed = changed or not _same(old, updated)
        result.append(updated)
    if not found:
        result.append(new)
        changed = True
    return result, changed


def remove_condition(
    conditions: Sequence[Condition], type_: str
) -> tuple[list[Condition], bool]:
    """Return the conditions without the given type, and whether it was present."""
    kept = [c for c in conditions if c.type != type_]
    return kept, len(kept) != len(conditions)


def _same(a: Condition, b: Condition) -> bool:
    # Compare as serialized, so sub-second timestamp differences don't count as changes.
    return a.to_json() == b.to_json()
