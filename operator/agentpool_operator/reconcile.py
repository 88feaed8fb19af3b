"""One level-based reconcile of one AgentPool: observe -> plan -> apply -> status.

Run by the work queue for every trigger (the pool changed, an owned child changed or was
deleted, the periodic resync). The steps are modules of their own: what the cluster looks
like comes from the store (`store.py`, fed by the watches), the desired children from the pure
plan (`plan.py` and the builders), writing them from the applier (`apply.py`), and the status
from the status writer (`status_writer.py`). It is idempotent and quiet: children that
already match are not written, and status is written only when it changed. Deleting an
AgentPool needs no finalizer: every child has an ownerReference, so the garbage collector
removes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from agentpool_operator import builders
from agentpool_operator.api import API_VERSION, BUDGET_KIND, KIND, AgentPoolSpec, Reason
from agentpool_operator.apply import PERMANENT_CODES, Applier
from agentpool_operator.budgets import BudgetId, BudgetProblem, references, resolve
from agentpool_operator.builders.context import PoolContext, ResolvedBudgetKey, SecretValues
from agentpool_operator.builders.kinds import KEDA_CRD, POD_MONITOR_CRD
from agentpool_operator.cache import RecentReads
from agentpool_operator.errors import ApiFailure
from agentpool_operator.instrumentation import OperatorMetrics
from agentpool_operator.k8s import Kube
from agentpool_operator.outcomes import Blocked, Refused
from agentpool_operator.plan import InvalidSpec, plan_children
from agentpool_operator.pod_checks import PodChecks
from agentpool_operator.queues import QueueRegistry
from agentpool_operator.status import Observation, Problem, crash_looping, deployment_problems
from agentpool_operator.status_writer import StatusWriter
from agentpool_operator.store import PoolKey, PoolStore
from agentpool_operator.verified import Verified, still_holds
from agentpool_operator.workqueue import Requeue

SECRET_RETRY_SECONDS = 10.0
SECRET_READ_SHARED_SECONDS = 2.0


@dataclass
class Reconciler:
    """Runs the steps for one pool; remembers what each pool's last full reconcile verified."""

    kube: Kube
    metrics: OperatorMetrics
    store: PoolStore
    applier: Applier
    status: StatusWriter
    queues: QueueRegistry = field(default_factory=QueueRegistry)
    """Each pool's queue as last read (for deletion costs and the metrics API's directory)."""
    pod_checks: PodChecks = field(default_factory=PodChecks)
    """When each pool with unavailable pods is looked at for crash loops, and what was found."""
    _verified: dict[PoolKey, Verified] = field(default_factory=dict)
    _last_full: dict[PoolKey, float] = field(default_factory=dict)
    _secret_reads: RecentReads[tuple[str, str], dict[str, str] | None] = field(
        default_factory=lambda: RecentReads(SECRET_READ_SHARED_SECONDS))

    @classmethod
    def for_cluster(cls, kube: Kube, metrics: OperatorMetrics) -> Reconciler:
        store = PoolStore()
        return cls(kube=kube, metrics=metrics, store=store, applier=Applier(kube, store),
                   status=StatusWriter(kube, store))

    def checked_within(self, key: PoolKey, seconds: float) -> bool:
        """Whether a full reconcile of `key` succeeded in the last `seconds`."""
        last = self._last_full.get(key)
        return last is not None and time.monotonic() - last < seconds

    def forget(self, key: PoolKey) -> None:
        """The pool is gone: drop what every step remembers of it."""
        self._verified.pop(key, None)
        self._last_full.pop(key, None)
        self.applier.forget(key)
        self.status.forget(key)
        self.pod_checks.forget(key)
        self.queues.forget(key)

    async def __call__(self, key: PoolKey) -> None:
        started = time.monotonic()
        result = "success"
        try:
            await self._reconcile(key)
        except Requeue:
            result = "waiting"
            raise
        except Refused:
            result = "error"
        except Exception:
            result = "error"
            raise
        finally:
            self.metrics.reconciles.labels(result=result).inc()
            self.metrics.reconcile_duration.observe(time.monotonic() - started)

    async def _reconcile(self, key: PoolKey) -> None:
        full = self.store.take_full(key)
        verified, pool, deployment = (self._verified.get(key), self.store.pools.get(key),
                                      self.store.deployments.get(key))
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
        pool = self.store.pools.get(key)
        if pool is None:
            pool = await self.kube.get(API_VERSION, KIND, namespace, name)
        if pool is None or pool["metadata"].get("deletionTimestamp"):
            self.status.forget(key)
            return
        self.store.pools.put(key, pool)
        generation = int(pool["metadata"].get("generation") or 0)
        try:
            spec = AgentPoolSpec.model_validate(pool.get("spec") or {})
        except ValidationError as error:
            problem = Problem(reason=Reason.INVALID_SPEC, message=_validation_message(error),
                              blocking=True)
            await self.status.write(pool, Observation(
                generation=generation, min_replicas=0, spec_replicas=0, selector=None,
                deployment=None, problems=[problem]))
            return  # nothing to retry until the spec changes

        observation = Observation(
            generation=generation, min_replicas=spec.min_replicas, spec_replicas=spec.replicas,
            selector=builders.selector_string(name), deployment=None)
        try:
            children = await self._plan(key, pool, spec)
            deployment, deployment_meta = await self.applier.apply_children(pool, children)
            await self.applier.prune_once(pool, children)
        except Blocked as blocked:
            observation.problems.append(blocked.problem)
            await self.status.write(pool, observation)
            if blocked.retry_after is not None:
                raise Requeue(blocked.retry_after, blocked.problem.message) from None
            return
        except ApiFailure as failure:
            observation.problems.append(Problem(reason=Reason.APPLY_FAILED,
                                                message=str(failure), blocking=True))
            await self.status.write(pool, observation)
            if failure.code in PERMANENT_CODES:
                # The same request would be refused again: reported, not retried.
                raise Refused(str(failure)) from None
            raise

        # Our apply's answer, a GET's or the watched body: the watch confirms the first two.
        self.store.deployments.put(key, deployment, watched=False)
        self._last_full[key] = time.monotonic()
        self._verified[key] = Verified(
            uid=pool["metadata"]["uid"], generation=generation,
            min_replicas=spec.min_replicas, spec_replicas=spec.replicas,
            deployment_generation=int(deployment["metadata"].get("generation") or 0),
            deployment_metadata=_deployment_metadata(deployment_meta))
        await self._observe(pool, Observation(
            generation=generation, min_replicas=spec.min_replicas,
            spec_replicas=spec.replicas, selector=observation.selector, deployment=deployment))

    async def _plan(self, key: PoolKey, pool: dict[str, Any], spec: AgentPoolSpec
                    ) -> builders.Children:
        """The desired children, or Blocked with the reason there can be none now."""
        conflict = self.store.queue_claims.conflict(key)
        if conflict is not None:
            # Another pool's deletion (or its claim moving) enqueues this one again.
            raise Blocked(Problem(reason=Reason.QUEUE_CONFLICT, message=conflict,
                                  blocking=True))
        namespace, name = key
        secrets = await self._read_secrets(namespace, spec)
        self.queues.record(key, spec, secrets.redis_url)
        budgets = await self._resolve_budgets(namespace, spec)
        served = self.store.served_crds
        ctx = PoolContext(name=name, namespace=namespace, uid=pool["metadata"]["uid"],
                          spec=spec, secrets=secrets, pod_monitor_api=POD_MONITOR_CRD in served,
                          keda_api=KEDA_CRD in served, budgets=budgets)
        try:
            return plan_children(ctx)
        except builders.InvalidDatabaseDsn as error:
            raise Blocked(Problem(reason=Reason.INVALID_DATABASE_DSN, message=str(error),
                                  blocking=True)) from None
        except InvalidSpec as error:
            # Deterministic: nothing to retry until the spec changes.
            raise Blocked(Problem(reason=Reason.INVALID_SPEC, message=str(error),
                                  blocking=True)) from None

    async def _resolve_budgets(self, namespace: str, spec: AgentPoolSpec
                               ) -> tuple[ResolvedBudgetKey, ...]:
        """The keys of the pool's AgentBudgets, or Blocked with the reason there are none.
        Budgets come from the watch; one it has not delivered is read (it may be in a
        namespace the operator does not watch). Not retried on a timer: a budget's creation
        or change reconciles the pools naming it (the watch), the resync covers the rest."""
        found: dict[BudgetId, dict[str, Any] | None] = {}
        for _, budget_id, _ in references(namespace, spec):
            body = self.store.budgets.get(budget_id)
            if body is None:
                try:
                    body = await self.kube.get(API_VERSION, BUDGET_KIND, *budget_id)
                except ApiFailure as failure:
                    if failure.code not in PERMANENT_CODES:
                        raise
                    raise Blocked(Problem(
                        reason=Reason.BUDGET_NOT_FOUND, blocking=True,
                        message=f"AgentBudget {budget_id[0]}/{budget_id[1]} cannot be read "
                        f"({failure}): the operator reads budgets only in the namespaces it "
                        "serves (the chart's operator.watchNamespaces)")) from None
            found[budget_id] = body
        try:
            return resolve(namespace, spec, found)
        except BudgetProblem as problem:
            raise Blocked(Problem(reason=problem.reason, message=problem.message,
                                  blocking=True)) from None

    async def _observe(self, pool: dict[str, Any], observation: Observation) -> None:
        """Status from the Deployment, and from its pods when some have been unavailable
        long enough to be worth a look (`pod_checks.py`); requeued for the next look."""
        deployment = observation.deployment
        observation.problems.extend(deployment_problems(deployment))
        unavailable = int(((deployment or {}).get("status") or {}).get("unavailableReplicas") or 0)
        meta = pool["metadata"]
        key = (meta["namespace"], meta["name"])
        if not unavailable:
            self.pod_checks.all_available(key)
            await self.status.write(pool, observation)
            return
        next_look = self.pod_checks.due_in(key)
        if next_look <= 0:
            pods = await self.kube.list_pods(meta["namespace"],
                                             builders.selector_labels(meta["name"]))
            next_look = self.pod_checks.looked(key, crash_looping(pods))
        looping = self.pod_checks.last_found(key)
        if looping is not None:
            observation.problems.append(looping)
        await self.status.write(pool, observation)
        raise Requeue(next_look, "pods unavailable: looking at them again")

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
            raise Blocked(Problem(reason=Reason.SECRET_MISSING, message=message, blocking=True),
                          SECRET_RETRY_SECONDS)

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


def _deployment_metadata(desired: dict[str, Any]) -> dict[str, Any]:
    return {k: desired[k] for k in ("labels", "annotations", "ownerReferences") if k in desired}


def _validation_message(error: ValidationError) -> str:
    # Field locations and messages only: pydantic's input echo could contain secret values.
    parts = []
    for item in error.errors(include_input=False, include_url=False)[:5]:
        location = ".".join(str(p) for p in item["loc"])
        parts.append(f"spec.{location}: {item['msg']}")
    return "; ".join(parts)
