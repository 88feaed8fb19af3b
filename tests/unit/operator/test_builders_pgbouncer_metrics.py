"""PgBouncer's metrics, served by the runtime container: wired only with a database, to
PgBouncer's stats user through the derived Secret, never carrying credentials anywhere else,
and scraped on the runtime's own port (no exporter sidecar, no second port)."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.builders import (
    InvalidDatabaseDsn,
    build_children,
    build_pod_monitor,
    build_service,
    config_hash,
)
from tests.unit.operator.builder_samples import FULL_SECRETS, full_ctx, minimal_ctx

STATS_ENV = "AGENTPOOL_PGBOUNCER_STATS_URL"
STATS_KEY = "pgbouncer-stats-url"
DISABLED = {"monitoring": {"pgbouncerExporter": {"enabled": False}}}
DB_PASSWORD = "db-pw-full"  # in FULL_SECRETS' DSN


def _pod(ctx: Any) -> dict[str, Any]:
    pod: dict[str, Any] = build_children(ctx).deployment["spec"]["template"]["spec"]
    return pod


def _secret(ctx: Any) -> dict[str, str]:
    secret = build_children(ctx).secret
    assert secret is not None
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def _runtime_env(ctx: Any) -> dict[str, dict[str, Any]]:
    (runtime,) = _pod(ctx)["containers"]
    return {item["name"]: item for item in runtime["env"]}


def test_served_by_the_runtime_only_when_the_pool_has_a_database_and_it_is_enabled() -> None:
    # No exporter sidecar: the runtime is the pod's only regular container, always.
    for ctx in (full_ctx(), minimal_ctx(), full_ctx(DISABLED)):
        assert [c["name"] for c in _pod(ctx)["containers"]] == ["runtime"]
    assert STATS_ENV in _runtime_env(full_ctx())
    # Enabled by default, but without PgBouncer there is nothing to export.
    assert minimal_ctx().spec.monitoring.pgbouncer_exporter.enabled
    assert STATS_ENV not in _runtime_env(minimal_ctx())
    assert STATS_ENV not in _runtime_env(full_ctx(DISABLED))


def test_the_sidecar_settings_are_gone() -> None:
    # image/port/resources configured the removed sidecar: refused, not silently ignored.
    spec = {**full_ctx().spec.to_json(),
            "monitoring": {"pgbouncerExporter": {"enabled": True, "port": 9127}}}
    with pytest.raises(ValueError, match="port"):
        AgentPoolSpec.model_validate(spec)


def test_credentials_come_from_the_derived_secret_by_reference_only() -> None:
    ctx = full_ctx()
    env = _runtime_env(ctx)[STATS_ENV]
    assert env == {"name": STATS_ENV, "valueFrom": {
        "secretKeyRef": {"name": "research-pgbouncer", "key": STATS_KEY}}}
    secret = _secret(ctx)
    url = urlsplit(secret[STATS_KEY])
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "postgres", "127.0.0.1", 6432, "/pgbouncer")
    assert url.username == "agentpool_stats"
    password = url.password
    assert password
    assert len(password) == 64
    # No secret material in the pod spec (args, env values, anywhere), nor in the
    # ConfigMap; the database password is not the stats user's.
    rendered = json.dumps(_pod(ctx))
    for value in (password, DB_PASSWORD, secret[STATS_KEY]):
        assert value not in rendered
        assert value not in json.dumps(build_children(ctx).config_map)
    assert password != DB_PASSWORD


def test_pgbouncer_lets_the_stats_user_read_stats_and_nothing_more() -> None:
    ctx = full_ctx()
    secret = _secret(ctx)
    password = urlsplit(secret[STATS_KEY]).password
    assert secret["userlist.txt"].splitlines() == [
        f'"agents" "{DB_PASSWORD}"', f'"agentpool_stats" "{password}"']
    ini = build_children(ctx).config_map["data"]["pgbouncer.ini"].splitlines()
    assert "stats_users = agentpool_stats" in ini
    assert "admin_users =" in ini
    # Disabled: no stats user at all.
    off = full_ctx(DISABLED)
    assert "stats_users =" in build_children(off).config_map["data"]["pgbouncer.ini"].splitlines()
    assert "agentpool_stats" not in _secret(off)["userlist.txt"]
    assert STATS_KEY not in _secret(off)


def test_stats_password_is_stable_per_pool_and_follows_the_database_password() -> None:
    def password(ctx: Any) -> str | None:
        return urlsplit(_secret(ctx)[STATS_KEY]).password

    assert password(full_ctx()) == password(full_ctx())
    rotated = dataclasses.replace(
        FULL_SECRETS, database_dsn="postgresql://agents:rotated@postgres.data.svc:5432/agents")
    assert password(full_ctx(secrets=rotated)) != password(full_ctx())
    # Turning the metrics on or off changes what the pods read: it rolls them.
    assert config_hash(full_ctx()) != config_hash(full_ctx(DISABLED))


def test_the_stats_user_name_is_reserved() -> None:
    taken = dataclasses.replace(
        FULL_SECRETS, database_dsn="postgresql://agentpool_stats:pw@postgres.data.svc/agents")
    with pytest.raises(InvalidDatabaseDsn) as caught:
        build_children(full_ctx(secrets=taken))
    assert "pw" not in str(caught.value).replace("PgBouncer", "")


def test_service_and_pod_monitor_use_the_runtime_port_only() -> None:
    ports = [p["name"] for p in build_service(full_ctx())["spec"]["ports"]]
    assert ports == ["metrics"]
    monitor = build_pod_monitor(full_ctx(pod_monitor_api=True))
    assert monitor is not None
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]


def test_the_old_boolean_form_still_reads() -> None:
    spec = {**full_ctx().spec.to_json(), "monitoring": {"pgbouncerExporter": False}}
    assert not AgentPoolSpec.model_validate(spec).monitoring.pgbouncer_exporter.enabled
