"""The `<pool>-config` ConfigMap: runtime config contract, PgBouncer ini, and no credentials."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from agent_runtime.config import RuntimeConfig, parse_config, render_config
from agentpool_operator.builders import build_children, build_config_map, runtime_config
from tests.unit.operator.builder_samples import (
    FULL_SECRETS,
    MINIMAL_SECRETS,
    full_ctx,
    minimal_ctx,
)


def _runtime(ctx_config_map: dict[str, object]) -> RuntimeConfig:
    data = ctx_config_map["data"]
    assert isinstance(data, dict)
    return parse_config(data["runtime.yaml"])


def test_full_spec_maps_to_runtime_config() -> None:
    config = _runtime(build_config_map(full_ctx()))
    assert config.pool == "research"
    assert config.handler == "research_agents.entrypoints:run_task"
    assert (config.workers, config.concurrency) == (4, 8)
    assert config.task_timeout_seconds == 900
    assert config.max_tasks_per_worker == 500
    assert config.max_worker_memory_bytes == 1536 * 2**20
    assert config.container_memory_limit_bytes == 8 * 2**30
    assert config.drain_grace_seconds == 960
    assert (config.stream, config.group) == ("research:tasks", "research-workers")
    assert (config.max_deliveries, config.lease_seconds) == (3, 30)
    assert config.cache_ttl_seconds == 1800
    assert (config.metrics_host, config.metrics_port) == ("0.0.0.0", 9090)
    assert config.db_pool_max_size == 8


def test_minimal_spec_uses_runtime_defaults_where_unset() -> None:
    config = _runtime(build_config_map(minimal_ctx()))
    assert config.pool == "echo"
    assert config.max_tasks_per_worker is None  # 0 in the spec: never recycle
    assert config.max_worker_memory_bytes is None
    assert config.container_memory_limit_bytes is None
    assert config.stream is None
    assert config.db_pool_max_size is None
    assert config.stream_key == "agentpool:{agents/echo}:tasks"


def test_runtime_yaml_is_the_runtime_s_own_rendering() -> None:
    ctx = full_ctx()
    text = build_config_map(ctx)["data"]["runtime.yaml"]
    assert text == render_config(runtime_config(ctx))
    assert render_config(parse_config(text)) == text


def test_cache_ttl_only_when_cache_enabled() -> None:
    ctx = full_ctx({"cache": {"enabled": False, "redis": None}})
    assert "cache_ttl_seconds" not in json.loads(build_config_map(ctx)["data"]["runtime.yaml"])


@pytest.mark.parametrize(
    ("per_pod", "concurrency", "max_client", "expected"),
    [(4, 8, 64, 8), (4, 8, 100, 8), (3, 10, 30, 10), (4, 8, 40, 8)],
)
def test_db_pool_fits_pgbouncer_client_limit(
    per_pod: int, concurrency: int, max_client: int, expected: int
) -> None:
    ctx = full_ctx(
        {
            "workers": {"perPod": per_pod, "concurrency": concurrency},
            "database": {"pgbouncer": {"maxClientConnections": max_client}},
        }
    )
    config = _runtime(build_config_map(ctx))
    assert config.db_pool_max_size == expected
    assert per_pod * config.effective_db_pool_max_size <= max_client


def test_db_pool_shrinks_below_concurrency_when_pgbouncer_is_smaller() -> None:
    # The API's CEL rule (maxClientConnections >= perPod x concurrency) is not checked in
    # Python, so the builder still has to keep the pool within PgBouncer's limit.
    ctx = full_ctx(
        {
            "workers": {"perPod": 4, "concurrency": 8},
            "database": {"pgbouncer": {"maxClientConnections": 22}},
        }
    )
    assert _runtime(build_config_map(ctx)).db_pool_max_size == 5


def test_pgbouncer_ini() -> None:
    ini = build_config_map(full_ctx())["data"]["pgbouncer.ini"]
    lines = ini.splitlines()
    assert lines[0] == "[pgbouncer]"
    for line in (
        "listen_addr = 127.0.0.1",
        "listen_port = 6432",
        "unix_socket_dir =",
        "auth_type = scram-sha-256",
        "auth_file = /etc/pgbouncer/secret/userlist.txt",
        "pool_mode = transaction",
        "default_pool_size = 4",
        "max_client_conn = 64",
        "max_prepared_statements = 200",
        "ignore_startup_parameters = extra_float_digits,options",
        "server_reset_query =",
        "admin_users =",
        # The exporter's read-only user (it is on by default with a database).
        "stats_users = agentpool_stats",
        "logfile =",
        "pidfile =",
    ):
        assert line in lines
    assert lines[-1] == "%include /etc/pgbouncer/secret/databases.ini"
    assert "[databases]" not in ini


def test_session_mode_keeps_pgbouncer_s_reset_query() -> None:
    ini = build_config_map(full_ctx({"database": {"pgbouncer": {"poolMode": "session"}}}))["data"][
        "pgbouncer.ini"
    ]
    assert "pool_mode = session" in ini
    assert "server_reset_query" not in ini


def test_no_pgbouncer_ini_without_a_database() -> None:
    assert set(build_config_map(minimal_ctx())["data"]) == {"runtime.yaml"}


def _secret_fragments(values: list[str | None]) -> list[str]:
    fragments = []
    for value in values:
        if not value:
            continue
        fragments.append(value)
        password = urlsplit(value).password
        if password:
            fragments.append(password)
    return fragments


@pytest.mark.parametrize("which", ["minimal", "full"])
def test_no_secret_value_outside_the_derived_secret(which: str) -> None:
    ctx, secrets = (
        (minimal_ctx(), MINIMAL_SECRETS) if which == "minimal" else (full_ctx(), FULL_SECRETS)
    )
    children = build_children(ctx)
    fragments = _secret_fragments(
        [secrets.redis_url, secrets.cache_redis_url, secrets.database_dsn]
    )
    assert fragments
    for manifest in (
        children.config_map,
        children.deployment,
        children.service,
        children.pdb,
        children.hpa,
        children.pod_monitor,
    ):
        serialized = json.dumps(manifest)
        for fragment in fragments:
            assert fragment not in serialized


def test_a_pool_left_at_every_default_renders_only_its_identity() -> None:
    # The CRD's defaults are the runtime's (both read agent_runtime.contract): a spec that sets
    # nothing but image, handler and queue renders no setting that overrides a runtime default.
    rendered = json.loads(build_config_map(minimal_ctx())["data"]["runtime.yaml"])
    assert rendered == {"pool": "echo", "namespace": "agents", "handler": "echo_agent.tasks:handle"}


def test_the_crd_and_the_runtime_default_to_the_same_values() -> None:
    from agentpool_operator.api import AgentPoolSpec

    spec = AgentPoolSpec.model_validate(
        {"image": "i", "handler": "m:f", "queue": {"redis": {"urlSecretRef": {"name": "r",
                                                                           "key": "u"}}}})
    runtime = RuntimeConfig(pool="p", handler="m:f")
    assert (spec.workers.per_pod, spec.workers.concurrency) == (runtime.workers,
                                                                runtime.concurrency)
    assert spec.workers.task_timeout_seconds == runtime.task_timeout_seconds
    assert spec.workers.drain_grace_period_seconds == runtime.drain_grace_seconds
    assert (spec.queue.consumer_group, spec.queue.max_deliveries, spec.queue.lease_seconds) == (
        runtime.group, runtime.max_deliveries, runtime.lease_seconds)
    assert spec.cache.ttl_seconds == runtime.cache_ttl_seconds
    assert spec.monitoring.metrics_port == runtime.metrics_port


def test_tracing_endpoint_and_sampling_reach_the_runtime_only_when_set() -> None:
    ctx = minimal_ctx({"monitoring": {"tracing": {
        "endpoint": "http://otel-collector.observability:4318", "samplePercent": 25}}})
    config = _runtime(build_config_map(ctx))
    assert config.tracing_endpoint == "http://otel-collector.observability:4318"
    assert config.tracing_sample_ratio == 0.25
    off = _runtime(build_config_map(minimal_ctx()))
    assert off.tracing_endpoint is None
    assert "tracing" not in build_config_map(minimal_ctx())["data"]["runtime.yaml"]


def test_database_timeouts_and_retention_reach_the_runtime() -> None:
    database = {"timeouts": {"acquireSeconds": 3, "connectSeconds": 4, "commandSeconds": 120,
                             "idleConnectionLifetimeSeconds": 0},
                "retention": {"resultsMonths": 12, "eventsMonths": 1}}
    config = _runtime(build_config_map(full_ctx({"database": database})))
    assert (config.db_acquire_timeout_seconds, config.db_connect_timeout_seconds,
            config.db_command_timeout_seconds) == (3, 4, 120)
    assert config.db_max_inactive_connection_lifetime_seconds == 0
    assert (config.results_retention_months, config.events_retention_months) == (12, 1)


def test_database_timeouts_default_to_the_runtime_s() -> None:
    from agentpool_operator.api import DatabaseRetentionSpec, DatabaseTimeoutsSpec

    runtime = RuntimeConfig(pool="p", handler="m:f")
    timeouts, retention = DatabaseTimeoutsSpec(), DatabaseRetentionSpec()
    assert (timeouts.acquire_seconds, timeouts.connect_seconds, timeouts.command_seconds,
            timeouts.idle_connection_lifetime_seconds) == (
        runtime.db_acquire_timeout_seconds, runtime.db_connect_timeout_seconds,
        runtime.db_command_timeout_seconds, runtime.db_max_inactive_connection_lifetime_seconds)
    assert (retention.results_months, retention.events_months) == (
        runtime.results_retention_months, runtime.events_retention_months)
    # At the defaults nothing of them is rendered.
    rendered = json.loads(build_config_map(full_ctx())["data"]["runtime.yaml"])
    assert not {key for key in rendered if (key.startswith("db_") and "timeout" in key)
                or "retention" in key}


KNOBS = {
    "handlers": {"summarise": "research_agents.summary:run", "fetch.v2": "research_agents.f:go"},
    "initHook": "research_agents.setup:load_models",
    "workers": {"maxTasksPerWorker": 200, "maxTasksJitter": 40, "tracemallocFrames": 3},
    "http": {"maxConnections": 50, "maxConnectionsPerHost": 0, "keepaliveSeconds": 15,
             "timeoutSeconds": 120},
    "monitoring": {"logLevel": "WARNING"},
}


def test_handlers_init_hook_jitter_http_and_log_level_reach_the_runtime() -> None:
    config = _runtime(build_config_map(minimal_ctx(KNOBS)))
    assert config.handler_map == {"default": "echo_agent.tasks:handle",
                                  "summarise": "research_agents.summary:run",
                                  "fetch.v2": "research_agents.f:go"}
    assert config.init_hook == "research_agents.setup:load_models"
    assert (config.max_tasks_per_worker, config.max_tasks_jitter) == (200, 40)
    assert config.tracemalloc_frames == 3
    assert (config.http_limit, config.http_limit_per_host) == (50, 0)
    assert (config.http_keepalive_seconds, config.http_timeout_seconds) == (15, 120)
    assert config.log_level == "WARNING"


@pytest.mark.parametrize(("handlers", "message"), [
    ({"default": "m:f"}, "reserved"),
    ({"-x": "m:f"}, "handler name '-x'"),
    ({"x": "not a ref"}, "handlers.x"),
    ({f"h{n}": "m:f" for n in range(33)}, "32"),
])
def test_a_handler_map_the_runtime_would_refuse_is_refused_in_the_spec(
        handlers: dict[str, str], message: str) -> None:
    from agentpool_operator.api import AgentPoolSpec

    spec = {"image": "i", "handler": "m:f", "handlers": handlers,
            "queue": {"redis": {"urlSecretRef": {"name": "r", "key": "u"}}}}
    with pytest.raises(ValueError, match=message):
        AgentPoolSpec.model_validate(spec)


def test_the_new_knobs_default_to_the_runtime_s_values() -> None:
    from agentpool_operator.api import AgentPoolSpec

    spec = AgentPoolSpec.model_validate(
        {"image": "i", "handler": "m:f", "queue": {"redis": {"urlSecretRef": {"name": "r",
                                                                           "key": "u"}}}})
    runtime = RuntimeConfig(pool="p", handler="m:f")
    assert spec.workers.max_tasks_jitter == runtime.max_tasks_jitter
    assert spec.workers.tracemalloc_frames == runtime.tracemalloc_frames
    assert (spec.http.max_connections, spec.http.max_connections_per_host) == (
        runtime.http_limit, runtime.http_limit_per_host)
    assert (spec.http.keepalive_seconds, spec.http.timeout_seconds) == (
        runtime.http_keepalive_seconds, runtime.http_timeout_seconds)
    assert spec.monitoring.log_level == runtime.log_level
    assert (spec.init_hook, spec.handlers) == (runtime.init_hook, None)
