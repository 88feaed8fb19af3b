"""The operator↔runtime contract: the one place both sides take their shared facts from.

The runtime's config model (`RuntimeConfig`, the file the operator renders into the pool's
ConfigMap), the environment variables the operator sets and the runtime reads, the Redis key
and consumer names both sides derive, the defaults the CRD and the runtime share, and the
patterns and limits that decide what a pool may be called and which handler references a
worker can import. The CRD models (`agentpool_operator.api`) build their fields from the
constants here, so the API server accepts exactly what the runtime can run; the operator's
builders render through `RuntimeConfig`; the metrics API derives key names from here.

Pure: pydantic and the standard library only, no I/O, no environment reads (those live in
`config.py`), so the operator can import it without the runtime's dependencies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# --- Environment variables the operator sets in the runtime container ----------------------
CONFIG_PATH_ENV = "AGENTPOOL_CONFIG"
"""Path of the rendered config file."""
REDIS_URL_ENV = "AGENTPOOL_REDIS_URL"
"""Secret, required: the queue's Redis URL."""
DATABASE_URL_ENV = "AGENTPOOL_DATABASE_URL"
"""Secret, optional: the PostgreSQL DSN (in the pod: the PgBouncer sidecar on loopback)."""
CACHE_REDIS_URL_ENV = "AGENTPOOL_CACHE_REDIS_URL"
"""Secret, optional: a separate Redis for the cache helper."""
PGBOUNCER_STATS_URL_ENV = "AGENTPOOL_PGBOUNCER_STATS_URL"
"""Secret, optional: the pod's PgBouncer admin console as its stats-only user; when set,
/metrics also serves PgBouncer's pool metrics (agent_runtime/pgbouncer_metrics.py)."""
POD_NAME_ENV = "AGENTPOOL_POD_NAME"
"""This pod's name (downward API): consumers are named after it."""
RESERVED_ENV_PREFIX = "AGENTPOOL_"
"""Every variable the operator sets starts with this; users may not set such names."""

# --- Names ---------------------------------------------------------------------------------
# A pool's name becomes a Service name (an RFC 1035 label: a letter first, no dots), label
# values (at most 63 characters) and the prefix of longer child names (`<pool>-pgbouncer`).
POOL_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
POOL_NAME_MAX_LENGTH = 50
# Kubernetes namespaces are RFC 1123 labels.
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
NAMESPACE_MAX_LENGTH = 63
# `package.module:function` or `module:Class.method`: ASCII Python identifiers, dotted.
_IDENTIFIER_PATH = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
HANDLER_REF_PATTERN = f"^{_IDENTIFIER_PATH}:{_IDENTIFIER_PATH}$"
HANDLER_REF_MAX_LENGTH = 256
# Stream and consumer-group names: Redis takes any bytes; these stay readable in redis-cli and
# safe in Prometheus labels.
STREAM_PATTERN = r"^[A-Za-z0-9][-A-Za-z0-9:._{}]*$"
STREAM_MAX_LENGTH = 200
# Names tasks choose a handler by (`submit(..., handler=name)`): also the `task_type` label of
# the task metrics, so the set is small and the names plain. `default` is the pool's `handler`.
HANDLER_NAME_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
HANDLER_NAME_MAX_LENGTH = 63
MAX_NAMED_HANDLERS = 32
DEFAULT_HANDLER_NAME = "default"

# --- Defaults and limits shared by the CRD and the runtime (declared here only) -------------
DEFAULT_WORKERS = 2
MAX_WORKERS = 256
DEFAULT_CONCURRENCY = 8
MAX_CONCURRENCY = 1024
DEFAULT_TASK_TIMEOUT_SECONDS = 300
DEFAULT_DRAIN_GRACE_SECONDS = 330
"""Above the task timeout, so a stopping pod finishes the tasks it runs."""
DEFAULT_CONSUMER_GROUP = "workers"
DEFAULT_MAX_DELIVERIES = 5
MAX_DELIVERIES_LIMIT = 1000
DEFAULT_LEASE_SECONDS = 30
MIN_LEASE_SECONDS = 5
"""A lease is renewed every third of it; shorter ones would be renewed too often to be safe."""
DEFAULT_METRICS_PORT = 9090
DEFAULT_CACHE_TTL_SECONDS = 300
DEFAULT_TRACING_SAMPLE_PERCENT = 100
"""Share of the traces that start in a worker (tasks submitted outside a trace) that are kept,
in percent; a task submitted inside a trace follows its submitter's sampling decision."""
TRACING_ENDPOINT_PATTERN = r"^https?://[\x21\x22\x24-\x2e\x30-\x3e\x40-\x7e]+(/[\x21\x22\x24-\x3e\x40-\x7e]*)?$"
"""An OTLP/HTTP endpoint: a base URL such as http://otel-collector.observability:4318 (the
exporter posts to `<base>/v1/traces`). Printable ASCII only, no query or fragment: an
internationalised host name goes in its punycode form."""
TRACING_ENDPOINT_MAX_LENGTH = 512
# The asyncpg pool of every worker (`spec.database.timeouts`) and the tables' retention
# (`spec.database.retention`).
DEFAULT_DB_ACQUIRE_TIMEOUT_SECONDS = 10
"""Longest wait for a pool connection (all busy, or PgBouncer restarting) before a DB call
fails with `DatabaseUnavailable`."""
DEFAULT_DB_CONNECT_TIMEOUT_SECONDS = 10
"""Longest wait for one new connection to PgBouncer (TCP and start-up)."""
DEFAULT_DB_COMMAND_TIMEOUT_SECONDS = 30
"""Per-statement timeout of the DB helper's calls."""
DEFAULT_DB_IDLE_CONNECTION_LIFETIME_SECONDS = 60
"""An idle pool connection is closed after this; keep it below PgBouncer's client_idle_timeout."""
DEFAULT_RESULTS_RETENTION_MONTHS = 6
"""Monthly partitions of `agentpool_task_results` kept (older ones are detached and dropped)."""
DEFAULT_EVENTS_RETENTION_MONTHS = 3
"""Monthly partitions of `agentpool_task_events` kept."""
MIN_RESULTS_RETENTION_MONTHS = 2
"""Results are partitioned by submission month: a task submitted late last month may still
be finishing now, so last month's partition must still exist."""
MAX_RETENTION_MONTHS = 120
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_LEVEL_PATTERN = f"^({'|'.join(LOG_LEVELS)})$"
DEFAULT_LOG_LEVEL = "INFO"
"""INFO logs one line per task outcome; WARNING keeps only failures."""
DEFAULT_TRACEMALLOC_FRAMES = 0
"""Leak diagnostics: frames tracemalloc keeps per allocation (0: tracemalloc off)."""
MAX_TRACEMALLOC_FRAMES = 32
MEMORY_REPORTS_MAX_LENGTH = 100
"""The newest memory reports a pool's Redis keeps (`memory_reports_key`)."""
DEFAULT_MAX_TASKS_JITTER = 0
"""Extra tasks (0..jitter, drawn per worker) before a `max_tasks_per_worker` recycle."""
# The worker's shared aiohttp session (`ctx.http`).
DEFAULT_HTTP_MAX_CONNECTIONS = 100
DEFAULT_HTTP_MAX_CONNECTIONS_PER_HOST = 20
DEFAULT_HTTP_KEEPALIVE_SECONDS = 30
DEFAULT_HTTP_TIMEOUT_SECONDS = 60
PGBOUNCER_PORT = 6432
"""PgBouncer's listen port on the pod's loopback; no other container may take it."""

_HANDLER_REF = re.compile(HANDLER_REF_PATTERN)
_HANDLER_NAME = re.compile(HANDLER_NAME_PATTERN)
_POOL_NAME = re.compile(POOL_NAME_PATTERN)
_NAMESPACE = re.compile(NAMESPACE_PATTERN)


def check_pool_name(name: str) -> str:
    """`name` if a pool may be called so, else ValueError saying why and how to fix it."""
    if len(name) > POOL_NAME_MAX_LENGTH or not _POOL_NAME.match(name):
        raise ValueError(
            f"pool name {name!r} must be an RFC 1035 label of at most {POOL_NAME_MAX_LENGTH} "
            "characters: lowercase letters, digits and '-', starting with a letter and ending "
            "with a letter or digit (it names the pool's Service, which allows nothing else)")
    return name


def check_handler_ref(ref: str) -> str:
    """`ref` if a worker can import it (`module:attribute`), else ValueError saying why."""
    if len(ref) > HANDLER_REF_MAX_LENGTH or not _HANDLER_REF.match(ref):
        raise ValueError(
            f"{ref!r} is not a handler reference: use 'module:function' or "
            "'package.module:Class.method' (ASCII Python identifiers)")
    return ref


def check_handler_names(handlers: dict[str, str]) -> dict[str, str]:
    """`handlers` (name -> reference) if every name and reference is usable, else ValueError
    saying which is not and why."""
    if len(handlers) > MAX_NAMED_HANDLERS:
        raise ValueError(f"at most {MAX_NAMED_HANDLERS} named handlers per pool "
                         "(each name is a metric label)")
    for name, ref in handlers.items():
        if name == DEFAULT_HANDLER_NAME:
            raise ValueError(f"handler name {DEFAULT_HANDLER_NAME!r} is reserved for the "
                             "pool's `handler`")
        if len(name) > HANDLER_NAME_MAX_LENGTH or not _HANDLER_NAME.match(name):
            raise ValueError(f"handler name {name!r} must be 1-{HANDLER_NAME_MAX_LENGTH} "
                             "letters, digits, '-', '_' or '.', starting and ending with a "
                             "letter or digit")
        try:
            check_handler_ref(ref)
        except ValueError as exc:
            raise ValueError(f"handler {name!r}: {exc}") from None
    return handlers


def key_prefix(pool: str, namespace: str | None) -> str:
    """The prefix of every Redis key of a pool. `{...}` is a Redis Cluster hash tag: every key
    of one pool lands in one slot, so multi-key MULTI blocks and scripts stay valid."""
    identity = f"{namespace}/{pool}" if namespace else pool
    return f"agentpool:{{{identity}}}"


def default_stream_key(pool: str, namespace: str | None) -> str:
    """The work stream of a pool that does not name one (`queue.stream` unset)."""
    return f"{key_prefix(pool, namespace)}:tasks"


def consumer_name(pod: str, boot_id: str, slot: int, generation: int) -> str:
    """The Redis consumer of one worker: `<pod>-<boot id>-<slot>.<generation>`. The metrics
    API maps consumers back to pods with `pod_of_consumer`."""
    return f"{pod}-{boot_id}-{slot}.{generation}"


def pod_of_consumer(consumer: str, pods: list[str] | tuple[str, ...]) -> str | None:
    """The pod a consumer (named by `consumer_name`) runs in: the longest pod name that,
    followed by "-", prefixes it; None for a pod that is gone or a foreign client."""
    owners = [pod for pod in pods if consumer.startswith(pod + "-")]
    return max(owners, key=len) if owners else None


# --- Budgets (fleet-wide API limits, `AgentBudget`) ----------------------------------------
# A budget key's name is what handlers pass to `ctx.budget(name)`; it also names an
# environment variable (the key's API key), so it stays a short DNS-label-like word.
BUDGET_KEY_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
BUDGET_KEY_NAME_MAX_LENGTH = 63
BUDGET_API_KEY_ENV_PREFIX = "AGENTPOOL_BUDGET_"
BUDGET_WAITER_TTL_SECONDS = 15
"""A task waiting for a budget permit stays counted this long after its last refresh."""


def budget_api_key_env(key_name: str) -> str:
    """Secret, optional: the API key of budget key `key_name`, from the budget's Secret."""
    return f"{BUDGET_API_KEY_ENV_PREFIX}{key_name.upper().replace('-', '_')}_API_KEY"


def budget_waiting_key(prefix: str) -> str:
    """Sorted set of the pool's tasks waiting for a budget permit (member: waiter id, score:
    Redis ms until which it counts). The metrics API reads it: a pool whose work waits on its
    budget, not on workers, is not scaled out."""
    return f"{prefix}:budget-waiting"


BUDGET_WINDOW_MARGIN = 0.02
"""Each budget window is widened by this share, for requests that leave their worker a little
after their grant; the operator counts usage in the same widened windows."""


@dataclass(frozen=True)
class BudgetKeys:
    """Redis key names of one budget key (id `namespace/budget/key`): the limiter writes them,
    the operator reads them for the AgentBudget's status. Every name carries the key's hash
    tag, so the limiter's multi-key scripts work on Redis Cluster; budget ids are Kubernetes
    names, which never hold braces."""

    prefix: str

    @classmethod
    def for_id(cls, budget_id: str) -> BudgetKeys:
        if not budget_id or "{" in budget_id or "}" in budget_id:
            raise ValueError(f"budget id {budget_id!r} must be non-empty and hold no braces")
        return cls(prefix=f"agentpool:budget:{{{budget_id}}}")

    @property
    def requests(self) -> str:
        """Sorted set: every granted request (score: grant time, Redis clock, ms)."""
        return f"{self.prefix}:requests"

    @property
    def tokens(self) -> str:
        """Sorted set: the grants that reserved tokens (score: grant time, ms)."""
        return f"{self.prefix}:tokens"

    @property
    def token_counts(self) -> str:
        """Hash: tokens per grant in `tokens` (estimate, then the settled count), and `_total`."""
        return f"{self.prefix}:token-counts"

    @property
    def leases(self) -> str:
        """Sorted set: requests in flight (score: when the lease ends, ms); an expired lease is a
        permit whose worker died without giving it back."""
        return f"{self.prefix}:leases"

    @property
    def freed(self) -> str:
        """List: one element per released lease, for waiters blocked on concurrency (BLPOP)."""
        return f"{self.prefix}:freed"

    @property
    def cooldown(self) -> str:
        """Set for as long as the provider asked us to back off (429 with Retry-After)."""
        return f"{self.prefix}:cooldown"

    @property
    def recovering(self) -> str:
        """Set for one window after Redis lost grants it had made (a restart without them)."""
        return f"{self.prefix}:recovering"

    @property
    def waiting(self) -> str:
        """Sorted set of the tasks (of any pool) waiting for a permit of this key (member:
        waiter id, score: Redis ms until which it counts), like the pool's board
        (`budget_waiting_key`) but per key: the AgentBudget's status reads it."""
        return f"{self.prefix}:waiting"

    @property
    def all(self) -> tuple[str, ...]:
        return (self.requests, self.tokens, self.token_counts, self.leases, self.freed,
                self.cooldown, self.recovering, self.waiting)

    @property
    def usage_keys(self) -> list[str]:
        """KEYS of `BUDGET_USAGE_SCRIPT`."""
        return [self.requests, self.token_counts, self.leases, self.cooldown, self.waiting]


# KEYS: `BudgetKeys.usage_keys`. ARGV: window margin per mille.
# What a budget key holds now, in one step on Redis's clock: requests in the last second and
# minute, tokens reserved in the last minute, leases in flight, ms of cool-down left, tasks
# waiting for a permit. Here rather than with the limiter so the operator, which reports it in
# the AgentBudget's status, reads the same windows the limiter grants by.
BUDGET_USAGE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local margin = tonumber(ARGV[1])
local second = 1000 + math.floor(1000 * margin / 1000)
local minute = 60000 + math.floor(60000 * margin / 1000)
return {
  redis.call('ZCOUNT', KEYS[1], now - second + 1, '+inf'),
  redis.call('ZCOUNT', KEYS[1], now - minute + 1, '+inf'),
  tonumber(redis.call('HGET', KEYS[2], '_total') or '0'),
  redis.call('ZCOUNT', KEYS[3], now + 1, '+inf'),
  math.max(redis.call('PTTL', KEYS[4]), 0),
  redis.call('ZCOUNT', KEYS[5], now + 1, '+inf'),
}
"""


def memory_reports_key(prefix: str) -> str:
    """Capped stream of the pool's memory reports: what grew in a worker recycled for its
    memory (field `report`, JSON). Supervisors add them; the operator turns new ones into
    Events on the AgentPool (pods need no right to post Events)."""
    return f"{prefix}:memory-reports"


class BudgetKeyConfig(BaseModel):
    """One budget key a pool's handlers may use: its limits, shared by every pod of every pool
    that references the budget (all of them count in the same Redis keys)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=BUDGET_KEY_NAME_MAX_LENGTH,
                      pattern=BUDGET_KEY_NAME_PATTERN,
                      description="What handlers call it: `ctx.budget(name)`.")
    budget: str = Field(pattern=r"^[a-z0-9][-a-z0-9]*/[a-z0-9][-.a-z0-9]*$",
                        description="`namespace/name` of the AgentBudget defining the key.")
    requests_per_second: int | None = Field(default=None, ge=1)
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    concurrent_requests: int | None = Field(default=None, ge=1)
    has_api_key: bool = Field(default=False, description="Whether the key's API key is in the "
                              "environment (`budget_api_key_env(name)`).")

    @property
    def id(self) -> str:
        """Where its state lives in Redis: every pool using the key shares it."""
        return f"{self.budget}/{self.name}"


class RuntimeConfig(BaseModel):
    """Non-secret settings rendered by the operator; every field is documented for that reason."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pool: str = Field(description="AgentPool name; namespaces every Redis key of the pool.")
    namespace: str | None = Field(
        default=None,
        description="Kubernetes namespace of the AgentPool. Part of every Redis key, so pools "
        "of the same name in different namespaces never share a queue on one Redis.",
    )
    handler: str = Field(description="Default task handler, `module:function` (async or "
                         "sync); the attribute may be dotted (`module:Class.method`).")
    handlers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra named handlers, name -> `module:function`; tasks choose one by name.",
    )
    budgets: tuple[BudgetKeyConfig, ...] = Field(
        default=(), description="Budget keys the handlers may use (from the pool's AgentBudgets).")
    init_hook: str | None = Field(
        default=None,
        description="Optional `module:function` run once per worker during warm-up, before "
        "gc.freeze(); use it to load models or build clients that every task shares.",
    )
    workers: int = Field(default=DEFAULT_WORKERS, ge=1, le=MAX_WORKERS,
                         description="Warm worker processes per pod.")
    concurrency: int = Field(
        default=DEFAULT_CONCURRENCY, ge=1, le=MAX_CONCURRENCY,
        description="Tasks run concurrently inside one worker (asyncio)."
    )
    task_timeout_seconds: float = Field(
        default=DEFAULT_TASK_TIMEOUT_SECONDS, gt=0,
        description="A task running longer than this is cancelled (retried)."
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
        default=DEFAULT_MAX_TASKS_JITTER, ge=0,
        description="Random extra tasks (0..jitter) so workers do not recycle together.",
    )
    max_worker_memory_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Hard per-worker memory limit measured as USS; the worker is killed above it "
        "and drained-and-replaced above `worker_memory_recycle_ratio` of it.",
    )
    tracemalloc_frames: int = Field(
        default=DEFAULT_TRACEMALLOC_FRAMES, ge=0, le=MAX_TRACEMALLOC_FRAMES,
        description="Leak diagnostics: when above 0, each worker traces its allocations "
        "(tracemalloc, this many frames each) from the end of its warm-up, and a worker "
        "recycled for its memory reports the lines whose allocations grew most. Costs CPU "
        "and memory: turn it on to find a leak.",
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
        default=DEFAULT_DRAIN_GRACE_SECONDS, gt=0,
        description="On SIGTERM: time to finish in-flight tasks before handing them back. The "
        "operator sets the pod's terminationGracePeriodSeconds a margin above it.",
    )
    stream: str | None = Field(default=None, min_length=1, max_length=STREAM_MAX_LENGTH,
                               pattern=STREAM_PATTERN,
                               description="Work stream key (default derived).")
    group: str = Field(default=DEFAULT_CONSUMER_GROUP, min_length=1, max_length=STREAM_MAX_LENGTH,
                       pattern=STREAM_PATTERN,
                       description="Consumer group reading the work stream.")
    dead_letter_stream: str | None = Field(default=None, description="Dead-letter stream key.")
    max_deliveries: int = Field(
        default=DEFAULT_MAX_DELIVERIES, ge=1, le=MAX_DELIVERIES_LIMIT,
        description="Executions of one task that started (retries and runs that took their "
        "worker down, together) before it is dead-lettered; a hard bound.",
    )
    lease_seconds: float = Field(
        default=DEFAULT_LEASE_SECONDS, gt=0,
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
    cache_ttl_seconds: float = Field(default=DEFAULT_CACHE_TTL_SECONDS, gt=0,
                                     description="Cache helper Redis TTL.")
    cache_lru_size: int = Field(default=1024, ge=0, description="In-process LRU entries per cache.")
    cache_lru_ttl_seconds: float = Field(default=5.0, ge=0, description="In-process LRU lifetime.")
    http_limit: int = Field(default=DEFAULT_HTTP_MAX_CONNECTIONS, ge=1,
                            description="aiohttp connector: total connections.")
    http_limit_per_host: int = Field(default=DEFAULT_HTTP_MAX_CONNECTIONS_PER_HOST, ge=0,
                                     description="Connections per host (0: no per-host cap).")
    http_keepalive_seconds: float = Field(default=DEFAULT_HTTP_KEEPALIVE_SECONDS, gt=0,
                                          description="Idle keep-alive time.")
    http_timeout_seconds: float = Field(default=DEFAULT_HTTP_TIMEOUT_SECONDS, gt=0,
                                        description="Total request timeout.")
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
    db_acquire_timeout_seconds: float = Field(
        default=DEFAULT_DB_ACQUIRE_TIMEOUT_SECONDS, gt=0,
        description="Longest wait for a pool connection (all in use, or PgBouncer restarting); "
        "then the DB call raises DatabaseUnavailable.",
    )
    db_connect_timeout_seconds: float = Field(
        default=DEFAULT_DB_CONNECT_TIMEOUT_SECONDS, gt=0,
        description="Longest wait for one new connection (TCP and PostgreSQL start-up).",
    )
    db_command_timeout_seconds: float = Field(
        default=DEFAULT_DB_COMMAND_TIMEOUT_SECONDS, gt=0, description="asyncpg per-query timeout."
    )
    db_max_inactive_connection_lifetime_seconds: float = Field(
        default=DEFAULT_DB_IDLE_CONNECTION_LIFETIME_SECONDS, ge=0,
        description="Idle pool connections are closed after this (0: never); keep it below "
        "PgBouncer's client_idle_timeout.",
    )
    results_retention_months: int = Field(
        default=DEFAULT_RESULTS_RETENTION_MONTHS, ge=MIN_RESULTS_RETENTION_MONTHS,
        le=MAX_RETENTION_MONTHS,
        description="Monthly task-result partitions kept (by submission month; older are "
        "detached concurrently and dropped).",
    )
    events_retention_months: int = Field(
        default=DEFAULT_EVENTS_RETENTION_MONTHS, ge=1, le=MAX_RETENTION_MONTHS,
        description="Monthly task-event partitions kept (older are detached concurrently and "
        "dropped).",
    )
    events_partitions_ahead: int = Field(
        default=2, ge=1, description="Monthly partitions (events and results) created in "
        "advance."
    )
    metrics_host: str = Field(default="0.0.0.0", description="Bind address of /metrics etc.")
    metrics_port: int = Field(default=DEFAULT_METRICS_PORT, ge=0, le=65535,
                              description="0 picks a free port.")
    tracing_endpoint: str | None = Field(
        default=None, max_length=TRACING_ENDPOINT_MAX_LENGTH, pattern=TRACING_ENDPOINT_PATTERN,
        description="OTLP/HTTP base URL traces are exported to (`<url>/v1/traces`); unset: "
        "workers do no tracing at all.",
    )
    tracing_sample_ratio: float = Field(
        default=DEFAULT_TRACING_SAMPLE_PERCENT / 100, ge=0, le=1,
        description="Share of the traces started by a worker that are kept (tasks submitted "
        "inside a trace follow their submitter's decision).",
    )
    log_level: str = Field(default=DEFAULT_LOG_LEVEL, pattern=LOG_LEVEL_PATTERN,
                           description="Log level of the supervisor and workers.")

    @field_validator("pool")
    @classmethod
    def _pool_name(cls, value: str) -> str:
        return check_pool_name(value)

    @field_validator("namespace")
    @classmethod
    def _namespace_name(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > NAMESPACE_MAX_LENGTH
                                  or not _NAMESPACE.match(value)):
            raise ValueError("namespace must be a DNS label (lowercase letters, digits, '-')")
        return value

    @field_validator("handler", "init_hook")
    @classmethod
    def _is_handler_ref(cls, value: str | None) -> str | None:
        if value is not None:
            check_handler_ref(value)
        return value

    @field_validator("handlers")
    @classmethod
    def _are_handler_refs(cls, value: dict[str, str]) -> dict[str, str]:
        return check_handler_names(value)

    @field_validator("budgets")
    @classmethod
    def _budget_names_unique(cls, value: tuple[BudgetKeyConfig, ...]
                             ) -> tuple[BudgetKeyConfig, ...]:
        names = [key.name for key in value]
        if len(set(names)) != len(names):
            raise ValueError(f"budget key names must be unique in a pool: {sorted(names)}")
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
        return key_prefix(self.pool, self.namespace)

    @property
    def stream_key(self) -> str:
        return self.stream or default_stream_key(self.pool, self.namespace)

    @property
    def dead_letter_key(self) -> str:
        return self.dead_letter_stream or f"{self.key_prefix}:dead"

    @property
    def handler_map(self) -> dict[str, str]:
        """Task-selectable handlers: `default` is the configured default handler."""
        return {DEFAULT_HANDLER_NAME: self.handler, **self.handlers}

    @property
    def effective_db_pool_max_size(self) -> int:
        return self.db_pool_max_size or self.concurrency
