"""The ConfigMap `<pool>-config`: the runtime's config file and PgBouncer's non-secret ini.

`runtime.yaml` is rendered through the runtime's own contract (`agent_runtime.config`), so
the operator can only write settings the runtime validates. `pgbouncer.ini` (pools with a
database only) `%include`s the connection entry from the derived Secret: nothing in this
ConfigMap is a credential, ever.
"""

from __future__ import annotations

import math
from typing import Any

from agent_runtime.config import RuntimeConfig, render_config
from agentpool_operator.api import AgentPoolSpec, DatabaseSpec, parse_quantity
from agentpool_operator.builders.common import (
    Manifest,
    config_map_name,
    object_meta,
    pgbouncer_exporter_enabled,
)
from agentpool_operator.builders.context import PoolContext
from agentpool_operator.builders.dsn import DsnOptions
from agentpool_operator.builders.secret import (
    DATABASES_INI_KEY,
    PGBOUNCER_HOST,
    PGBOUNCER_PORT,
    STATS_USER,
    USERLIST_KEY,
)

RUNTIME_CONFIG_KEY = "runtime.yaml"
PGBOUNCER_INI_KEY = "pgbouncer.ini"
RUNTIME_CONFIG_DIR = "/etc/agentpool"
RUNTIME_CONFIG_PATH = f"{RUNTIME_CONFIG_DIR}/{RUNTIME_CONFIG_KEY}"
PGBOUNCER_DIR = "/etc/pgbouncer"
PGBOUNCER_SECRET_DIR = f"{PGBOUNCER_DIR}/secret"
PGBOUNCER_INI_PATH = f"{PGBOUNCER_DIR}/{PGBOUNCER_INI_KEY}"
# Statements PgBouncer (>= 1.21) tracks per client in transaction mode, so protocol-level
# prepared statements survive a change of server connection.
MAX_PREPARED_STATEMENTS = 200
# Debian's ca-certificates bundle, present in the PgBouncer image.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# libpq's ssl_min_protocol_version -> PgBouncer's server_tls_protocols (that version and up).
_TLS_FROM = {"TLSv1": "tlsv1.0,tlsv1.1,tlsv1.2,tlsv1.3", "TLSv1.1": "tlsv1.1,tlsv1.2,tlsv1.3",
             "TLSv1.2": "tlsv1.2,tlsv1.3", "TLSv1.3": "tlsv1.3"}
# asyncpg's named-statement cache per connection, within what PgBouncer tracks. Safe because
# the sidecar always gets `max_prepared_statements`, which PgBouncer < 1.21 refuses to start
# with ("unknown parameter"): a pool's PgBouncer either tracks prepared statements or does
# not run at all.
STATEMENT_CACHE_SIZE = MAX_PREPARED_STATEMENTS // 2


def _bytes(quantity: int | str) -> int:
    # Memory in whole bytes; the kubelet also rounds fractional byte quantities up.
    return math.ceil(parse_quantity(quantity))


def db_pool_max_size(spec: AgentPoolSpec, database: DatabaseSpec) -> int:
    """asyncpg pool size per worker process such that one pod's workers together never open
    more client connections than its PgBouncer accepts (perPod x size <= maxClientConnections).
    """
    per_worker = database.pgbouncer.max_client_connections // spec.workers.per_pod
    return max(1, min(spec.workers.concurrency, per_worker))


SPEC_FIELD_OF_RUNTIME_SETTING = {
    "pool": "metadata.name",
    "namespace": "metadata.namespace",
    "handler": "spec.handler",
    "workers": "spec.workers.perPod",
    "concurrency": "spec.workers.concurrency",
    "task_timeout_seconds": "spec.workers.taskTimeoutSeconds",
    "max_tasks_per_worker": "spec.workers.maxTasksPerWorker",
    "drain_grace_seconds": "spec.workers.drainGracePeriodSeconds",
    "max_worker_memory_bytes": "spec.workers.maxMemoryPerWorker",
    "container_memory_limit_bytes": "spec.resources.limits.memory",
    "stream": "spec.queue.stream",
    "group": "spec.queue.consumerGroup",
    "max_deliveries": "spec.queue.maxDeliveries",
    "lease_seconds": "spec.queue.leaseSeconds",
    "metrics_port": "spec.monitoring.metricsPort",
    "cache_ttl_seconds": "spec.cache.ttlSeconds",
    "db_pool_max_size": "spec.database.pgbouncer.maxClientConnections",
    "budgets": "spec.budgets",
}
"""Which spec field each setting `runtime_config` renders comes from, so a refusal of the
runtime's model is reported against the field the user wrote."""


def runtime_config(ctx: PoolContext) -> RuntimeConfig:
    """The runtime settings of a pool's pods, from its spec (secrets come from env vars)."""
    return ctx.once("runtime_config", lambda: _runtime_config(ctx))


def _runtime_config(ctx: PoolContext) -> RuntimeConfig:
    spec = ctx.spec
    workers = spec.workers
    limits = spec.resources.limits or {}
    memory_limit = limits.get("memory")
    fields: dict[str, Any] = {
        "pool": ctx.name,
        "namespace": ctx.namespace,
        "handler": spec.handler,
        "workers": workers.per_pod,
        "concurrency": workers.concurrency,
        "task_timeout_seconds": workers.task_timeout_seconds,
        "max_tasks_per_worker": workers.max_tasks_per_worker or None,  # 0 means never
        "drain_grace_seconds": workers.drain_grace_period_seconds,
        "stream": spec.queue.stream,
        "group": spec.queue.consumer_group,
        "max_deliveries": spec.queue.max_deliveries,
        "lease_seconds": spec.queue.lease_seconds,
        # All interfaces: the kubelet probes and Prometheus scrapes through the pod IP.
        "metrics_host": "0.0.0.0",
        "metrics_port": spec.monitoring.metrics_port,
    }
    if workers.max_memory_per_worker is not None:
        fields["max_worker_memory_bytes"] = _bytes(workers.max_memory_per_worker)
    if memory_limit is not None:
        fields["container_memory_limit_bytes"] = _bytes(memory_limit)
    if spec.cache.enabled:
        fields["cache_ttl_seconds"] = spec.cache.ttl_seconds
    if spec.database is not None:
        fields["db_pool_max_size"] = db_pool_max_size(spec, spec.database)
        fields["db_statement_cache_size"] = STATEMENT_CACHE_SIZE
    if ctx.budgets:
        fields["budgets"] = tuple(key.config for key in ctx.budgets)
    return RuntimeConfig.model_validate(fields)


def _server_settings(options: DsnOptions) -> list[tuple[str, str]]:
    """How PgBouncer connects to PostgreSQL, from the DSN's parameters (libpq's meaning)."""
    settings: list[tuple[str, str]] = []
    if options.sslmode is not None:
        settings.append(("server_tls_sslmode", options.sslmode))
        if options.sslmode in ("verify-ca", "verify-full"):
            # The only CA a pod has: the image's bundle (libpq's sslrootcert=system).
            settings.append(("server_tls_ca_file", SYSTEM_CA_BUNDLE))
    if options.ssl_min_protocol_version is not None:
        settings.append(("server_tls_protocols",
                         _TLS_FROM[options.ssl_min_protocol_version]))
    if options.connect_timeout is not None:
        settings.append(("server_connect_timeout", str(options.connect_timeout)))
    return settings


def pgbouncer_ini(database: DatabaseSpec, *, exporter: bool = False,
                  options: DsnOptions | None = None) -> str:
    """PgBouncer's main config: settings only, the `[databases]` entry is `%include`d from
    the Secret mounted at /etc/pgbouncer/secret. With `exporter`, the stats user (the runtime
    reading PgBouncer's metrics) may read the admin console's SHOW commands (stats_users),
    nothing more. `options` are the DSN's TLS and timeout parameters (not credentials, so
    they may live here)."""
    pgbouncer = database.pgbouncer
    settings: list[tuple[str, str]] = [
        # Loopback only: the workers share the pod's network namespace; nothing else may
        # reach the pooler.
        ("listen_addr", PGBOUNCER_HOST),
        ("listen_port", str(PGBOUNCER_PORT)),
        # No Unix socket: the root filesystem is read-only and nothing would use it.
        ("unix_socket_dir", ""),
        ("auth_type", "scram-sha-256"),
        ("auth_file", f"{PGBOUNCER_SECRET_DIR}/{USERLIST_KEY}"),
        ("pool_mode", pgbouncer.pool_mode),
        ("default_pool_size", str(pgbouncer.default_pool_size)),
        ("max_client_conn", str(pgbouncer.max_client_connections)),
        ("max_prepared_statements", str(MAX_PREPARED_STATEMENTS)),
        # asyncpg and psycopg send these startup parameters; PgBouncer would refuse them.
        ("ignore_startup_parameters", "extra_float_digits,options"),
    ]
    settings += _server_settings(options or DsnOptions())
    if pgbouncer.pool_mode == "transaction":
        # A server connection changes clients after every transaction; DISCARD ALL would
        # also drop the prepared statements PgBouncer tracks.
        settings.append(("server_reset_query", ""))
    settings += [
        # No admin console users (only the read-only stats user), no log or pid
        # files: logs go to stdout, the pod is the unit.
        ("admin_users", ""),
        ("stats_users", STATS_USER if exporter else ""),
        ("logfile", ""),
        ("pidfile", ""),
    ]
    lines = ["[pgbouncer]", *(f"{key} = {value}".rstrip() for key, value in settings)]
    lines += ["", f"%include {PGBOUNCER_SECRET_DIR}/{DATABASES_INI_KEY}"]
    return "\n".join(lines) + "\n"


def config_data(ctx: PoolContext) -> dict[str, str]:
    """The ConfigMap's `data`: the runtime config, plus PgBouncer's ini with a database."""
    return ctx.once("config_data", lambda: _config_data(ctx))


def _config_data(ctx: PoolContext) -> dict[str, str]:
    data = {RUNTIME_CONFIG_KEY: render_config(runtime_config(ctx))}
    if ctx.spec.database is not None:
        dsn = ctx.database_dsn
        data[PGBOUNCER_INI_KEY] = pgbouncer_ini(
            ctx.spec.database, exporter=pgbouncer_exporter_enabled(ctx.spec),
            options=dsn.options if dsn is not None else None,
        )
    return data


def build_config_map(ctx: PoolContext) -> Manifest:
    """The `<pool>-config` ConfigMap."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(ctx, config_map_name(ctx.name)),
        "data": config_data(ctx),
    }
