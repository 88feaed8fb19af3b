"""A pool's AgentBudgets (pure): which budgets it references, whether it may use them, and the
keys they give its runtime; which pools use a budget (its status).

Called by `reconcile.py` (the budgets come from the watch's store, or a GET) and by
`budget_status.py`. A budget serves the pools of its own namespace and of the namespaces its
owner lists in `spec.sharedWith.namespaces` (the owner grants, like Gateway API's
ReferenceGrant). API keys reach the pods only by `secretKeyRef` to a Secret in the pool's
namespace: the budget's own Secret for a budget in the pool's namespace, else the pool's copy
(`spec.budgets[].secretRef`); Kubernetes cannot mount a Secret across namespaces, and the
operator never reads or copies one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agent_runtime.contract import BudgetKeyConfig
from agentpool_operator.api import (
    AgentBudgetSpec,
    AgentBudgetStatus,
    AgentPoolSpec,
    BudgetReference,
    Condition,
    ConditionType,
    Reason,
    set_condition,
)
from agentpool_operator.api.budget import MAX_LISTED_POOLS
from agentpool_operator.budget_saturation import Saturation
from agentpool_operator.builders.context import ResolvedBudgetKey

BudgetId = tuple[str, str]
"""(namespace, name) of an AgentBudget."""


@dataclass(frozen=True)
class BudgetProblem(Exception):
    """Why the pool cannot use its budgets; `reason` is one of the `Budget*` reasons."""

    reason: str
    message: str

    def __str__(self) -> str:
        return self.message


def references(namespace: str, spec: AgentPoolSpec
               ) -> list[tuple[int, BudgetId, BudgetReference]]:
    """(index in spec.budgets, budget id, reference) of each budget the pool names, once."""
    found: dict[BudgetId, tuple[int, BudgetReference]] = {}
    for index, ref in enumerate(spec.budgets or ()):
        found.setdefault((ref.namespace or namespace, ref.name), (index, ref))
    return [(index, budget_id, ref) for budget_id, (index, ref) in found.items()]


def referenced_ids(pool: Mapping[str, Any]) -> set[BudgetId]:
    """The budgets a pool body names (read leniently: any body, valid or not)."""
    namespace = str((pool.get("metadata") or {}).get("namespace") or "")
    refs = (pool.get("spec") or {}).get("budgets") or []
    return {(str(ref.get("namespace") or namespace), str(ref.get("name")))
            for ref in refs if isinstance(ref, dict) and ref.get("name")}


def parse_budget(body: Mapping[str, Any]) -> AgentBudgetSpec | None:
    """A budget's spec, or None when it does not parse (stored under an older CRD)."""
    try:
        return AgentBudgetSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return None


def resolve(namespace: str, spec: AgentPoolSpec,
            budgets: Mapping[BudgetId, Mapping[str, Any] | None]) -> tuple[ResolvedBudgetKey, ...]:
    """The keys the pool's budgets give its runtime, in reference order. `budgets` holds each
    referenced budget's body (None: it does not exist). Raises `BudgetProblem`."""
    keys: list[ResolvedBudgetKey] = []
    defined_by: dict[str, str] = {}
    for index, (budget_namespace, name), ref in references(namespace, spec):
        where = f"spec.budgets[{index}]"
        label = f"AgentBudget {budget_namespace}/{name}"
        body = budgets.get((budget_namespace, name))
        if body is None:
            raise BudgetProblem(Reason.BUDGET_NOT_FOUND, (
                f"{label} (referenced by {where}) does not exist: create it, or fix the "
                f"reference"))
        budget = parse_budget(body)
        if budget is None:
            raise BudgetProblem(Reason.BUDGET_NOT_FOUND, (
                f"{label} (referenced by {where}) has a spec the operator cannot read: fix "
                "it (kubectl describe shows why)"))
        if not budget.shared_with_namespace(namespace, budget_namespace):
            raise BudgetProblem(Reason.BUDGET_NOT_SHARED, (
                f"{label} (referenced by {where}) is not shared with namespace {namespace}: "
                f"its owner may add {namespace!r} to its spec.sharedWith.namespaces"))
        for key in budget.keys:
            if key.name in defined_by:
                raise BudgetProblem(Reason.BUDGET_KEY_CONFLICT, (
                    f"{label} (referenced by {where}) and {defined_by[key.name]} both define "
                    f"the key {key.name!r}; a pool's key names must be unique (handlers call "
                    "ctx.budget(name)): reference only one of them, or rename the key in one"))
            defined_by[key.name] = label
            api_key: tuple[str, str] | None = None
            if key.secret_ref is not None:
                if ref.secret_ref is not None:
                    api_key = (ref.secret_ref.name, key.name)
                elif budget_namespace == namespace:
                    api_key = (key.secret_ref.name, key.secret_ref.key)
            keys.append(ResolvedBudgetKey(
                config=BudgetKeyConfig(
                    name=key.name, budget=f"{budget_namespace}/{name}",
                    requests_per_second=key.requests_per_second,
                    requests_per_minute=key.requests_per_minute,
                    tokens_per_minute=key.tokens_per_minute,
                    concurrent_requests=key.concurrent_requests,
                    has_api_key=api_key is not None),
                api_key=api_key))
    return tuple(keys)


def users(budget_id: BudgetId, budget: AgentBudgetSpec | None,
          pools: Iterable[Mapping[str, Any]]) -> list[str]:
    """`namespace/name` of the pools (bodies) that reference the budget and may use it."""
    if budget is None:
        return []
    found = []
    for pool in pools:
        meta = pool.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        if (budget_id in referenced_ids(pool) and not meta.get("deletionTimestamp")
                and budget.shared_with_namespace(namespace, budget_id[0])):
            found.append(f"{namespace}/{meta.get('name')}")
    return sorted(found)


def _servers_of(pools: list[str], servers: Mapping[str, str]) -> dict[str, list[str]]:
    by_server: dict[str, list[str]] = {}
    for pool in pools:
        if pool in servers:
            by_server.setdefault(servers[pool], []).append(pool)
    return dict(sorted(by_server.items()))


def budget_status(budget: Mapping[str, Any], pools: list[str], current: Mapping[str, Any],
                  now: dt.datetime, servers: Mapping[str, str] | None = None,
                  saturated: Saturation | None = None) -> dict[str, Any]:
    """The status an AgentBudget should have: its users and its Ready condition (whose
    lastTransitionTime moves only when it flips). `servers` maps a pool (`namespace/name`) to
    the Redis server it queues on (`host:port/db`, never credentials), where pods count the
    budget: pools on two servers would each get the whole limit. `saturated` adds the keys'
    saturation and the Saturated condition (`budget_saturation.py`)."""
    generation = int((budget.get("metadata") or {}).get("generation") or 0)
    spec = parse_budget(budget)
    if spec is None:
        ready = Condition(type=ConditionType.READY, status="False", reason=Reason.INVALID_SPEC,
                          observed_generation=generation, last_transition_time=now,
                          message="the spec cannot be read (stored under an older CRD?): "
                          "re-apply it; pools referencing it are Degraded")
    elif len(split := _servers_of(pools, servers or {})) > 1:
        listed = "; ".join(f"{server}: {', '.join(users_)}" for server, users_ in split.items())
        ready = Condition(type=ConditionType.READY, status="False", reason=Reason.BUDGET_SPLIT,
                          observed_generation=generation, last_transition_time=now,
                          message="the pools using this budget queue on different Redis "
                          f"servers ({listed}); each server would grant the whole limit, since "
                          "pods count a budget in their queue's Redis: put the pools sharing "
                          "it on one Redis, or give each server its own budget")
    else:
        count = f"{len(pools)} pool{'' if len(pools) == 1 else 's'}"
        ready = Condition(type=ConditionType.READY, status="True", reason=Reason.AS_EXPECTED,
                          observed_generation=generation, last_transition_time=now,
                          message=f"served; used by {count}")
    try:
        conditions = [Condition.model_validate(c) for c in current.get("conditions") or []]
    except ValidationError:
        conditions = []
    conditions, _ = set_condition(conditions, ready)
    if saturated is not None:
        conditions, _ = set_condition(conditions, saturated.condition)
    return AgentBudgetStatus(
        observed_generation=generation, key_count=len(spec.keys) if spec else None,
        pool_count=len(pools), pools=pools[:MAX_LISTED_POOLS],
        keys=saturated.keys if saturated is not None else None, conditions=conditions,
    ).to_json()
