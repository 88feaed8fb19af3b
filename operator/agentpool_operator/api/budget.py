"""The AgentBudget API: fleet-wide limits of external API keys, shared by the pools that
reference the budget (issue 19).

An AgentBudget names one or more keys (a provider account, model or endpoint: whatever one
rate limit applies to), each with its limits and, optionally, the Secret holding its API key.
Every pod of every pool that references the budget counts against the same limits, in Redis
(`agent_runtime.sdk.budget`). A budget serves the pools of its own namespace and those of the
namespaces its owner lists in `sharedWith`: the budget's owner grants, like Gateway API's
ReferenceGrant, so a team cannot spend another team's budget by naming it.

Pure, like the rest of `api/`: `agentpool_tools.crd` generates the CRD from these models; the
operator parses live objects with `AgentBudgetSpec.model_validate(obj["spec"])`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import (
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from agent_runtime import contract
from agentpool_operator.api.common import (
    DNS_SUBDOMAIN,
    ApiModel,
    LocalObjectReference,
    SecretKeyRef,
    cel,
    validations,
)
from agentpool_operator.api.conditions import REASON_PATTERN, Condition, rfc3339

BUDGET_KIND = "AgentBudget"
BUDGET_PLURAL = "agentbudgets"
BUDGET_SINGULAR = "agentbudget"
BUDGET_SHORT_NAMES = ("agb",)
BUDGET_CATEGORIES: tuple[str, ...] = ()
"""None: kubectl expands a category before it matches a resource name, so with AgentBudget
in AgentPool's category `agentpool`, `kubectl get agentpool NAME` would also look for an
AgentBudget NAME and fail where there is none."""
MAX_BUDGET_KEYS = 64
MAX_SHARED_NAMESPACES = 256
MAX_POOL_BUDGETS = 16
MAX_LISTED_POOLS = 256
LIMIT_FIELDS = ("requestsPerSecond", "requestsPerMinute", "tokensPerMinute",
                "concurrentRequests")
NamespaceName = Annotated[str, Field(min_length=1, max_length=contract.NAMESPACE_MAX_LENGTH,
                                     pattern=contract.NAMESPACE_PATTERN)]


class BudgetKey(ApiModel):
    """One external API key (a provider account, model or endpoint) and the limits every pod
    of every pool using the budget shares. At least one limit must be set."""

    model_config = ConfigDict(json_schema_extra=validations(cel(
        " || ".join(f"has(self.{name})" for name in LIMIT_FIELDS),
        "a budget key needs at least one limit: requestsPerSecond, requestsPerMinute, "
        "tokensPerMinute or concurrentRequests",
    )))

    name: str = Field(min_length=1, max_length=contract.BUDGET_KEY_NAME_MAX_LENGTH,
                      pattern=contract.BUDGET_KEY_NAME_PATTERN)
    """What handlers call the key (`ctx.budget("<name>")`): lowercase letters, digits and
    '-'. It also names the environment variable holding the key's API key
    (`AGENTPOOL_BUDGET_<NAME>_API_KEY`), so two budgets a pool uses must not both define it."""
    requests_per_second: int | None = Field(default=None, ge=1)
    """Requests per second across every pod of every pool using the budget."""
    requests_per_minute: int | None = Field(default=None, ge=1)
    """Requests per minute across every pod of every pool using the budget."""
    tokens_per_minute: int | None = Field(default=None, ge=1)
    """Tokens per minute (as the caller counts them: an estimate is reserved before a call
    and settled with the real count after it)."""
    concurrent_requests: int | None = Field(default=None, ge=1)
    """Requests in flight at once; a killed worker's permits come back after their lease."""
    secret_ref: SecretKeyRef | None = None
    """The Secret key holding the provider's API key, in the budget's namespace. Pools in
    the same namespace get it as an environment variable (a secretKeyRef: the operator never
    reads or copies it). Pools in other namespaces cannot mount it (Kubernetes mounts Secrets
    only within a namespace): they reference their own copy with `spec.budgets[].secretRef`."""

    @model_validator(mode="after")
    def _has_a_limit(self) -> BudgetKey:
        # Mirrors the CEL rule, for objects that did not come through the API server.
        if (self.requests_per_second is None and self.requests_per_minute is None
                and self.tokens_per_minute is None and self.concurrent_requests is None):
            raise ValueError(f"budget key {self.name!r} sets no limit: set at least one of "
                             + ", ".join(LIMIT_FIELDS))
        return self


class BudgetSharing(ApiModel):
    """The namespaces besides its own whose AgentPools may use this budget. The budget's
    owner grants the use, like Gateway API's ReferenceGrant: a pool naming a budget that is
    not shared with its namespace is Degraded (`BudgetNotShared`) and gets nothing."""

    namespaces: list[NamespaceName] | None = Field(
        default=None, max_length=MAX_SHARED_NAMESPACES,
        json_schema_extra={"x-kubernetes-list-type": "set"})
    """Names of the namespaces whose pools may use the budget (its own always may)."""


class AgentBudgetSpec(ApiModel):
    """Desired state of an AgentBudget: API keys and the limits all their users share."""

    keys: list[BudgetKey] = Field(
        min_length=1, max_length=MAX_BUDGET_KEYS,
        json_schema_extra={"x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["name"]})
    """The budget's keys, each with its limits and optionally its API key's Secret; names
    are unique within the budget."""
    shared_with: BudgetSharing | None = None
    """Namespaces besides the budget's own whose pools may use it; unset: its own only."""

    @field_validator("keys")
    @classmethod
    def _unique_names(cls, value: list[BudgetKey]) -> list[BudgetKey]:
        names = [key.name for key in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"key names must be unique in a budget: {duplicates}")
        return value

    def shared_with_namespace(self, namespace: str, own_namespace: str) -> bool:
        """Whether pools of `namespace` may use the budget (which lives in `own_namespace`)."""
        return namespace == own_namespace or namespace in (
            (self.shared_with.namespaces or ()) if self.shared_with else ())


class BudgetKeyStatus(ApiModel):
    """Whether one key of the budget is saturated. Written only when `saturated` flips (the
    operator looks every 30 s), so `reason` and `message` say why it last flipped."""

    name: str = Field(min_length=1, max_length=contract.BUDGET_KEY_NAME_MAX_LENGTH)
    """The key's name (`spec.keys[].name`)."""
    saturated: bool
    """True when its usage in the window is at 95 % or more of a limit, the provider asked to
    back off (429, a shared cool-down), or tasks are waiting for a permit."""
    since: dt.datetime
    """When `saturated` last flipped (or the key was first seen)."""
    reason: str = Field(min_length=1, max_length=128, pattern=REASON_PATTERN)
    """Why, in CamelCase: CoolDown, RequestsPerSecond, RequestsPerMinute, TokensPerMinute,
    ConcurrentRequests, TasksWaiting, or BelowLimits."""
    message: str = Field(max_length=1024)
    """The same, for humans (the limit that was reached, never a usage count that moves)."""

    @field_serializer("since")
    def _rfc3339(self, value: dt.datetime) -> str:
        return rfc3339(value)


class AgentBudgetStatus(ApiModel):
    """Observed state of an AgentBudget, written by the operator."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation the operator last acted on."""
    key_count: int | None = Field(default=None, ge=0)
    """How many keys the budget defines (the Keys printer column)."""
    pool_count: int | None = Field(default=None, ge=0)
    """How many AgentPools use the budget (they reference it and it is shared with them)."""
    pools: list[str] | None = Field(
        default=None, max_length=MAX_LISTED_POOLS,
        json_schema_extra={"x-kubernetes-list-type": "set"})
    """The pools using the budget, as `namespace/name`, sorted (the first 256)."""
    keys: list[BudgetKeyStatus] | None = Field(
        default=None, max_length=MAX_BUDGET_KEYS,
        json_schema_extra={"x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["name"]})
    """Saturation per key, read from the Redis of the pools using the budget (empty while no
    pool uses it)."""
    conditions: list[Condition] | None = Field(
        default=None, max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["type"]})
    """Ready: the operator has read this generation of the budget and serves it.
    Saturated: True while any key is saturated (`keys` says which), Unknown while the Redis
    holding the budget's usage cannot be read."""


class BudgetReference(ApiModel):
    """An AgentBudget the pool's handlers use."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of the AgentBudget."""
    namespace: NamespaceName | None = None
    """Namespace of the AgentBudget; unset: the pool's. A budget in another namespace must
    list the pool's namespace in its `sharedWith`."""
    secret_ref: LocalObjectReference | None = None
    """A Secret in the pool's namespace holding the pool's own copy of the budget's API
    keys, one data key per budget key name (e.g. `openai: sk-...`). Needed for a budget in
    another namespace: Kubernetes cannot mount a Secret across namespaces and the operator
    never copies Secrets. When set it is used instead of the budget's `secretRef`s; a budget
    key whose name the Secret lacks keeps the pod from starting."""


AGENTBUDGET_DESCRIPTION = (
    "AgentBudget holds fleet-wide limits of external API keys (requests per second and "
    "minute, tokens per minute, concurrent requests), shared through Redis by every pod of "
    "every AgentPool that references it; its owner shares it with other namespaces' pools "
    "through sharedWith."
)
