"""One level-based reconcile of one AgentPool: observe -> desired -> apply -> status.

Run by the work queue for every trigger (the pool changed, an owned child changed or was
deleted, the periodic resync). It is idempotent and quiet: children that already match are not
written, and status is written only when it changed. Children are compared with the bodies
their watches delivered; only a child the cache cannot vouch for is read from the API server.
Deleting an AgentPool needs no finalizer: every child has an ownerReference, so the garbage
collector removes them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from agentpool_operator import announce, builders
from agentpool_operator.api import API_VERSION, KIND, AgentPoolSpec, Reason
from agentpool_operator.api.labels import MANAGED_BY_LABEL, POOL_LABEL
from agentpool_operator.builders.context import PoolContext, SecretValues
from agentpool_operator.cache import LatestObjects, RecentReads, digest_secret, same_content
from agentpool_operator.drift import APPLIED_HASH, contains, differing_paths, with_applied_hash
from agentpool_operator.errors import ApiFailure
from agentpool_operator.k8s import Kube
from agentpool_operator.metrics import OperatorMetrics
from agentpool_operator.plan import InvalidSpec, plan_children
from agentpool_operator.queue_claims import QueueClaims
from agentpool_operator.queues import QueueRegistry
from agentpool_operator.status import (
    Observation,
    Problem,
    Reasons,
    compute_status,
    crash_looping,
    deployment_problems,
    status_changed,
)
from agentpool_operator.verified import Verified, still_holds
from agentpool_operator.workqueue import Requeue

log = logging.getLogger(__name__)
PoolKey = tuple[str, str]
ChildKey = tuple[str, str, str, str]
"""(api version, kind, namespace, name) of a child other than the Deployment."""
DEPLOYMENT = ("apps/v1", "Deployment")
# Children the operator watches (label-selected, see handlers.py) besides its Deployments:
# (api version, kind, plural). The CRD-backed ones are watched once their CRDs exist.
WATCHED_CHILDREN: tuple[tuple[str, str, str], ...] = (
    ("v1", "ConfigMap", "configmaps"),
    ("v1", "Secret", "secrets"),
    ("v1", "Service", "services"),
    ("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    ("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    ("monitoring.coreos.com/v1", "PodMonitor", "podmonitors"),
    ("keda.sh/v1alpha1", "ScaledObject", "scaledobjects"),
    ("keda.sh/v1alpha1", "TriggerAuthentication", "triggerauthentications"),
)
_WATCHED_KINDS = frozenset((api_version, kind) for api_version, kind, _ in WATCHED_CHILDREN)
SECRET_RETRY_SECONDS = 10.0
# A conflicting object is not ours, so no watch tells us when it goes: look again this often.
CONFLICT_RETRY_SECONDS = 30.0
# API refusals that retrying the same request cannot cure (invalid, forbidden, not found...):
# reported, and tried again only when something changes (or at the resync).
_PERMANENT_CODES = frozenset(range(400, 500)) - {408, 409, 425, 429}
# A refused manifest is not sent again unchanged for this long (a spec change, a change of
# the live child or this time passing sends it again: a policy may have been relaxed).
REFUSAL_MEMORY_SECONDS = 3600.0
SECRET_READ_SHARED_SECONDS = 2.0
# Optional children (api version, kind, name from the pool's name): pruned when the spec no
# longer asks for them.
_OPTIONAL: tuple[tuple[str, str, Callable[[str], str]], ...] = (
    ("v1", "Secret", builders.secret_name),
    ("autoscaling/v2", "HorizontalPodAutoscaler", lambda pool: pool),
    ("monitoring.coreos.com/v1", "PodMonitor", lambda pool: pool),
    ("v1", "Secret", builders.keda_name),
    ("keda.sh/v1alpha1", "TriggerAuthentication", builders.keda_name),
    ("keda.sh/v1alpha1", "ScaledObject", lambda pool: pool),
)


class _Refused(Exception):
    """The reconcile ended in a failure that is reported and not retried (it would fail the
    same way): counted as an error, nothing for the work queue to do."""


class _Blocked(Exception):
    def __init__(self, problem: Problem, retry_after: float | None = None) -> None:
        super().__init__(problem.message)
        self.problem = problem
        self.retry_after = retry_after


@dataclass
class Reconciler:
    """Holds the API adapter and what the operator remembers between reconciles."""

    kube: Kube
    metrics: OperatorMetrics
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    pod_monitor_api: bool = False
    keda_api: bool = False
    conditions: dict[PoolKey, dict[str, str]] = field(default_factory=dict)
    condition_details: dict[PoolKey, dict[str, tuple[str, str]]] = field(default_factory=dict)
    """Each pool's conditions as last written: type -> (status, reason); for /metrics."""
    autoscalers: dict[PoolKey, dict[str, tuple[str, str]]] = field(default_factory=dict)
    """The conditions of each pool's HPA as its watch delivered them (for /metrics)."""
    pools: LatestObjects[PoolKey] = field(default_factory=LatestObjects)
    deployments: LatestObjects[PoolKey] = field(default_factory=LatestObjects)
    """Latest watched bodies of the pools and of their Deployments (by pool key)."""
    children: LatestObjects[ChildKey] = field(default_factory=LatestObjects)
    """Latest watched bodies of the other children (Secrets with digests for values)."""
    queue_claims: QueueClaims = field(default_factory=QueueClaims)
    """Which pool reads which queue (namespace, Redis Secret, stream, group)."""
    rechecks: set[PoolKey] = field(default_factory=set)
    """Pools whose queue claim may have changed standing; the handler enqueues them."""
    relisted: set[tuple[str, str]] = field(default_factory=set)
    """Child kinds (api version, kind) a watch listed since the last audit. A deletion while
    a watch reconnects has no event; the resync lists those kinds once to drop such bodies."""
    _verified: dict[PoolKey, Verified] = field(default_factory=dict)
    _full_requested: set[PoolKey] = field(default_factory=set)
    _pruned: dict[PoolKey, tuple[str, int, bool, bool]] = field(default_factory=dict)
    _own_status_versions: dict[PoolKey, str] = field(default_factory=dict)
    _last_full: dict[PoolKey, float] = field(default_factory=dict)
    _refused: dict[tuple[str, str, str, str], tuple[str, str, ApiFailure, float]] = field(
        default_factory=dict)
    """Manifests the API server refused for good: (kind, namespace, name) -> (applied hash,
    live resourceVersion, the failure, when)."""
    _secret_reads: RecentReads[tuple[str, str], dict[str, str] | None] = field(
        default_factory=lambda: RecentReads(SECRET_READ_SHARED_SECONDS))
    queues: QueueRegistry = field(default_factory=QueueRegistry)
    """Each pool's queue as last read (for deletion costs and the metrics API's directory)."""

    def request_full(self, key: PoolKey) -> None:
        """The next reconcile of `key` reads and checks everything, not just the status."""
        self._full_requested.add(key)

    def checked_within(self, key: PoolKey, seconds: float) -> bool:
        """Whether a full reconcile of `key` succeeded in the last `seconds`."""
        last = self._last_full.get(key)
        return last is not None and time.monotonic() - last < seconds

    def pool_event(self, key: PoolKey, pool: dict[str, Any], deleted: bool) -> bool:
        """Note a watched version of a pool; whether it needs a reconcile."""
        if deleted:
            self.rechecks |= self.queue_claims.drop(key)
            # Its children's refusals (a name prefix may catch another pool's: one more try).
            self._refused = {k: v for k, v in self._refused.items()
                             if k[2] != key[0] or not k[3].startswith(key[1])}
            self.pools.drop(key, pool)
            self._verified.pop(key, None)
            self._last_full.pop(key, None)
            self._pruned.pop(key, None)
            self._own_status_versions.pop(key, None)
            self._full_requested.discard(key)
            self.queues.forget(key)
            return False
        self.pools.put(key, pool)
        for rival in self.queue_claims.put(key, pool):
            self.rechecks.add(rival)
            self.request_full(rival)
        version = pool.get("metadata", {}).get("resourceVersion")
        if version and version == self._own_status_versions.get(key):
            return False  # the echo of our own status write: nothing new to act on
        self.request_full(key)
        return True

    def take_rechecks(self) -> set[PoolKey]:
        """The pools to reconcile because a pool sharing their queue came or went."""
        rechecks, self.rechecks = self.rechecks, set()
        return rechecks

    def deployment_event(self, key: PoolKey, deployment: dict[str, Any], deleted: bool,
                         listing: bool = False) -> None:
        """Note a watched version of a pool's Deployment (the caller enqueues the pool)."""
        if listing:
            self.relisted.add(DEPLOYMENT)
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
        if event_type is None:
            self.relisted.add((api_version, kind))
        pool_key = self._owning_pool(meta)
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

    def audit(self, api_version: str, kind: str, listed: Sequence[dict[str, Any]]
              ) -> set[PoolKey]:
        """A fresh list of a watched kind: drop cached bodies it lacks (deleted while the watch
        was reconnecting), note the listed ones; the pools that need a full reconcile."""
        owners: set[PoolKey] = set()
        # Only cached keys are looked at: one whose deletion event arrived while the list was
        # on its way must not come back from the (older) list.
        if (api_version, kind) == DEPLOYMENT:
            seen: dict[PoolKey, dict[str, Any]] = {}
            for deployment in listed:
                pool_key = self._owning_pool(deployment.get("metadata") or {})
                if pool_key is not None:
                    seen[pool_key] = deployment
            for pool_key in self.deployments:
                if pool_key in seen:
                    self.deployments.put(pool_key, seen[pool_key])
                else:
                    self.deployments.drop(pool_key)
                    owners.add(pool_key)
        else:
            by_key: dict[ChildKey, dict[str, Any]] = {}
            for child in listed:
                meta = child.get("metadata") or {}
                by_key[(api_version, kind, meta["namespace"], meta["name"])] = child
            of_kind = [key for key in self.children if key[:2] == (api_version, kind)]
            for key in of_kind:
                cached = self.children.get(key) or {}
                if key not in by_key:
                    # Gone, or created after the list was taken: a GET will tell.
                    self.children.drop(key)
                elif not self.children.put(key, by_key[key]) or same_content(by_key[key],
                                                                             cached):
                    continue
                pool_key = self._owning_pool(cached.get("metadata") or {})
                if pool_key is not None:
                    owners.add(pool_key)
        for pool_key in owners:
            self.request_full(pool_key)
        return owners

    def _owning_pool(self, meta: dict[str, Any]) -> PoolKey | None:
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

    async def __call__(self, key: PoolKey) -> None:
        started = time.monotonic()
        result = "success"
        try:
            await self._reconcile(key)
        except Requeue:
            result = "waiting"
            raise
        except _Refused:
            result = "error"
        except Exception:
            result = "error"
            raise
        finally:
            self.metrics.reconciles.labels(result=result).inc()
            self.metrics.reconcile_duration.observe(time.monotonic() - started)

    async def _reconcile(self, key: PoolKey) -> None:
        full = key in self._full_requested
        self._full_requested.discard(key)
        verified, pool, deployment = (self._verified.get(key), self.pools.get(key),
                                      self.deployments.get(key))
        if (not full and verified is not None and pool is not None and deployment is not None
                and still_holds(verified, pool, deployment)):
            await self._observe(pool, Observation(
                generation=verified.generation, min_replicas=verified.min_replicas,
                spec_replicas=verified.spec_replicas,
                selector=builders.selector_string(key[1]), deployment=deployment))
            return
        self._verified.pop(key, None)
        await self._reconcile_fully(key)

    async def _reconcile_fully(self, key: PoolKey) -> None:
        namespace, name = key
        # The watch (or the resync's list) has delivered the pool; it is read only when not.
        pool = self.pools.get(key)
        if pool is None:
            pool = await self.kube.get(API_VERSION, KIND, namespace, name)
        if pool is None or pool["metadata"].get("deletionTimestamp"):
            self.conditions.pop(key, None)
            self.condition_details.pop(key, None)
            return
        self.pools.put(key, pool)
        generation = int(pool["metadata"].get("generation") or 0)
        try:
            spec = AgentPoolSpec.model_validate(pool.get("spec") or {})
        except ValidationError as error:
            problem = Problem(Reason.INVALID_SPEC, _validation_message(error), blocking=True)
            await self._write_status(pool, Observation(generation, 0, 0, None, None, [problem]))
            return  # nothing to retry until the spec changes

        observation = Observation(
            generation=generation, min_replicas=spec.min_replicas,
            spec_replicas=spec.replicas, selector=builders.selector_string(name), deployment=None,
        )
        try:
            conflict = self.queue_claims.conflict(key)
            if conflict is not None:
                # Another pool's deletion (or its claim moving) enqueues this one again.
                raise _Blocked(Problem(Reasons.QUEUE_CONFLICT, conflict, True))
            secrets = await self._read_secrets(namespace, spec)
            self.queues.record(key, spec, secrets.redis_url)
            ctx = PoolContext(name=name, namespace=namespace, uid=pool["metadata"]["uid"],
                              spec=spec, secrets=secrets, pod_monitor_api=self.pod_monitor_api,
                              keda_api=self.keda_api)
            try:
                children = plan_children(ctx)
            except builders.InvalidDatabaseDsn as error:
                raise _Blocked(Problem(Reasons.INVALID_DATABASE_DSN, str(error), True)) from None
            except InvalidSpec as error:
                # Deterministic: nothing to retry until the spec changes.
                raise _Blocked(Problem(Reason.INVALID_SPEC, str(error), True)) from None
            deployment, deployment_meta = await self._apply_children(pool, children)
            await self._prune_once(pool, children)
        except _Blocked as blocked:
            observation.problems.append(blocked.problem)
            await self._write_status(pool, observation)
            if blocked.retry_after is not None:
                raise Requeue(blocked.retry_after, blocked.problem.message) from None
            return
        except ApiFailure as failure:
            observation.problems.append(Problem(Reasons.APPLY_FAILED, str(failure), True))
            await self._write_status(pool, observation)
            if failure.code in _PERMANENT_CODES:
                # The same request would be refused again: reported, not retried.
                raise _Refused(str(failure)) from None
            raise

        # Our apply's answer, a GET's or the watched body: the watch confirms the first two.
        self.deployments.put(key, deployment, watched=False)
        self._last_full[key] = time.monotonic()
        self._verified[key] = Verified(
            uid=pool["metadata"]["uid"], generation=generation,
            min_replicas=spec.min_replicas, spec_replicas=spec.replicas,
            deployment_generation=int(deployment["metadata"].get("generation") or 0),
            deployment_metadata=_deployment_metadata(deployment_meta))
        await self._observe(pool, Observation(
            generation=generation, min_replicas=spec.min_replicas,
            spec_replicas=spec.replicas, selector=observation.selector, deployment=deployment,
        ))

    async def _observe(self, pool: dict[str, Any], observation: Observation) -> None:
        """Status from the Deployment (and its pods when some are unavailable)."""
        deployment = observation.deployment
        observation.problems.extend(deployment_problems(deployment))
        unavailable = int(((deployment or {}).get("status") or {}).get("unavailableReplicas") or 0)
        if unavailable:
            meta = pool["metadata"]
            pods = await self.kube.list_pods(meta["namespace"],
                                             builders.selector_labels(meta["name"]))
            looping = crash_looping(pods)
            if looping is not None:
                observation.problems.append(looping)
        await self._write_status(pool, observation)

    async def _read_secrets(self, namespace: str, spec: AgentPoolSpec) -> SecretValues:
        async def value(ref_path: str, secret: str, key: str) -> str:
            data = await self._secret_reads.get(
                (namespace, secret), lambda: self.kube.read_secret(namespace, secret))
            if data is None:
                message = f"Secret {secret} (referenced by {ref_path}) does not exist"
            elif key not in data:
                message = f"Secret {secret} has no key {key!r} (referenced by {ref_path})"
            else:
                return data[key]
            raise _Blocked(Problem(Reasons.SECRET_MISSING, message, True), SECRET_RETRY_SECONDS)

        queue_ref = spec.queue.redis.url_secret_ref
        redis_url = await value("spec.queue.redis.urlSecretRef", queue_ref.name, queue_ref.key)
        cache_url = None
        if spec.cache.enabled and spec.cache.redis is not None:
            ref = spec.cache.redis.url_secret_ref
            cache_url = await value("spec.cache.redis.urlSecretRef", ref.name, ref.key)
        dsn = None
        if spec.database is not None:
            ref = spec.database.dsn_secret_ref
            dsn = await value("spec.database.dsnSecretRef", ref.name, ref.key)
        return SecretValues(redis_url=redis_url, cache_redis_url=cache_url, database_dsn=dsn)

    async def _apply_children(self, pool: dict[str, Any], children: builders.Children
                              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Apply each child that differs from its live object; return the live Deployment and
        the metadata we want it to carry.

        Three rounds: what the pods use (ConfigMap, Secret, Service, PDB) before the
        Deployment, and what observes it (HPA, PodMonitor, ...) after. Children within a round
        are independent, so their requests run concurrently.
        """
        manifests = children.manifests
        index = next(i for i, m in enumerate(manifests) if m["kind"] == "Deployment")
        applied: list[announce.Applied] = []
        try:
            await self._ensure_all(manifests[:index], applied)
            desired = with_applied_hash(manifests[index])
            deployment = await self._ensure(desired, applied)
            await self._ensure_all(manifests[index + 1:], applied)
        finally:
            await self._announce(pool, announce.applied(applied))
        return deployment, desired["metadata"]

    async def _ensure_all(self, manifests: Sequence[dict[str, Any]],
                          applied: list[announce.Applied]) -> None:
        results = await asyncio.gather(
            *(self._ensure(with_applied_hash(m), applied) for m in manifests),
            return_exceptions=True)
        # Every request has finished; report the first failure as a sequential loop would.
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _ensure(self, desired: dict[str, Any],
                      applied: list[announce.Applied]) -> dict[str, Any]:
        """The live child, applied first if it lacks or differs in a field we want.

        It is looked at first even for a new pool: an object of the child's name that someone
        else made must be reported (ChildConflict), never taken over by our apply. The watched
        body serves when there is one; a GET when the cache cannot vouch for it (not watched
        yet, only our own answer seen so far, or absent: absence is not something a cache can
        prove, and objects that are not ours are not watched)."""
        meta = desired["metadata"]
        live = self._watched_child(desired)
        if live is None:
            live = await self.kube.get(desired["apiVersion"], desired["kind"],
                                       meta["namespace"], meta["name"])
            self._remember(desired, live)
        foreign = _not_ours(live, desired)
        if foreign is not None:
            raise _Blocked(Problem(Reasons.CHILD_CONFLICT, foreign, True),
                           CONFLICT_RETRY_SECONDS)
        # Secrets compare by digests of their values: the cache keeps no values.
        if live is None or not contains(digest_secret(live), digest_secret(desired)):
            self._raise_if_refused_before(desired, live)
            changed = [] if live is None else differing_paths(digest_secret(live),
                                                              digest_secret(desired))
            try:
                live = await self.kube.apply(desired)
            except ApiFailure as failure:
                if failure.code != 422 or not _recreatable(live, desired):
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
            self._remember(desired, live)
        return live

    def _refusal_key(self, desired: dict[str, Any]) -> tuple[str, str, str, str]:
        meta = desired["metadata"]
        return (desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])

    def _remember_refusal(self, desired: dict[str, Any], live: dict[str, Any] | None,
                          failure: ApiFailure) -> None:
        if failure.code in _PERMANENT_CODES:
            version = str(((live or {}).get("metadata") or {}).get("resourceVersion") or "")
            self._refused[self._refusal_key(desired)] = (
                desired["metadata"]["annotations"][APPLIED_HASH], version, failure,
                time.monotonic())

    def _raise_if_refused_before(self, desired: dict[str, Any],
                                 live: dict[str, Any] | None) -> None:
        """Re-raise the refusal of this very manifest against this very live object, instead
        of sending it again: the answer would be the same, and each resync would write."""
        key = self._refusal_key(desired)
        refused = self._refused.get(key)
        if refused is None:
            return
        applied_hash, version, failure, when = refused
        same = (applied_hash == desired["metadata"]["annotations"][APPLIED_HASH]
                and version == str(((live or {}).get("metadata") or {}).get("resourceVersion")
                                   or ""))
        if same and time.monotonic() - when < REFUSAL_MEMORY_SECONDS:
            raise failure
        del self._refused[key]

    def _watched_child(self, desired: dict[str, Any]) -> dict[str, Any] | None:
        meta = desired["metadata"]
        kind = (desired["apiVersion"], desired["kind"])
        if kind == DEPLOYMENT:
            # Cached by its pool's key; the Deployment is named after the pool.
            deployment = self.deployments.watched((meta["namespace"], meta["name"]))
            if deployment is None or deployment["metadata"].get("name") != meta["name"]:
                return None
            return deployment
        if kind not in _WATCHED_KINDS:
            return None
        return self.children.watched((*kind, meta["namespace"], meta["name"]))

    def _remember(self, desired: dict[str, Any], live: dict[str, Any] | None) -> None:
        """Cache what a GET or our apply returned (unconfirmed until the watch echoes it), so
        the echo is recognised as nothing new."""
        kind = (desired["apiVersion"], desired["kind"])
        if live is not None and kind in _WATCHED_KINDS:
            meta = desired["metadata"]
            self.children.put((*kind, meta["namespace"], meta["name"]), live, watched=False)

    async def _announce(self, pool: dict[str, Any],
                        announcements: Sequence[announce.Announcement]) -> None:
        meta = pool["metadata"]
        for kind, reason, message in announcements:
            if kind == "Normal" and reason in ("Created", "Updated"):
                log.info("%s/%s: %s", meta["namespace"], meta["name"], message)
            await self.kube.post_event(pool, kind, reason, message)

    async def _prune_once(self, pool: dict[str, Any], children: builders.Children) -> None:
        """Prune for each pool generation once: only a spec change makes a child unwanted."""
        meta = pool["metadata"]
        key = (meta["namespace"], meta["name"])
        done = (meta["uid"], int(meta.get("generation") or 0), self.pod_monitor_api,
                self.keda_api)
        if self._pruned.get(key) != done:
            # Before the first reconcile finished nothing unwanted can have been made for it.
            if _reconciled_before(pool):
                await self._prune(pool, children)
            self._pruned[key] = done

    async def _prune(self, pool: dict[str, Any], children: builders.Children) -> None:
        wanted = {(m["apiVersion"], m["kind"], m["metadata"]["name"])
                  for m in children.manifests}
        meta = pool["metadata"]
        for api_version, kind, child_name in _OPTIONAL:
            name = child_name(meta["name"])
            if (api_version, kind, name) in wanted:
                continue
            if kind == "PodMonitor" and not self.pod_monitor_api:
                continue
            # Without KEDA there is nothing of its kinds, nor its Secret, to look for.
            keda_child = api_version.startswith("keda.sh/") or name == builders.keda_name(
                meta["name"])
            if keda_child and not self.keda_api:
                continue
            live = await self.kube.get(api_version, kind, meta["namespace"], name)
            owners = (live or {}).get("metadata", {}).get("ownerReferences") or []
            # Only delete what this pool owns: a same-named object of someone else stays.
            if any(o.get("uid") == meta["uid"] for o in owners):
                await self.kube.delete(api_version, kind, meta["namespace"], name)
                await self.kube.post_event(pool, "Normal", "Deleted",
                                           f"deleted {kind} {name}: no longer wanted")

    async def _write_status(self, pool: dict[str, Any], observation: Observation) -> None:
        meta = pool["metadata"]
        key = (meta["namespace"], meta["name"])
        current = pool.get("status") or {}
        desired = compute_status(observation, current, self.clock())
        self.conditions[key] = {c["type"]: c["status"] for c in desired["conditions"]}
        self.condition_details[key] = {c["type"]: (c["status"], c.get("reason") or "")
                                       for c in desired["conditions"]}
        if not status_changed(current, desired):
            return
        written = await self.kube.patch_pool_status(meta["namespace"], meta["name"], desired)
        if written is not None:
            self.pools.put(key, written)
            # Its watch event then needs no reconcile, unless the spec changed meanwhile (the
            # watch may deliver only this newest version of the pool).
            if int(written["metadata"].get("generation") or 0) == observation.generation:
                self._own_status_versions[key] = written["metadata"].get("resourceVersion", "")
        await self._announce(pool, announce.flips(current, desired))


# Kinds a child of which, refused as invalid after someone's edit, is deleted and made anew:
# those the operator may delete (the chart's RBAC). Never the Deployment (that would take every
# pod down at once); a ConfigMap or Service so refused (say, made `immutable`) is reported as
# ApplyFailed instead.
RECREATABLE_KINDS = frozenset({
    ("policy/v1", "PodDisruptionBudget"), ("v1", "Secret"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"), ("monitoring.coreos.com/v1", "PodMonitor"),
    ("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication")})


def _recreatable(live: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """Whether a child refused as invalid may be deleted and made anew: one of the
    RECREATABLE_KINDS that this pool controls."""
    if live is None or (desired["apiVersion"], desired["kind"]) not in RECREATABLE_KINDS:
        return False
    ours = {o.get("uid") for o in desired["metadata"].get("ownerReferences") or []}
    return any(o.get("uid") in ours and o.get("controller")
               for o in (live.get("metadata") or {}).get("ownerReferences") or [])


def _not_ours(live: dict[str, Any] | None, desired: dict[str, Any]) -> str | None:
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


def _reconciled_before(pool: dict[str, Any]) -> bool:
    return bool(pool.get("status"))


def _deployment_metadata(desired: dict[str, Any]) -> dict[str, Any]:
    return {k: desired[k] for k in ("labels", "annotations", "ownerReferences") if k in desired}


def _validation_message(error: ValidationError) -> str:
    # Field locations and messages only: pydantic's input echo could contain secret values.
    parts = []
    for item in error.errors(include_input=False, include_url=False)[:5]:
        location = ".".join(str(p) for p in item["loc"])
        parts.append(f"spec.{location}: {item['msg']}")
    return "; ".join(parts)
