"""Cross-field CEL rules of `AgentPoolSpec`, evaluated by the API server on every write.

They sit on the spec object because they relate fields of different sections. Each message
says what is wrong and how to fix it. (No `messageExpression` with the actual numbers: the
API server rejected such `string(int)` concatenations as far over its CEL cost budget.)
The API server applies schema defaults before evaluating them, so defaulted fields are always
present; only genuinely optional ones (database, memory values) are guarded with `has()`.
The API server enforces them on every create, update and /scale write, so the operator can
rely on them for objects it reads back; pydantic does not repeat them.
"""

from __future__ import annotations

from agent_runtime.contract import PGBOUNCER_PORT
from agentpool_operator.api.common import cel

_BOUNDS = cel(
    "self.minReplicas <= self.maxReplicas",
    "spec.minReplicas must be <= spec.maxReplicas: lower minReplicas or raise maxReplicas",
    field_path=".minReplicas",
)

_REPLICAS_IN_BOUNDS = cel(
    "self.replicas >= self.minReplicas && self.replicas <= self.maxReplicas",
    "spec.replicas must be between spec.minReplicas and spec.maxReplicas; set replicas "
    "(default 1) inside the bounds or change the bounds",
    field_path=".replicas",
)

_AUTOSCALING_MIN = cel(
    "!self.autoscaling.enabled || self.minReplicas >= 1",
    "spec.minReplicas must be >= 1 when spec.autoscaling.enabled: the autoscaler cannot "
    "scale up from zero pods; raise minReplicas or disable autoscaling",
    field_path=".minReplicas",
)

_CONNECTION_BUDGET = cel(
    "!has(self.database) || "
    "self.maxReplicas * self.database.pgbouncer.defaultPoolSize <= "
    "self.database.connectionBudget",
    "spec.maxReplicas x spec.database.pgbouncer.defaultPoolSize exceeds "
    "spec.database.connectionBudget: every pod's PgBouncer may open defaultPoolSize server "
    "connections; lower maxReplicas or defaultPoolSize, or raise connectionBudget",
    field_path=".database.connectionBudget",
)

_CLIENT_CONNECTIONS = cel(
    "!has(self.database) || self.database.pgbouncer.maxClientConnections >= "
    "self.workers.perPod * self.workers.concurrency",
    "spec.database.pgbouncer.maxClientConnections must be at least workers.perPod x "
    "workers.concurrency, or concurrent tasks will wait for a database connection; raise "
    "maxClientConnections",
    field_path=".database.pgbouncer.maxClientConnections",
)

# The memory values are int-or-string (CEL `dyn`): `string()` accepts both forms and
# `isQuantity` keeps a malformed value (already reported by the schema) from also failing here.
_WORKER_MEMORY = cel(
    "!has(self.workers.maxMemoryPerWorker) || !has(self.resources.limits) || "
    "!('memory' in self.resources.limits) || "
    "!isQuantity(string(self.workers.maxMemoryPerWorker)) || "
    "!isQuantity(string(self.resources.limits['memory'])) || "
    "quantity(string(self.workers.maxMemoryPerWorker)).isLessThan("
    "quantity(string(self.resources.limits['memory'])))",
    "spec.workers.maxMemoryPerWorker must be below spec.resources.limits.memory: a worker "
    "is recycled at its cap, while the container limit kills every worker in the pod; lower "
    "maxMemoryPerWorker or raise the memory limit",
    field_path=".workers.maxMemoryPerWorker",
)

# Every container of a pod shares its network namespace: PgBouncer's loopback port is taken.
_METRICS_PORT_FREE = cel(
    f"!has(self.database) || self.monitoring.metricsPort != {PGBOUNCER_PORT}",
    f"spec.monitoring.metricsPort must not be {PGBOUNCER_PORT}: the PgBouncer sidecar listens "
    "on it in every pod of a pool with a database; choose another port",
    field_path=".monitoring.metricsPort",
)

SPEC_RULES = (
    _BOUNDS,
    _REPLICAS_IN_BOUNDS,
    _AUTOSCALING_MIN,
    _CONNECTION_BUDGET,
    _CLIENT_CONNECTIONS,
    _WORKER_MEMORY,
    _METRICS_PORT_FREE,
)
