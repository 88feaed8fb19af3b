"""One level-based reconcile of one AgentPool: observe -> desired -> apply -> status.

Run by the work queue for every trigger (the pool changed, an owned Deployment changed, the
periodic resync). It is idempotent and quiet: children that already match are not written, and
status is written only when it changed. Deleting an AgentPool needs no finalizer: every child
has an ownerReference, so the garbage collector removes them.
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

from agentpool_operator import builders
from agentpool_operator.api import API_VERSION, KIND, AgentPoolSpec, ConditionType
from agentpool_operator.builders.context import PoolContext, SecretValues
from agentpool_operator.drift import contains, differing_paths, with_applied_hash
from agentpool_operator.errors import ApiFailure
from agentpool_operator.k8s import Kube
from agentpool_operator.metrics import OperatorMetrics
from agentpool_operator.status import (
    Observation,
    Problem,
    Reasons,
    compute_status,
    crash_looping,
    deployment_problems,
    status_changed,
)
from agentpool_operator.workqueue import Requeue

log = logging.getLogger(__name__)
PoolKey = tuple[str, str]
SECRET_RETRY_SECONDS = 10.0
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

    async def __call__(self, key: PoolKey) -> None:
        started = time.monotonic()
        result = "success"
        try:
            await self._reconcile(key)
        except Requeue:
            result = "waiting"
            raise
        except Exception:
            result = "error"
            raise
        finally:
            self.metrics.reconciles.labels(result=result).inc()
            self.metrics.reconcile_duration.observe(time.monotonic() - started)

    async def _reconcile(self, key: PoolKey) -> None:
        namespace, name = key
        pool = await self.kube.get(API_VERSION, KIND, namespace, name)
        if pool is None or pool["metadata"].get("deletionTimestamp"):
            self.conditions.pop(key, None)
            return
        generation = int(pool["metadata"].get("generation") or 0)
        try:
            spec = AgentPoolSpec.model_validate(pool.get("spec") or {})
        except ValidationError as error:
            problem = Problem("InvalidSpec", _validation_message(error), blocking=True)
            await self._write_status(pool, Observation(generation, 0, 0, None, None, [problem]))
            return  # nothing to retry until the spec changes

        observation = Observation(
            generation=generation, min_replicas=spec.min_replicas,
            spec_replicas=spec.replicas, selector=builders.selector_string(name), deployment=None,
        )
        try:
            secrets = await self._read_secrets(namespace, spec)
            ctx = PoolContext(name=name, namespace=namespace, uid=pool["metadata"]["uid"],
                              spec=spec, secrets=secrets, pod_monitor_api=self.pod_monitor_api,
                              keda_api=self.keda_api)
            try:
                children = builders.build_children(ctx)
            except builders.InvalidDatabaseDsn as error:
                raise _Blocked(Problem(Reasons.INVALID_DATABASE_DSN, str(error), True)) from None
            deployment = await self._apply_children(pool, children)
            await self._prune(pool, children)
        except _Blocked as blocked:
            observation.problems.append(blocked.problem)
            await self._write_status(pool, observation)
            if blocked.retry_after is not None:
                raise Requeue(blocked.retry_after, blocked.problem.message) from None
            return
        except ApiFailure as failure:
            observation.problems.append(Problem(Reasons.APPLY_FAILED, str(failure), True))
            await self._write_status(pool, observation)
            raise

        observation = Observation(
            generation=generation, min_replicas=spec.min_replicas,
            spec_replicas=spec.replicas, selector=observation.selector, deployment=deployment,
        )
        observation.problems.extend(deployment_problems(deployment))
        unavailable = int(((deployment or {}).get("status") or {}).get("unavailableReplicas") or 0)
        if unavailable:
            pods = await self.kube.list_pods(namespace, builders.selector_labels(name))
            looping = crash_looping(pods)
            if looping is not None:
                observation.problems.append(looping)
        await self._write_status(pool, observation)

    async def _read_secrets(self, namespace: str, spec: AgentPoolSpec) -> SecretValues:
        async def value(ref_path: str, secret: str, key: str) -> str:
            data = await self.kube.read_secret(namespace, secret)
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
                              ) -> dict[str, Any] | None:
        """Apply each child that differs from its live object; return the live Deployment.

        Three rounds: what the pods use (ConfigMap, Secret, Service, PDB) before the
        Deployment, and what observes it (HPA, PodMonitor, ...) after. Children within a round
        are independent, so their requests run concurrently.
        """
        manifests = children.manifests
        index = next(i for i, m in enumerate(manifests) if m["kind"] == "Deployment")
        await self._ensure_all(pool, manifests[:index])
        deployment = await self._ensure(pool, manifests[index])
        await self._ensure_all(pool, manifests[index + 1:])
        return deployment

    async def _ensure_all(self, pool: dict[str, Any], manifests: Sequence[dict[str, Any]]
                          ) -> None:
        results = await asyncio.gather(*(self._ensure(pool, m) for m in manifests),
                                       return_exceptions=True)
        # Every request has finished; report the first failure as a sequential loop would.
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _ensure(self, pool: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
        """The live child, applied first if it lacks or differs in a field we want."""
        desired = with_applied_hash(manifest)
        meta = desired["metadata"]
        live = await self.kube.get(desired["apiVersion"], desired["kind"],
                                   meta["namespace"], meta["name"])
        if live is None or not contains(live, desired):
            changed = [] if live is None else differing_paths(live, desired)
            live = await self.kube.apply(desired)
            await self._announce_apply(pool, desired["kind"], meta["name"], changed)
        return live

    async def _announce_apply(self, pool: dict[str, Any], kind: str, name: str,
                              changed: list[str]) -> None:
        if not changed:
            message, reason = f"created {kind} {name}", "Created"
        else:
            shown = ", ".join(changed[:5])
            message, reason = f"updated {kind} {name} ({shown})", "Updated"
        log.info("%s/%s: %s", pool["metadata"]["namespace"], pool["metadata"]["name"], message)
        await self.kube.post_event(pool, "Normal", reason, message)

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
        if not status_changed(current, desired):
            return
        await self.kube.patch_pool_status(meta["namespace"], meta["name"], desired)
        await self._announce_flips(pool, current, desired)

    async def _announce_flips(self, pool: dict[str, Any], current: dict[str, Any],
                              desired: dict[str, Any]) -> None:
        before = {c["type"]: c for c in current.get("conditions") or []}
        for condition in desired["conditions"]:
            old = before.get(condition["type"])
            if old is not None and old["status"] == condition["status"]:
                continue
            if condition["type"] == ConditionType.DEGRADED and condition["status"] == "True":
                await self.kube.post_event(pool, "Warning", condition["reason"],
                                           condition["message"])
            elif condition["type"] == ConditionType.READY and (old is not None or
                                                                condition["status"] == "True"):
                kind = "Normal" if condition["status"] == "True" else "Warning"
                await self.kube.post_event(pool, kind, condition["reason"], condition["message"])


def _validation_message(error: ValidationError) -> str:
    # Field locations and messages only: pydantic's input echo could contain secret values.
    parts = []
    for item in error.errors(include_input=False, include_url=False)[:5]:
        location = ".".join(str(p) for p in item["loc"])
        parts.append(f"spec.{location}: {item['msg']}")
    return "; ".join(parts)
