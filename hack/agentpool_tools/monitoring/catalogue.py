"""The metric names the dashboards and alerts query, in one place.

Each is exported by code in this repository: the runtime's supervisor
(`agent_runtime/supervisor/pod_metrics.py`, scraped from every pool pod), the operator
(`agentpool_operator/instrumentation.py`) or the metrics API server (queue gauges labelled with
the pool's namespace and name, `metrics_api/telemetry.py`). The tests check every name against
the registries and against what a real Prometheus scraped, so a renamed metric fails the build
instead of leaving an empty panel.

The `PGBOUNCER_*` names are prometheus-community pgbouncer_exporter v0.11.0's (taken from its
collector.go), which the runtime serves itself from PgBouncer's admin console
(`agent_runtime/supervisor/pgbouncer_metrics.py`), each with the column it reads
(`PGBOUNCER_EXPORTER_COLUMNS`).
"""

from __future__ import annotations

# Runtime (per pod; counters carry `_total`, histograms `_bucket/_sum/_count`).
TASKS_RECEIVED = "agentpool_tasks_received_total"
TASKS_PROCESSED = "agentpool_tasks_processed_total"
TASK_RETRIES = "agentpool_task_retries_total"
TASKS_DEAD_LETTERED = "agentpool_tasks_dead_lettered_total"
TASK_QUEUE_DURATION = "agentpool_task_queue_duration_seconds"
TASK_DURATION = "agentpool_task_duration_seconds"
WORKERS = "agentpool_workers"
WORKERS_MAX = "agentpool_workers_max"
WORKER_RESTARTS = "agentpool_worker_restarts_total"
LONGEST_RUNNING_TASK = "agentpool_worker_longest_running_task_seconds"
LAST_SUCCESS = "agentpool_task_last_success_timestamp_seconds"
WORKER_USS = "agentpool_worker_uss_bytes"
CONTAINER_MEMORY = "agentpool_container_memory_working_set_bytes"
CONTAINER_MEMORY_LIMIT = "agentpool_container_memory_limit_bytes"
MEMORY_BREAKER_OPEN = "agentpool_memory_breaker_open"
WORKER_CPU = "agentpool_worker_cpu_seconds_total"
POD_CPU = "agentpool_pod_cpu_seconds_total"
DB_CONNECTIONS = "agentpool_db_pool_connections"
DB_CONNECTIONS_MAX = "agentpool_db_pool_connections_max"
EXTERNAL_REQUEST_DURATION = "agentpool_external_request_duration_seconds"
CACHE_REQUESTS = "agentpool_cache_requests_total"
BUDGET_PERMITS = "agentpool_budget_permits_total"
BUDGET_WAIT = "agentpool_budget_wait_seconds"
BUDGET_TOKENS = "agentpool_budget_tokens_total"
BUDGET_THROTTLED = "agentpool_budget_throttled_total"
BUDGET_LIMIT = "agentpool_budget_limit"

# Queue (once per pool, by the metrics API server: agentpool_operator/metrics_api/telemetry.py).
QUEUE_BACKLOG = "agentpool_queue_backlog"
QUEUE_WAITING = "agentpool_queue_waiting_tasks"
QUEUE_IN_FLIGHT = "agentpool_queue_in_flight_tasks"
QUEUE_OLDEST_WAITING = "agentpool_queue_oldest_waiting_task_age_seconds"
QUEUE_BUDGET_WAITING = "agentpool_queue_budget_waiting_tasks"

# Operator.
OPERATOR_RECONCILES = "agentpool_operator_reconciles_total"
OPERATOR_RECONCILE_DURATION = "agentpool_operator_reconcile_duration_seconds"
OPERATOR_API_WRITES = "agentpool_operator_api_writes_total"
OPERATOR_WORKQUEUE_DEPTH = "agentpool_operator_workqueue_depth"
OPERATOR_WATCH_STALLED = "agentpool_operator_watch_stalled"
OPERATOR_POOLS = "agentpool_operator_pools"
OPERATOR_LEADER = "agentpool_operator_leader"
OPERATOR_POOL_CONDITION = "agentpool_operator_pool_condition"
OPERATOR_AUTOSCALER_CONDITION = "agentpool_operator_autoscaler_condition"

# Metrics API server (its own series; the queue gauges are above).
METRICS_API_REQUESTS = "agentpool_metrics_api_requests_total"

# PgBouncer (per pod, served by the runtime under pgbouncer_exporter v0.11.0's names). Pool
# series carry `database` and `user`; database series `name` (the alias), `database`, `host`,
# `port`, ... The admin console's own pool (database "pgbouncer") is excluded in every query.
PGBOUNCER_CLIENTS_WAITING = "pgbouncer_pools_client_waiting_connections"
PGBOUNCER_CLIENT_MAXWAIT = "pgbouncer_pools_client_maxwait_seconds"
PGBOUNCER_SERVERS_ACTIVE = "pgbouncer_pools_server_active_connections"
PGBOUNCER_SERVERS_IDLE = "pgbouncer_pools_server_idle_connections"
PGBOUNCER_POOL_SIZE = "pgbouncer_databases_pool_size"
PGBOUNCER_USED_SERVERS = "pgbouncer_used_servers"

PGBOUNCER_EXPORTER_COLUMNS: dict[str, tuple[str, str]] = {
    PGBOUNCER_CLIENTS_WAITING: ("POOLS", "cl_waiting"),
    # Whole seconds: v0.11 reads `maxwait` and ignores `maxwait_us`.
    PGBOUNCER_CLIENT_MAXWAIT: ("POOLS", "maxwait"),
    PGBOUNCER_SERVERS_ACTIVE: ("POOLS", "sv_active"),
    PGBOUNCER_SERVERS_IDLE: ("POOLS", "sv_idle"),
    PGBOUNCER_POOL_SIZE: ("DATABASES", "pool_size"),
    PGBOUNCER_USED_SERVERS: ("LISTS", "used_servers"),
}
"""Exporter metric -> (SHOW command, column or list item) it is read from."""
