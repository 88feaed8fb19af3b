"""The runtime's configuration contract: the only module that reads the environment.

The operator renders a YAML/JSON file (a ConfigMap mounted into the pod) with the non-secret
settings below and points `$AGENTPOOL_CONFIG` at it; secrets arrive only as environment variables
(from a Secret). The operator imports this module to render and validate that file, so it stays
pure: pydantic and the standard library only, no redis/asyncpg, no import-time side effects.

Environment variables read here (and nowhere else in the runtime):

* `AGENTPOOL_CONFIG` - path of the rendered config file (required for `load_settings()` unless a
  path is passed explicitly).
* `AGENTPOOL_REDIS_URL` - secret, required: the queue's Redis (`redis://[:password@]host:port/db`).
* `AGENTPOOL_DATABASE_URL` - secret, optional: PostgreSQL DSN, in the pod the PgBouncer sidecar on
  localhost (transaction pooling). Without it, results live in Redis only.
* `AGENTPOOL_CACHE_REDIS_URL` - secret, optional: a separate Redis for the cache helper; defaults to
  the queue's Redis.
* `AGENTPOOL_POD_NAME` (downward API; falls back to `HOSTNAME`) - this pod's identity, used to name
  Redis consumers. Not a secret, but per pod, so it cannot live in the shared file.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

CONFIG_PATH_ENV = "AGENTPOOL_CONFIG"
REDIS_URL_ENV = "AGENTPOOL_REDIS_URL"
DATABASE_URL_ENV = "AGENTPOOL_DATABASE_URL"
CACHE_REDIS_URL_ENV = "AGENTPOOL_CACHE_REDIS_URL"
# The pod's PgBouncer admin console as its stats-only user: when set, /metrics also serves
# PgBouncer's pool metrics (agent_runtime/pgbouncer_metrics.py).
PGBOUNCER_STATS_URL_ENV = "AGENTPOOL_PGBOUNCER_STATS_URL"
POD_NAME_ENV = "AGENTPOOL_POD_NAME"

_HANDLER_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class ConfigError(ValueError):
    """The configuration file or environment is missing or invalid (the message says which)."""


class RuntimeConfig(BaseModel):
    """Non-secret settings rendered by the operator; every field is documented for that reason."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pool: str = Field(description="AgentPool name; namespaces every Redis key of the pool.")
    namespace: str | None = Field(
        default=None,
        description="Kubernetes namespace of the AgentPool. Part of every Redis key, so pools "
        "of the same name in different namespaces never share a queue on one Redis.",
    )
    handler: str = Field(description="Default task handler, `module:function` (async or sync).")
    handlers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra named handlers, name -> `module:function`; tasks choose one by name.",
    )
    init_hook: str | None = Field(
        default=None,
        description="Optional `module:function` run once per worker during warm-up, before "
        "gc.freeze(); use it to load models or build clients that every task shares.",
    )
    workers: int = Field(default=2, ge=1, le=256, description="Warm worker processes per pod.")
    concurrency: int = Field(
        default=8, ge=1, le=1024, description="Tasks run concurrently inside one worker (asyncio)."
    )
    task_timeout_seconds: float = Field(
        default=300.0, gt=0, description="A task running longer than this is cancelled (retried)."
    )
    hang_grace_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Extra time after the task timeout before the supervisor kills a worker whose "
        "task did not stop (blocking code ignores cancellation).",
    )
    heartbeat_interval_seconds: float = Field(
        default=1.0, gt=0, description="How often a worker reports to the supervisor."
    )
    heartbeat_timeout_seconds: float = Field(
        default=30.0, gt=0, description="A worker silent this long is unhealthy and replaced."
    )
    startup_timeout_seconds: float = Field(
        default=120.0, gt=0, description="A worker not ready (warm) after this long is replaced."
    )
    max_tasks_per_worker: int | None = Field(
        default=None, ge=1, description="Recycle a worker after this many tasks (None: never)."
    )
    max_tasks_jitter: int = Field(
        default=0, ge=0, description="Random extra tasks (0..jitter) so workers do not recycle "
        "together.",
    )
    max_worker_memory_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Hard per-worker memory limit measured as USS; the worker is killed above it "
        "and drained-and-replaced above `worker_memory_recycle_ratio` of it.",
    )
    worker_memory_recycle_ratio: float = Field(
        default=0.85, gt=0, le=1,
        description="Share of `max_worker_memory_bytes` above which a worker is drained and "
        "replaced (its replacement warms up first).",
    )
    container_memory_limit_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Override for the pod's memory limit; by default read from the cgroup.",
    )
    memory_breaker_open_ratio: float = Field(
        default=0.90, gt=0, le=1,
        description="Stop taking new tasks when container memory exceeds this share of its limit.",
    )
    memory_breaker_close_ratio: float = Field(
        default=0.80, gt=0, le=1, description="Take tasks again once memory falls below this share."
    )
    memory_kill_ratio: float = Field(
        default=0.95, gt=0, le=1,
        description="Kill the largest worker above this share, before the kernel OOM-kills the "
        "whole container (cgroup v2 group OOM kill).",
    )
    drain_grace_seconds: float = Field(
        default=25.0, gt=0,
        description="On SIGTERM: time to finish in-flight tasks before handing them back. Keep it "
        "a few seconds below the pod's terminationGracePeriodSeconds.",
    )
    stream: str | None = Field(default=None, description="Work stream key (default derived).")
    group: str = Field(default="workers", description="Consumer group reading the work stream.")
    dead_letter_stream: str | None = Field(default=None, description="Dead-letter stream key.")
    max_deliveries: int = Field(
        default=5, ge=1, description="Executions of one task (retries and crash redeliveries "
        "together) before it is dead-lettered.",
    )
    lease_seconds: float = Field(
        default=30.0, gt=0,
        description="Idle time after which another pod may reclaim a task; the supervisor renews "
        "the lease of running tasks every third of it, so long tasks are never stolen.",
    )
    retry_backoff_seconds: float = Field(default=1.0, ge=0, description="First retry delay.")
    retry_backoff_max_seconds: float = Field(default=60.0, ge=0, description="Retry delay cap.")
    max_payload_bytes: int = Field(
        default=1_048_576, gt=0, description="Largest accepted JSON payload (encoded, bytes)."
    )
    result_ttl_seconds: int = Field(default=7 * 86400, gt=0, description="Redis result lifetime.")
    idempotency_ttl_seconds: int = Field(
        default=86400, gt=0, description="How long an idempotency key maps to its task."
    )
    dead_letter_max_length: int = Field(
        default=100_000, gt=0, description="Approximate cap of the dead-letter stream."
    )
    cache_ttl_seconds: float = Field(default=300.0, gt=0, description="Cache helper Redis TTL.")
    cache_lru_size: int = Field(default=1024, ge=0, description="In-process LRU entries per cache.")
    cache_lru_ttl_seconds: float = Field(default=5.0, ge=0, description="In-process LRU lifetime.")
    http_limit: int = Field(default=100, ge=1, description="aiohttp connector: total connections.")
    http_limit_per_host: int = Field(default=20, ge=0, description="Connections per host.")
    http_keepalive_seconds: float = Field(default=30.0, gt=0, description="Idle keep-alive time.")
    http_timeout_seconds: float = Field(default=60.0, gt=0, description="Total request timeout.")
    db_pool_min_size: int = Field(default=1, ge=0, description="asyncpg pool minimum per worker.")
    db_pool_max_size: int | None = Field(
        default=None, ge=1, description="asyncpg pool maximum per worker (default: concurrency)."
    )
    db_statement_cache_size: int = Field(
        default=0, ge=0,
        description="asyncpg statement cache. 0 is required behind PgBouncer transaction pooling "
        "older than 1.21 or with max_prepared_statements=0; raise it only when PgBouncer "
        "tracks prepared statements.",
    )
    db_command_timeout_seconds: float = Field(
        default=30.0, gt=0, description="asyncpg per-query timeout."
    )
    db_max_inactive_connection_lifetime_seconds: float = Field(
        default=60.0, ge=0, description="Keep below PgBouncer's client_idle_timeout."
    )
    events_retention_months: int = Field(
        default=3, ge=1, description="Monthly task-event partitions kept (older are dropped)."
    )
    events_partitions_ahead: int = Field(
        default=2, ge=1, description="Monthly partitions created in advance."
    )
    metrics_host: str = Field(default="0.0.0.0", description="Bind address of /metrics etc.")
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="0 picks a free port.")
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$",
                           description="Log level of the supervisor and workers.")

    @field_validator("pool")
    @classmethod
    def _pool_is_dns_label(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("pool must be a DNS label (lowercase letters, digits, '-')")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace_is_dns_label(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError("namespace must be a DNS label (lowercase letters, digits, '-')")
        return value

    @field_validator("handler", "init_hook")
    @classmethod
    def _is_handler_ref(cls, value: str | None) -> str | None:
        if value is not None and not _HANDLER_REF.match(value):
            raise ValueError(f"{value!r} is not of the form 'module:function'")
        return value

    @field_validator("handlers")
    @classmethod
    def _are_handler_refs(cls, value: dict[str, str]) -> dict[str, str]:
        for name, ref in value.items():
            if not _HANDLER_REF.match(ref):
                raise ValueError(f"handler {name!r}: {ref!r} is not of the form 'module:function'")
        return value

    @model_validator(mode="after")
    def _breaker_ratios_ordered(self) -> RuntimeConfig:
        if not self.memory_breaker_close_ratio < self.memory_breaker_open_ratio:
            raise ValueError("memory_breaker_close_ratio must be below memory_breaker_open_ratio")
        if not self.memory_breaker_open_ratio <= self.memory_kill_ratio:
            raise ValueError("memory_kill_ratio must be at least memory_breaker_open_ratio")
        return self

    # Derived names. `{pool}` is a Redis Cluster hash tag: every key of one pool lands in one
    # slot, so the MULTI blocks and Lua scripts that touch several of them stay valid.
    @property
    def key_prefix(self) -> str:
        identity = f"{self.namespace}/{self.pool}" if self.namespace else self.pool
        return f"agentpool:{{{identity}}}"

    @property
    def stream_key(self) -> str:
        return self.stream or f"{self.key_prefix}:tasks"

    @property
    def dead_letter_key(self) -> str:
        return self.dead_letter_stream or f"{self.key_prefix}:dead"

    @property
    def handler_map(self) -> dict[str, str]:
        """Task-selectable handlers: `default` is the configured default handler."""
        return {"default": self.handler, **self.handlers}

    @property
    def effective_db_pool_max_size(self) -> int:
        return self.db_pool_max_size or self.concurrency


class RuntimeSecrets(BaseModel):
    """Connection strings, taken only from the environment (never from the config file)."""

    model_config = ConfigDict(frozen=True)

    redis_url: SecretStr
    database_url: SecretStr | None = None
    cache_redis_url: SecretStr | None = None
    pgbouncer_stats_url: SecretStr | None = None

    @property
    def effective_cache_redis_url(self) -> str:
        url = self.cache_redis_url or self.redis_url
        return url.get_secret_value()


class RuntimeSettings(BaseModel):
    """Everything a runtime process needs: the file, the secrets, and who this pod is."""

    model_config = ConfigDict(frozen=True)

    config: RuntimeConfig
    secrets: RuntimeSecrets
    pod_name: str


def parse_config(text: str) -> RuntimeConfig:
    """Parse the rendered file (YAML, of which JSON is a subset) into a validated config."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config is not valid YAML/JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("config must be a mapping of settings")
    try:
        return RuntimeConfig.model_validate(data)
    except ValueError as exc:
        raise ConfigError(f"invalid runtime config: {exc}") from exc


def render_config(config: RuntimeConfig) -> str:
    """The file the operator writes: stable JSON (valid YAML), only non-default fields kept."""
    return json.dumps(config.model_dump(mode="json", exclude_defaults=True), indent=2,
                      sort_keys=True) + "\n"


def secrets_from_env(environ: Mapping[str, str]) -> RuntimeSecrets:
    redis_url = environ.get(REDIS_URL_ENV)
    if not redis_url:
        raise ConfigError(f"{REDIS_URL_ENV} is not set")
    database_url = environ.get(DATABASE_URL_ENV) or None
    cache_url = environ.get(CACHE_REDIS_URL_ENV) or None
    stats_url = environ.get(PGBOUNCER_STATS_URL_ENV) or None
    return RuntimeSecrets(
        redis_url=SecretStr(redis_url),
        database_url=SecretStr(database_url) if database_url else None,
        cache_redis_url=SecretStr(cache_url) if cache_url else None,
        pgbouncer_stats_url=SecretStr(stats_url) if stats_url else None,
    )


def load_config(path: str | Path | None = None,
                environ: Mapping[str, str] | None = None) -> RuntimeConfig:
    """Read the config file from `path`, else from `$AGENTPOOL_CONFIG`."""
    env = os.environ if environ is None else environ
    location = path or env.get(CONFIG_PATH_ENV)
    if not location:
        raise ConfigError(f"no config file: pass --config or set {CONFIG_PATH_ENV}")
    try:
        text = Path(location).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {location}: {exc}") from exc
    return parse_config(text)


def load_settings(path: str | Path | None = None,
                  environ: Mapping[str, str] | None = None) -> RuntimeSettings:
    """Everything the runtime reads from outside the process, read once at start-up."""
    env = os.environ if environ is None else environ
    pod_name = env.get(POD_NAME_ENV) or env.get("HOSTNAME") or socket.gethostname()
    return RuntimeSettings(
        config=load_config(path, env), secrets=secrets_from_env(env), pod_name=pod_name
    )
