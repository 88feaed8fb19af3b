"""The AgentPool API: the spec models, the single source of truth for the CRD's spec.

Users write these fields with `kubectl apply`; `crd.py` turns the models into the CRD's
schema (descriptions come from the attribute docstrings below, so they are what
`kubectl explain agentpool.spec` prints); the operator reads a live object back with
`AgentPoolSpec.model_validate(obj["spec"])`. (Autoscaling and the status have their own
modules.) Defaults here and in the CRD are the same values:
the API server fills them in, so `kubectl get -o yaml` shows the effective configuration.

Required fields are only what the operator cannot guess: `image`, `handler` and
`queue.redis.urlSecretRef` (plus `database.dsnSecretRef` and `database.connectionBudget` when a
database is used). Cross-field invariants are CEL rules (`x-kubernetes-validations`) so the
API server rejects a bad spec with a message saying how to fix it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from agent_runtime import contract
from agentpool_operator.api.autoscaling import AutoscalingSpec
from agentpool_operator.api.autoscaling import ScaleDownRules as ScaleDownRules
from agentpool_operator.api.autoscaling import ScaleUpRules as ScaleUpRules
from agentpool_operator.api.budget import MAX_POOL_BUDGETS, BudgetReference
from agentpool_operator.api.common import (
    ApiModel,
    SecretKeyRef,
    cel,
    immutable,
    section,
    validations,
)
from agentpool_operator.api.pod import PodOverrides, ResourceRequirements
from agentpool_operator.api.quantity import ResourceQuantity, whole_bytes
from agentpool_operator.api.spec_rules import SPEC_RULES
from agentpool_operator.api.status import AgentPoolStatus as AgentPoolStatus

# The handler reference and stream name grammars are the runtime's (agent_runtime.contract):
# the API server accepts exactly the references a worker can import.
HANDLER_PATTERN = contract.HANDLER_REF_PATTERN
STREAM_PATTERN = contract.STREAM_PATTERN
IMAGE_PATTERN = r"^[^\s]+$"
DEFAULT_PGBOUNCER_IMAGE = "ghcr.io/cloudnative-pg/pgbouncer:1.24.1"
_DAY = 86400


def _cel_regex(pattern: str) -> str:
    # A Python regex as a single-quoted CEL string literal (backslashes escaped).
    return "'" + pattern.replace("\\", "\\\\") + "'"


class WorkersSpec(ApiModel):
    """Worker processes in each pod and their lifecycle (recycling, timeouts, draining)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.drainGracePeriodSeconds >= self.taskTimeoutSeconds",
                "workers.drainGracePeriodSeconds must be >= workers.taskTimeoutSeconds, so a "
                "pod being stopped can finish its running tasks; raise the grace period or "
                "lower the timeout",
                field_path=".drainGracePeriodSeconds",
            )
        )
    )

    per_pod: int = Field(default=contract.DEFAULT_WORKERS, ge=1, le=contract.MAX_WORKERS)
    """Warm worker processes per pod; each runs the handler (pod capacity = perPod x
    concurrency tasks)."""
    concurrency: int = Field(default=contract.DEFAULT_CONCURRENCY, ge=1,
                             le=contract.MAX_CONCURRENCY)
    """Tasks each worker process runs at once (asyncio concurrency); use 1 for CPU-bound or
    blocking handlers."""
    max_tasks_per_worker: int = Field(default=0, ge=0, le=10_000_000)
    """Recycle a worker process after this many tasks, to contain leaks; 0 never recycles."""
    max_memory_per_worker: ResourceQuantity | None = Field(
        default=None,
        json_schema_extra=validations(cel(
            "!isQuantity(string(self)) || "
            "(quantity(string(self)).isInteger() && "
            "quantity(string(self)).compareTo(quantity('0')) > 0)",
            "workers.maxMemoryPerWorker must be a whole number of bytes above 0, e.g. 512Mi "
            "(the suffix m means thousandths: 500m is half a byte)",
        )),
    )
    """Recycle a worker process once its memory use passes this quantity (e.g. 1Gi),
    before the container limit makes the kernel kill the whole pod; must be below
    resources.limits.memory. Unset: no per-worker cap."""
    task_timeout_seconds: int = Field(default=contract.DEFAULT_TASK_TIMEOUT_SECONDS, ge=1,
                                      le=7 * _DAY)
    """Hard deadline of one task; the worker running it is killed and replaced after it."""
    drain_grace_period_seconds: int = Field(default=contract.DEFAULT_DRAIN_GRACE_SECONDS, ge=1,
                                            le=7 * _DAY)
    """How long a stopping pod may take to finish running tasks before it is killed
    (becomes terminationGracePeriodSeconds); must be >= taskTimeoutSeconds."""

    @field_validator("max_memory_per_worker")
    @classmethod
    def _whole_bytes(cls, value: int | str | None) -> int | str | None:
        # Mirrors the CEL rule, for objects stored before it existed.
        if value is not None:
            whole_bytes(value)
        return value


class RedisConnection(ApiModel):
    """How to reach a Redis server."""

    url_secret_ref: SecretKeyRef
    """Secret key whose value is the Redis URL (redis://, or rediss:// for TLS), including
    any username and password."""


class QueueSpec(ApiModel):
    """The Redis Streams work queue the pool consumes tasks from."""

    # On the object, not on `stream`: a field-level transition rule only runs when the old
    # and the new object both have the field, so it would let a stream be set or unset.
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.stream) == has(oldSelf.stream) && "
                "(!has(self.stream) || self.stream == oldSelf.stream)",
                "queue.stream is immutable (it cannot be set, changed or removed after "
                "creation): tasks already queued on the old stream would never run; create a "
                "new AgentPool for a new stream",
                field_path=".stream",
                reason="FieldValueForbidden",
            )
        )
    )

    redis: RedisConnection
    """The Redis server that holds the queue."""
    stream: str | None = Field(
        default=None, min_length=1, max_length=contract.STREAM_MAX_LENGTH, pattern=STREAM_PATTERN
    )
    """Name of the Redis stream producers add tasks to. Unset: a key unique to this pool,
    `agentpool:{<namespace>/<pool>}:tasks`. Immutable: changing it would orphan the tasks already
    queued."""
    consumer_group: str = Field(
        default=contract.DEFAULT_CONSUMER_GROUP,
        min_length=1,
        max_length=contract.STREAM_MAX_LENGTH,
        pattern=STREAM_PATTERN,
        json_schema_extra=immutable(
            "queue.consumerGroup",
            "tasks delivered to the old group but not acknowledged would never be retried; "
            "create a new AgentPool instead",
        ),
    )
    """Redis consumer group the workers read through. Immutable: changing it would strand
    tasks delivered to the old group and not yet acknowledged."""
    max_deliveries: int = Field(default=contract.DEFAULT_MAX_DELIVERIES, ge=1,
                                le=contract.MAX_DELIVERIES_LIMIT)
    """Executions of one task that started (retries, and runs that took their worker down,
    together) before it is moved to the pool's dead-letter stream instead of being run again;
    a hand-over of a task that never started does not count. A hard bound."""
    lease_seconds: int = Field(default=contract.DEFAULT_LEASE_SECONDS,
                               ge=contract.MIN_LEASE_SECONDS, le=3600)
    """How long a task stays claimed by a worker without a lease renewal before another pod
    may take it over; running tasks renew their lease, so long tasks are not stolen."""


class CacheSpec(ApiModel):
    """The Redis result and response cache available to handlers."""

    enabled: bool = False
    """Give handlers a cache client."""
    redis: RedisConnection | None = None
    """The Redis server for the cache; unset uses the queue's Redis."""
    ttl_seconds: int = Field(default=contract.DEFAULT_CACHE_TTL_SECONDS, ge=1, le=30 * _DAY)
    """Default time-to-live of cache entries."""


class PgBouncerSpec(ApiModel):
    """The PgBouncer sidecar in every pod, which pools the workers' database connections."""

    image: str = Field(default=DEFAULT_PGBOUNCER_IMAGE, min_length=1, max_length=512)
    """PgBouncer container image."""
    pool_mode: Literal["session", "transaction"] = "transaction"
    """When a server connection returns to the pool: after each transaction (most sharing;
    no session state such as SET or advisory locks) or when the client disconnects."""
    default_pool_size: int = Field(default=5, ge=1, le=10_000)
    """Server connections each pod's PgBouncer may open to the database. The pool's total is
    maxReplicas x defaultPoolSize, which must fit in connectionBudget."""
    max_client_connections: int = Field(default=100, ge=1, le=100_000)
    """Client connections each pod's PgBouncer accepts from its workers; must be at least
    workers.perPod x workers.concurrency."""


class DatabaseSpec(ApiModel):
    """The PostgreSQL database handlers use, reached through a PgBouncer sidecar."""

    dsn_secret_ref: SecretKeyRef
    """Secret key whose value is the PostgreSQL DSN (postgresql://user:password@host/db)."""
    connection_budget: int = Field(ge=1, le=100_000)
    """Most server connections this pool may hold on the database across all its pods,
    typically a share of the server's max_connections. Leave headroom for pods that
    overlap during a rollout."""
    pgbouncer: PgBouncerSpec = section(PgBouncerSpec)
    """PgBouncer sidecar settings."""


class PgBouncerExporterSpec(ApiModel):
    """PgBouncer's pool metrics (clients waiting, longest wait, server connections in use),
    exported by the runtime container itself on `metricsPort`, under the metric names of
    prometheus-community's pgbouncer_exporter v0.11; no sidecar.

    The runtime reads PgBouncer's admin console over loopback as a stats-only user whose
    credentials live in the pool's derived Secret.
    """

    enabled: bool = True
    """Export PgBouncer's metrics from every pod of a pool with a database; no effect
    without one."""


class MonitoringSpec(ApiModel):
    """Metrics endpoints and Prometheus integration."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!self.podMonitor || self.metrics",
                "monitoring.podMonitor needs monitoring.metrics: enable metrics or disable "
                "the PodMonitor",
                field_path=".podMonitor",
            ),
        )
    )

    metrics: bool = True
    """Serve the runtime's Prometheus metrics on metricsPort."""
    metrics_port: int = Field(default=contract.DEFAULT_METRICS_PORT, ge=1024, le=65535)
    """Container port of the metrics endpoint."""
    pod_monitor: bool = False
    """Create a PodMonitor (needs the Prometheus Operator's CRDs in the cluster)."""
    pgbouncer_exporter: PgBouncerExporterSpec = section(PgBouncerExporterSpec)
    """PgBouncer's pool metrics, served by the runtime (only in pools with a database)."""

    @model_validator(mode="before")
    @classmethod
    def _legacy_exporter_flag(cls, data: Any) -> Any:
        # The field was a bare boolean before it grew settings; objects stored then still read.
        if isinstance(data, dict):
            for key in ("pgbouncerExporter", "pgbouncer_exporter"):
                if isinstance(data.get(key), bool):
                    data = {**data, key: {"enabled": data[key]}}
        return data


class AgentPoolSpec(ApiModel):
    """Desired state of an AgentPool: a warm, autoscaled pool of AI-agent workers."""

    model_config = ConfigDict(json_schema_extra=validations(*SPEC_RULES))

    image: str = Field(
        max_length=512,
        json_schema_extra=validations(
            cel(
                f"self.matches({_cel_regex(IMAGE_PATTERN)})",
                "image must be a container image reference without spaces, "
                "e.g. registry.example.com/team/agent:1.4.2",
            )
        ),
    )
    """Container image with the agent code and the agentpool runtime."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """When to pull the image; unset lets Kubernetes decide (Always for :latest)."""
    handler: str = Field(
        max_length=contract.HANDLER_REF_MAX_LENGTH,
        json_schema_extra=validations(
            cel(
                f"self.matches({_cel_regex(HANDLER_PATTERN)})",
                "handler must be 'module:function' (a Python import path, a colon, then an "
                "attribute path), e.g. myagents.tasks:handle or myagents.tasks:Agent.run",
            )
        ),
    )
    """The task handler as `module:function`, imported once per warm worker process."""
    replicas: int = Field(default=1, ge=0, le=1000)
    """Desired number of pods, within [minReplicas, maxReplicas]. Set by kubectl scale or,
    when autoscaling is enabled, by the autoscaler through the scale subresource."""
    min_replicas: int = Field(default=1, ge=0, le=1000)
    """Lower bound for replicas; 0 allows an idle pool to stop all pods (not with
    autoscaling, which needs at least one pod)."""
    max_replicas: int = Field(default=10, ge=1, le=1000)
    """Upper bound for replicas; also sizes the database connection budget."""
    workers: WorkersSpec = section(WorkersSpec)
    """Worker processes per pod and their lifecycle."""
    resources: ResourceRequirements = section(ResourceRequirements)
    """CPU and memory for the worker container (shared by all its worker processes)."""
    queue: QueueSpec
    """Where tasks come from."""
    cache: CacheSpec = section(CacheSpec)
    """Optional Redis cache for handlers."""
    database: DatabaseSpec | None = None
    """Optional PostgreSQL database, pooled through a PgBouncer sidecar; unset: none."""
    autoscaling: AutoscalingSpec = section(AutoscalingSpec)
    """Queue-driven autoscaling."""
    monitoring: MonitoringSpec = section(MonitoringSpec)
    """Metrics and Prometheus integration."""
    pod: PodOverrides = section(PodOverrides)
    """Scheduling and metadata overrides for the worker pods."""
    # Naming one budget twice is harmless (the operator uses it once); a CEL uniqueness rule
    # over optional namespaces would cost more than the API server's estimate allows.
    budgets: list[BudgetReference] | None = Field(default=None, max_length=MAX_POOL_BUDGETS)
    """AgentBudgets whose keys the handlers use (`ctx.budget(name)`): fleet-wide limits of
    external APIs, shared with every other pool using the same budget. A budget in another
    namespace must be shared with this one (its `sharedWith`); two budgets must not define
    the same key name."""

    @field_validator("handler")
    @classmethod
    def _handler_format(cls, value: str) -> str:
        # Mirrors the CEL rule, for objects that did not come through the API server.
        return contract.check_handler_ref(value)

    @field_validator("image")
    @classmethod
    def _image_format(cls, value: str) -> str:
        if not re.match(IMAGE_PATTERN, value):
            raise ValueError("image must be a container image reference without spaces")
        return value


AGENTPOOL_DESCRIPTION = (
    "AgentPool runs a warm, autoscaled pool of AI-agent workers: pods whose worker "
    "processes take tasks from a Redis stream and run a Python handler, with pooled "
    "PostgreSQL connections through a PgBouncer sidecar."
)
