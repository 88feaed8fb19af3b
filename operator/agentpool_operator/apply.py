"""Making a pool's children what the plan says: ensure, re-create, prune.

Called by `reconcile.py` with the desired children. Each child is compared with what the
store observed (a GET only when the store cannot vouch for it) and applied with server-side
apply only when it lacks or differs in a field we want. Never takes over an object it did not
make (ChildConflict); makes anew a child another manager's edit made invalid for our apply
(`kinds.ChildKind.recreatable`); prunes optional children the spec no longer asks for; does
not send again a manifest the API server refused for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentpool_operator import announce, builders
from agentpool_operator.api import KIND, Reason
from agentpool_operator.api.labels import MANAGED_BY_LABEL, POOL_LABEL
from agentpool_operator.builders.kinds import CHILD_KINDS, RECREATABLE_KINDS
from agentpool_operator.cache import digest_secret
from agentpool_operator.drift import APPLIED_HASH, contains, differing_paths, with_applied_hash
from agentpool_operator.errors import ApiFailure
from agentpool_operator.events import post_announcements
from agentpool_operator.k8s import Kube
from agentpool_operator.outcomes import Blocked
from agentpool_operator.status import Problem
from agentpool_operator.store import PoolKey, PoolStore

log = logging.getLogger(__name__)
# A conflicting object is not ours, so no watch tells us when it goes: look again this often.
CONFLICT_RETRY_SECONDS = 30.0
PERMANENT_CODES = frozenset(range(400, 500)) - {408, 409, 425, 429}
"""API refusals that retrying the same request cannot cure (invalid, forbidden, ...)."""
# A refused manifest is not sent again unchanged for this long (a spec change, a change of
# the live child or this time passing sends it again: a policy may have been relaxed).
REFUSAL_MEMORY_SECONDS = 3600.0
RefusalKey = tuple[str, str, str, str]


@dataclass(frozen=True)
class _Refusal:
    applied_hash: str
    live_version: str
    failure: ApiFailure
    when: float


@dataclass
class Applier:
    kube: Kube
    store: PoolStore
    _refused: dict[RefusalKey, _Refusal] = field(default_factory=dict)
    _pruned: dict[PoolKey, tuple[str, int, frozenset[str]]] = field(default_factory=dict)

    def forget(self, key: PoolKey) -> None:
        """The pool is gone."""
        self._pruned.pop(key, None)
        # Its children's refusals (a name prefix may catch another pool's: one more try).
        self._refused = {k: v for k, v in self._refused.items()
                         if k[2] != key[0] or not k[3].startswith(key[1])}

    async def apply_children(self, pool: dict[str, Any], children: builders.Children
                             ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Apply each child that differs from its live object; return the live Deployment and
        the metadata we want it to carry.

        Three rounds: what the pods use (ConfigMap, Secret, Service, PDB) before the
        Deployment, and what observes it (HPA, PodMonitor, ...) after. Children within a round
        are independent, so their requests run concurrently.
        """
        manifests = [with_applied_hash(m) for m in children.manifests]
        lives = await self._look(manifests)
        index = next(i for i, m in enumerate(manifests) if m["kind"] == "Deployment")
        applied: list[announce.Applied] = []
        try:
            await self._ensure_all(manifests[:index], lives[:index], applied)
            deployment = await self._ensure(manifests[index], lives[index], applied)
            await self._ensure_all(manifests[index + 1:], lives[index + 1:], applied)
        finally:
            await post_announcements(self.kube, pool, announce.applied(applied))
        return deployment, manifests[index]["metadata"]

    async def _look(self, manifests: Sequence[dict[str, Any]]
                    ) -> list[dict[str, Any] | None]:
        """The live object of every child, before anything is applied: an object of a child's
        name that someone else made must be reported (ChildConflict), and nothing of the
        pool made while it stands. The watched body serves when there is one; a GET when the
        store cannot vouch for it (not watched yet, only our own answer seen so far, or
        absent: absence is not something a cache can prove, and objects that are not ours
        are not watched)."""
        async def live(desired: dict[str, Any]) -> dict[str, Any] | None:
            found = self.store.watched_child(desired)
            if found is None:
                meta = desired["metadata"]
                found = await self.kube.get(desired["apiVersion"], desired["kind"],
                                            meta["namespace"], meta["name"])
                self.store.remember(desired, found)
            return found

        lives = list(await asyncio.gather(*(live(m) for m in manifests)))
        conflicts = [reason for reason in map(not_ours, lives, manifests) if reason is not None]
        if conflicts:
            raise Blocked(Problem(reason=Reason.CHILD_CONFLICT, message="; ".join(conflicts),
                                  blocking=True), CONFLICT_RETRY_SECONDS)
        return lives

    async def _ensure_all(self, manifests: Sequence[dict[str, Any]],
                          lives: Sequence[dict[str, Any] | None],
                          applied: list[announce.Applied]) -> None:
        results = await asyncio.gather(
            *(self._ensure(m, live, applied) for m, live in zip(manifests, lives, strict=True)),
            return_exceptions=True)
        # Every request has finished; report the first failure as a sequential loop would.
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _ensure(self, desired: dict[str, Any], live: dict[str, Any] | None,
                      applied: list[announce.Applied]) -> dict[str, Any]:
        """The live child, applied first if it lacks or differs in a field we want."""
        meta = desired["metadata"]
        # Secrets compare by digests of their values: the store keeps no values.
        if live is None or not contains(digest_secret(live), digest_secret(desired)):
            self._raise_if_refused_before(desired, live)
            changed = [] if live is None else differing_paths(digest_secret(live),
                                                              digest_secret(desired))
            try:
                live = await self.kube.apply(desired)
            except ApiFailure as failure:
                if failure.code != 422 or not recreatable(live, desired):
                    self._remember_refusal(desired, live, failure)
                    raise
                # Someone else's field makes ours invalid (e.g. a PDB's minAvailable next to
                # our maxUnavailable): apply cannot remove fields it does not own, so the
                # child is made anew.
                await self.kube.delete(desired["apiVersion"], desired["kind"],
                                       meta["namespace"], meta["name"])
                live = await self.kube.apply(desired)
                changed = ["(re-created)", *changed]
            applied.append(announce.Applied(desired["kind"], meta["name"], changed))
            self.store.remember(desired, live)
        return live

    def _remember_refusal(self, desired: dict[str, Any], live: dict[str, Any] | None,
                          failure: ApiFailure) -> None:
        if failure.code in PERMANENT_CODES:
            self._refused[_refusal_key(desired)] = _Refusal(
                desired["metadata"]["annotations"][APPLIED_HASH], _version(live), failure,
                time.monotonic())

    def _raise_if_refused_before(self, desired: dict[str, Any],
                                 live: dict[str, Any] | None) -> None:
        """Re-raise the refusal of this very manifest against this very live object, instead
        of sending it again: the answer would be the same, and each resync would write."""
        key = _refusal_key(desired)
        refused = self._refused.get(key)
        if refused is None:
            return
        same = (refused.applied_hash == desired["metadata"]["annotations"][APPLIED_HASH]
                and refused.live_version == _version(live))
        if same and time.monotonic() - refused.when < REFUSAL_MEMORY_SECONDS:
            raise refused.failure
        del self._refused[key]

    async def prune_once(self, pool: dict[str, Any], children: builders.Children) -> None:
        """Prune for each pool generation once: only a spec change (or a CRD appearing or
        going) makes a child unwanted."""
        meta = pool["metadata"]
        key = (meta["namespace"], meta["name"])
        done = (meta["uid"], int(meta.get("generation") or 0), self.store.served_crds)
        if self._pruned.get(key) != done:
            # Before the first reconcile finished nothing unwanted can have been made for it.
            if pool.get("status"):
                await self._prune(pool, children)
            self._pruned[key] = done

    async def _prune(self, pool: dict[str, Any], children: builders.Children) -> None:
        wanted = {(m["apiVersion"], m["kind"], m["metadata"]["name"])
                  for m in children.manifests}
        meta = pool["metadata"]
        for child in CHILD_KINDS:
            name = child.name(meta["name"])
            if not child.optional or (child.api_version, child.kind, name) in wanted:
                continue
            if child.crd is not None and child.crd not in self.store.served_crds:
                continue  # nothing of a kind whose CRD is not served can exist
            live = await self.kube.get(child.api_version, child.kind, meta["namespace"], name)
            owners = (live or {}).get("metadata", {}).get("ownerReferences") or []
            # Only delete what this pool owns: a same-named object of someone else stays.
            if any(o.get("uid") == meta["uid"] for o in owners):
                await self.kube.delete(child.api_version, child.kind, meta["namespace"], name)
                await self.kube.post_event(pool, "Normal", "Deleted",
                                           f"deleted {child.kind} {name}: no longer wanted")


def _refusal_key(desired: dict[str, Any]) -> RefusalKey:
    meta = desired["metadata"]
    return (desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])


def _version(live: dict[str, Any] | None) -> str:
    return str(((live or {}).get("metadata") or {}).get("resourceVersion") or "")


def recreatable(live: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """Whether a child refused as invalid may be deleted and made anew: of a recreatable
    kind (`kinds.ChildKind.recreatable`) and controlled by this pool."""
    if live is None or (desired["apiVersion"], desired["kind"]) not in RECREATABLE_KINDS:
        return False
    ours = {o.get("uid") for o in desired["metadata"].get("ownerReferences") or []}
    return any(o.get("uid") in ours and o.get("controller")
               for o in (live.get("metadata") or {}).get("ownerReferences") or [])


def not_ours(live: dict[str, Any] | None, desired: dict[str, Any]) -> str | None:
    """Why an existing object with a child's name is not this pool's to apply over, or None.

    Ours: controlled by this pool (its uid), or left without a controller but labelled as
    this pool's by us (a pool deleted with --cascade=orphan and made anew), which is adopted.
    """
    if live is None:
        return None
    meta = live.get("metadata") or {}
    ours = {o.get("uid") for o in desired["metadata"].get("ownerReferences") or []}
    controller = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")),
                      None)
    what = f"{desired['kind']} {desired['metadata']['name']} already exists and"
    fix = ("the operator never takes over objects it did not create: delete or rename that "
           "object, or give the AgentPool another name")
    if controller is not None:
        if controller.get("uid") in ours:
            return None
        pools = {o.get("name") for o in desired["metadata"].get("ownerReferences") or []}
        if controller.get("kind") == KIND and controller.get("name") in pools:
            return (f"{what} belongs to an earlier AgentPool of this name; waiting for the "
                    "garbage collector to delete it")
        return (f"{what} is controlled by {controller.get('kind')} {controller.get('name')}; "
                f"{fix}")
    labels = meta.get("labels") or {}
    pool = (desired["metadata"].get("labels") or {}).get(POOL_LABEL)
    if labels.get(MANAGED_BY_LABEL) == "agentpool-operator" and labels.get(POOL_LABEL) == pool:
        return None
    return f"{what} was not created by this AgentPool; {fix}"
