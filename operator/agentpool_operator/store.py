"""What the operator has observed of the cluster: the watched bodies, and which pools they
say need a full reconcile.

Fed by the watches (kopf's of the pools and budgets, `childwatch`'s of the children: events and
lists) and the resync (lists); read by the reconcile. No
requests are made here. Bodies are kept as compact JSON (`cache.LatestObjects`), Secrets as
digests of their values. A body only our own write returned is kept unconfirmed until the
watch echoes it; absence is never trusted (a child the watch has not delivered is read).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from agentpool_operator.api import API_VERSION, KIND
from agentpool_operator.budgets import BudgetId, referenced_ids
from agentpool_operator.builders.kinds import DEPLOYMENT, WATCHED_KINDS
from agentpool_operator.cache import LatestObjects, same_content
from agentpool_operator.queue_claims import QueueClaims

PoolKey = tuple[str, str]
ChildKey = tuple[str, str, str, str]
"""(api version, kind, namespace, name) of a child other than the Deployment."""
_WATCHED = frozenset((api_version, kind) for api_version, kind, _ in WATCHED_KINDS)


@dataclass
class PoolStore:
    """The latest observed pools and children, and the pools owed a full reconcile."""

    pools: LatestObjects[PoolKey] = field(default_factory=LatestObjects)
    deployments: LatestObjects[PoolKey] = field(default_factory=LatestObjects)
    """Latest watched bodies of the pools and of their Deployments (by pool key)."""
    children: LatestObjects[ChildKey] = field(default_factory=LatestObjects)
    """Latest watched bodies of the other children (Secrets with digests for values)."""
    queue_claims: QueueClaims = field(default_factory=QueueClaims)
    """Which pool reads which queue (namespace, Redis Secret, stream, group)."""
    autoscalers: dict[PoolKey, dict[str, tuple[str, str]]] = field(default_factory=dict)
    """The conditions of each pool's HPA as its watch delivered them: type -> (status,
    reason), for the operator's `agentpool_operator_autoscaler_condition`."""
    served_crds: frozenset[str] = frozenset()
    """The CRDs of optional child kinds the cluster serves (checked by the resync)."""
    budgets: LatestObjects[BudgetId] = field(default_factory=LatestObjects)
    """Latest watched AgentBudgets (a referenced budget the watch lacks is read with a GET)."""
    _needs_full: set[PoolKey] = field(default_factory=set)
    _rechecks: set[PoolKey] = field(default_factory=set)
    _budget_rechecks: set[BudgetId] = field(default_factory=set)
    _own_status_versions: dict[PoolKey, str] = field(default_factory=dict)

    # -- what the reconcile owes --------------------------------------------------------------

    def request_full(self, key: PoolKey) -> None:
        """The next reconcile of `key` reads and checks everything, not just the status."""
        self._needs_full.add(key)

    def take_full(self, key: PoolKey) -> bool:
        """Whether `key` was owed a full reconcile (which the caller now does)."""
        owed = key in self._needs_full
        self._needs_full.discard(key)
        return owed

    def take_rechecks(self) -> set[PoolKey]:
        """The pools to reconcile because a pool sharing their queue came or went."""
        rechecks, self._rechecks = self._rechecks, set()
        return rechecks

    # -- watch events -------------------------------------------------------------------------

    def take_budget_rechecks(self) -> set[BudgetId]:
        """The budgets whose users may have changed (a pool referencing them came, changed
        or went): their status is computed again."""
        rechecks, self._budget_rechecks = self._budget_rechecks, set()
        return rechecks

    def pool_event(self, key: PoolKey, pool: dict[str, Any], deleted: bool) -> bool:
        """Note a watched version of a pool; whether it needs a reconcile."""
        old = self.pools.get(key)
        before = referenced_ids(old) if old is not None else set()
        after = set() if deleted else referenced_ids(pool)
        if before != after or (deleted and before):
            self._budget_rechecks |= before | after
        if deleted:
            self._rechecks |= self.queue_claims.drop(key)
            self.pools.drop(key, pool)
            self.autoscalers.pop(key, None)
            self._own_status_versions.pop(key, None)
            self._needs_full.discard(key)
            return False
        self.pools.put(key, pool)
        for rival in self.queue_claims.put(key, pool):
            self._rechecks.add(rival)
            self.request_full(rival)
        version = pool.get("metadata", {}).get("resourceVersion")
        if version and version == self._own_status_versions.get(key):
            return False  # the echo of our own status write: nothing new to act on
        self.request_full(key)
        return True

    def budget_event(self, budget_id: BudgetId, budget: dict[str, Any], deleted: bool
                     ) -> set[PoolKey]:
        """Note a watched version of an AgentBudget; the pools to reconcile fully because
        its spec changed (or it came or went). Its status updates change nothing."""
        cached = self.budgets.get(budget_id)
        if deleted:
            self.budgets.drop(budget_id, budget)
        elif not self.budgets.put(budget_id, budget):
            return set()  # older than what we have
        elif cached is not None and _generation(cached) == _generation(budget):
            return set()  # a status update (ours, say): no spec change
        self._budget_rechecks.add(budget_id)
        pools = self.pools_using(budget_id)
        for key in pools:
            self.request_full(key)
        return pools

    def pools_using(self, budget_id: BudgetId) -> set[PoolKey]:
        """The pools (as last seen) that reference a budget."""
        found = set()
        for key in self.pools:
            pool = self.pools.get(key)
            if pool is not None and budget_id in referenced_ids(pool):
                found.add(key)
        return found

    def pool_bodies(self) -> list[dict[str, Any]]:
        """Every pool body as last seen."""
        return [pool for key in self.pools if (pool := self.pools.get(key)) is not None]

    def own_status_written(self, key: PoolKey, written: dict[str, Any]) -> None:
        """Our status write returned this version (for the generation the reconcile saw):
        its watch event needs no reconcile."""
        self._own_status_versions[key] = written["metadata"].get("resourceVersion", "")

    def deployment_event(self, key: PoolKey, deployment: dict[str, Any], deleted: bool) -> None:
        """Note a watched (or listed) version of a pool's Deployment (the caller enqueues the
        pool)."""
        if deleted:
            self.deployments.drop(key, deployment)
            # Often the garbage collector following the pool's deletion: read the pool itself
            # rather than trust the watch to have delivered that deletion already.
            self.pools.drop(key)
            self.request_full(key)
        else:
            self.deployments.put(key, deployment)

    def child_event(self, api_version: str, kind: str, child: dict[str, Any],
                    event_type: str | None) -> PoolKey | None:
        """Note a watched version of a child other than the Deployment; the pool to reconcile,
        if the change needs one (`event_type` None: a watch's (re)list)."""
        meta = child.get("metadata") or {}
        key = (api_version, kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        pool_key = self.owning_pool(meta)
        if kind == "HorizontalPodAutoscaler" and pool_key is not None:
            self._note_autoscaler(pool_key, child, event_type == "DELETED")
        if event_type == "DELETED":
            self.children.drop(key, child)
            if pool_key is None:
                return None
            # Often the garbage collector following the pool's deletion: read the pool itself
            # rather than re-create a child for a pool whose deletion is still on its way.
            self.pools.drop(pool_key)
            self.request_full(pool_key)
            return pool_key
        if pool_key is None:
            # Labelled like ours but no pool's child (or one of an earlier pool of that name):
            # nothing compares against it, so it is not kept.
            self.children.drop(key)
            return None
        cached = self.children.get(key)
        if not self.children.put(key, child):
            return None  # older than what we have (e.g. our own write's answer)
        if cached is not None and same_content(child, cached):
            return None  # the echo of our own write, or a status update
        if cached is None and event_type is None:
            return None  # (re)listed and new to us: the resync's full reconcile checks it
        self.request_full(pool_key)
        return pool_key

    def _note_autoscaler(self, key: PoolKey, hpa: dict[str, Any], deleted: bool) -> None:
        conditions = (hpa.get("status") or {}).get("conditions") or []
        if deleted or hpa["metadata"].get("name") != key[1]:
            self.autoscalers.pop(key, None)
            return
        self.autoscalers[key] = {c["type"]: (c.get("status", ""), c.get("reason") or "")
                                 for c in conditions if c.get("type")}

    def audit(self, api_version: str, kind: str, listed: Collection[tuple[str, str]],
              version: str) -> set[PoolKey]:
        """A (re)list of a watched kind ended: it showed the objects `listed` ((namespace,
        name)) as of resourceVersion `version`, each already noted through `child_event` or
        `deployment_event`. Drop the cached bodies it lacked (deleted while no watch ran, so
        no event reported it); the pools that need a full reconcile."""
        as_of = int(version) if version.isdigit() else None

        def stale(cached: int | None) -> bool:
            # A body newer than the list (our own write's answer since) is not the list's to
            # judge.
            return as_of is None or cached is None or cached <= as_of

        owners: set[PoolKey] = set()
        if (api_version, kind) == DEPLOYMENT:
            for pool_key in self.deployments:  # cached by pool key, named after the pool
                if pool_key not in listed and stale(self.deployments.version(pool_key)):
                    self.deployments.drop(pool_key)
                    owners.add(pool_key)
        else:
            for key in self.children:
                if key[:2] != (api_version, kind) or key[2:] in listed:
                    continue
                if stale(self.children.version(key)):
                    cached = self.children.get(key) or {}
                    self.children.drop(key)
                    owner = self.owning_pool(cached.get("metadata") or {})
                    if owner is not None:
                        owners.add(owner)
        for pool_key in owners:
            self.request_full(pool_key)
        return owners

    def owning_pool(self, meta: dict[str, Any]) -> PoolKey | None:
        """The key of the AgentPool that controls an object, from its ownerReferences."""
        for owner in meta.get("ownerReferences") or []:
            if owner.get("kind") == KIND and owner.get("apiVersion") == API_VERSION:
                key = (str(meta.get("namespace") or ""), str(owner.get("name") or ""))
                uid = self.pools.uid(key)
                # A child of an earlier pool of that name is the garbage collector's.
                if uid is not None and uid != owner.get("uid"):
                    return None
                return key
        return None

    # -- the bodies the applier compares against ---------------------------------------------

    def watched_child(self, desired: dict[str, Any]) -> dict[str, Any] | None:
        """The confirmed watched body of a desired child, if the cache can vouch for it."""
        meta = desired["metadata"]
        kind = (desired["apiVersion"], desired["kind"])
        if kind == DEPLOYMENT:
            # Cached by its pool's key; the Deployment is named after the pool.
            deployment = self.deployments.watched((meta["namespace"], meta["name"]))
            if deployment is None or deployment["metadata"].get("name") != meta["name"]:
                return None
            return deployment
        if kind not in _WATCHED:
            return None
        return self.children.watched((*kind, meta["namespace"], meta["name"]))

    def remember(self, desired: dict[str, Any], live: dict[str, Any] | None) -> None:
        """Cache what a GET or our apply returned (unconfirmed until the watch echoes it), so
        the echo is recognised as nothing new."""
        kind = (desired["apiVersion"], desired["kind"])
        if live is not None and kind in _WATCHED:
            meta = desired["metadata"]
            self.children.put((*kind, meta["namespace"], meta["name"]), live, watched=False)


def _generation(obj: dict[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)
