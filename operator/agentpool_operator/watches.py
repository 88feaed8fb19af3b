"""Watch wiring only: watch events become store notes and work-queue keys; nothing else
happens here.

The pools and budgets are kopf's (raw event handlers only: they keep no state in the objects,
no finalizers, annotations or status fields of kopf's own, so the operator's only writes are
its children, the AgentPool status and Events); the children are `childwatch`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import kopf

from agentpool_operator.api import API_VERSION, BUDGET_PLURAL, GROUP, KIND, PLURAL, VERSION
from agentpool_operator.budgets import BudgetId
from agentpool_operator.builders.kinds import DEPLOYMENT, WATCHED_KINDS, crd_of
from agentpool_operator.childwatch import KindWatcher, WatchedKind
from agentpool_operator.diffbase import NoDiffBase
from agentpool_operator.k8s import Kube
from agentpool_operator.reconcile import Reconciler
from agentpool_operator.resync import Resyncer
from agentpool_operator.store import PoolKey, PoolStore
from agentpool_operator.workqueue import WorkQueue

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

    _watch_budgets(registry, queue, store, budget_queue)
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


def child_watchers(kube: Kube, queue: WorkQueue[PoolKey], store: PoolStore,
                   namespaces: Sequence[str], *,
                   sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
                   ) -> list[KindWatcher]:
    """The watches of the children (`childwatch`, not kopf's: bounded memory at start-up):
    the Deployments first, then every other watched kind, in each namespace (or all)."""
    watched = [_deployments(queue, store)] + [
        _children(queue, store, api_version, kind) for api_version, kind, _ in WATCHED_KINDS]
    return [KindWatcher(kube, kind, namespace, sleep=sleep)
            for kind in watched for namespace in namespaces or (None,)]


def _deployments(queue: WorkQueue[PoolKey], store: PoolStore) -> WatchedKind:
    """A Deployment's every change (its status carries the pods' state) refreshes its pool."""
    def handle(event_type: str | None, deployment: dict[str, Any]) -> None:
        meta = deployment.get("metadata") or {}
        for owner in meta.get("ownerReferences") or []:
            if owner.get("kind") == KIND and owner.get("apiVersion") == API_VERSION:
                key = (str(meta.get("namespace") or ""), str(owner["name"]))
                store.deployment_event(key, deployment, event_type == "DELETED")
                queue.add(key)

    return WatchedKind(*DEPLOYMENT, handle=handle, relisted=_audit(queue, store, *DEPLOYMENT))


def _children(queue: WorkQueue[PoolKey], store: PoolStore, api_version: str, kind: str
              ) -> WatchedKind:
    """A deleted or edited child puts its pool on the queue at once; status updates and the
    echoes of our own writes do not. A CRD-backed kind is watched only while its CRD is
    served. Nothing here logs a body: a Secret's would carry its values."""
    def handle(event_type: str | None, child: dict[str, Any]) -> None:
        key = store.child_event(api_version, kind, child, event_type)
        if key is not None:
            queue.add(key)

    crd = crd_of(api_version, kind)
    return WatchedKind(api_version, kind, handle=handle,
                       relisted=_audit(queue, store, api_version, kind),
                       served=lambda: crd is None or crd in store.served_crds)


def _audit(queue: WorkQueue[PoolKey], store: PoolStore, api_version: str, kind: str
           ) -> Callable[[set[tuple[str, str]], str], None]:
    """After a (re)list: reconcile the pools whose cached children it showed gone."""
    def relisted(listed: set[tuple[str, str]], version: str) -> None:
        for key in store.audit(api_version, kind, listed, version):
            queue.add(key)
    return relisted


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings for a quiet, level-based operator."""
    # The reconciler posts its own, specific Events; kopf's log-to-event posting would add
    # writes on every handler run.
    settings.posting.enabled = False
    # No change handlers, so no diffs: kopf would deep-copy every watched body to build them.
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    # The pools at a (re)start: kopf gives every listed object a worker that holds its last
    # body for `idle_timeout` after handling it, 5 s by default. Our handlers keep no
    # per-object state and take microseconds, so a worker may go as soon as it is idle, and
    # lists come in chunks. (The children, thousands at 1,000 pools, are `childwatch`'s.)
    settings.watching.chunk_size = LIST_CHUNK_SIZE
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    settings.networking.request_timeout = 60
