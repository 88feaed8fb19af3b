"""kopf wiring only: watch events become work-queue keys; nothing else happens here.

Only raw event handlers are used: they keep no state in the objects (no finalizers, no
annotations, no status fields of kopf's own), so the operator's only writes are its children,
the AgentPool status and Events.
"""

from __future__ import annotations

from typing import Any

import kopf

from agentpool_operator import k8s
from agentpool_operator.api import API_VERSION, BUDGET_PLURAL, GROUP, KIND, PLURAL, VERSION
from agentpool_operator.budgets import BudgetId
from agentpool_operator.builders.kinds import WATCHED_KINDS
from agentpool_operator.diffbase import NoDiffBase
from agentpool_operator.reconcile import Reconciler
from agentpool_operator.resync import Resyncer
from agentpool_operator.store import PoolKey, PoolStore
from agentpool_operator.workqueue import WorkQueue

MANAGED_BY = ",".join(f"{k}={v}" for k, v in k8s.MANAGED_BY.items())
LIST_CHUNK_SIZE = 100
WORKER_IDLE_SECONDS = 0.05


def build_registry(queue: WorkQueue[PoolKey], resyncer: Resyncer, reconciler: Reconciler,
                   budget_queue: WorkQueue[BudgetId] | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    store = reconciler.store

    # kopf passes many keyword arguments; the handlers take the few they need by name.
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def pool_changed(**kwargs: Any) -> None:
        key = (kwargs["namespace"], kwargs["name"])
        meta = kwargs["meta"]
        deleted = kwargs["type"] == "DELETED"
        wanted = store.pool_event(key, kwargs["event"]["object"], deleted)
        for rival in store.take_rechecks():  # pools sharing its queue
            queue.add(rival)
        _recheck_budgets(store, budget_queue)  # budgets it starts or stops using
        if deleted:
            reconciler.forget(key)
            queue.forget(key)
            resyncer.detector.forget(key)
            return
        resyncer.detector.observed(key, meta.get("resourceVersion", ""))
        if wanted:
            queue.add(key)

    @kopf.on.event("apps", "v1", "deployments", registry=registry)
    async def deployment_changed(**kwargs: Any) -> None:
        for owner in kwargs["meta"].get("ownerReferences") or []:
            if owner.get("kind") == KIND and owner.get("apiVersion") == API_VERSION:
                key = (kwargs["namespace"], owner["name"])
                store.deployment_event(key, kwargs["event"]["object"],
                                            kwargs["type"] == "DELETED", kwargs["type"] is None)
                queue.add(key)

    _watch_budgets(registry, queue, store, budget_queue)
    for api_version, kind, plural in WATCHED_KINDS:
        _watch_child(registry, queue, store, api_version, kind, plural)
    return registry


def _recheck_budgets(store: PoolStore, budget_queue: WorkQueue[BudgetId] | None) -> None:
    for budget_id in store.take_budget_rechecks():
        if budget_queue is not None:
            budget_queue.add(budget_id)


def _watch_budgets(registry: kopf.OperatorRegistry, queue: WorkQueue[PoolKey],
                   store: PoolStore, budget_queue: WorkQueue[BudgetId] | None) -> None:
    """AgentBudgets: a budget's spec change (or its coming or going) reconciles every pool
    naming it and recomputes its own status. kopf watches them while their CRD exists."""

    @kopf.on.event(GROUP, VERSION, BUDGET_PLURAL, registry=registry)
    async def budget_changed(**kwargs: Any) -> None:
        budget_id = (kwargs["namespace"], kwargs["name"])
        for key in store.budget_event(budget_id, kwargs["event"]["object"],
                                      kwargs["type"] == "DELETED"):
            queue.add(key)
        _recheck_budgets(store, budget_queue)


def _group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _watch_child(registry: kopf.OperatorRegistry, queue: WorkQueue[PoolKey],
                 store: PoolStore, api_version: str, kind: str, plural: str) -> None:
    """A deleted or edited child puts its pool on the queue at once; status updates and the
    echoes of our own writes do not. kopf watches a CRD-backed kind only while its CRD exists.
    Nothing here logs a body: a Secret's would carry its values."""
    group, version = _group_version(api_version)

    @kopf.on.event(group, version, plural, id=f"{plural}_changed", registry=registry)
    async def child_changed(**kwargs: Any) -> None:
        key = store.child_event(api_version, kind, kwargs["event"]["object"],
                                     kwargs["type"])
        if key is not None:
            queue.add(key)


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings for a quiet, level-based operator."""
    # The reconciler posts its own, specific Events; kopf's log-to-event posting would add
    # writes on every handler run.
    settings.posting.enabled = False
    # No change handlers, so no diffs: kopf would deep-copy every watched body to build them.
    settings.persistence.diffbase_storage = NoDiffBase()
    # Only watch the children we own, filtered by the API server, not in memory: in particular
    # only our own Secrets ever reach the operator.
    settings.watching.label_selectors["apps", "deployments"] = MANAGED_BY
    for api_version, _, plural in WATCHED_KINDS:
        settings.watching.label_selectors[(*_group_version(api_version), plural)] = MANAGED_BY
    settings.watching.server_timeout = 300
    # Memory at a (re)start with thousands of children: kopf lists each kind in one response
    # by default and gives every listed object a worker that holds its last body (with
    # managedFields) for `idle_timeout` after handling it, 5 s by default. Our handlers keep no
    # per-object state and take microseconds, so a worker may go as soon as it is idle; lists
    # come in chunks, and workers handle one chunk while the next is on its way. The start-up
    # peak at 1,000 pools still varies from run to run (114-218 MiB, bench/RESULTS.md run 7).
    settings.watching.chunk_size = LIST_CHUNK_SIZE
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    settings.networking.request_timeout = 60
