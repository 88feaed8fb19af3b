"""The PgBouncer metrics exporter: rendered only with a database, wired to PgBouncer's stats
user through the derived Secret, and never carrying credentials anywhere else."""

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

EXPORTER = "pgbouncer-exporter"
DISABLED = {"monitoring": {"pgbouncerExporter": {"enabled": False}}}
DB_PASSWORD = "db-pw-full"  # in FULL_SECRETS' DSN


def _pod(ctx: Any) -> dict[str, Any]:
    pod: dict[str, Any] = build_children(ctx).deployment["spec"]["template"]["spec"]
    return pod


def _exporter(ctx: Any) -> dict[str, Any]:
    (container,) = [c for c in _pod(ctx)["containers"] if c["name"] == EXPORTER]
    return dict(container)


def _secret(ctx: Any) -> dict[str, str]:
    secret = build_children(ctx).secret
    assert secret is not None
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_rendered_only_when_the_pool_has_a_database_and_it_is_enabled() -> None:
    assert [c["name"] for c in _pod(full_ctx())["containers"]] == ["runtime", EXPORTER]
    assert [c["name"] for c in _pod(minimal_ctx())["containers"]] == ["runtime"]
    # Enabled by default, but without PgBouncer there is nothing to export.
    assert minimal_ctx().spec.monitoring.pgbouncer_exporter.enabled
    assert [c["name"] for c in _pod(full_ctx(DISABLED))["containers"]] == ["runtime"]


def test_container_is_hardened_and_bounded_like_the_others() -> None:
    container = _exporter(full_ctx())
    assert container["image"] == "quay.io/prometheuscommunity/pgbouncer-exporter:v0.11.0"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"] == {"requests": {"cpu": "10m", "memory": "24Mi"},
                                      "limits": {"memory": "64Mi"}}
    assert container["ports"] == [{"name": "pgb-metrics", "containerPort": 9127,
                                   "protocol": "TCP"}]
    assert "--web.listen-address=:9127" in container["args"]
    custom = _exporter(full_ctx({"monitoring": {"pgbouncerExporter": {
        "image": "registry.example.com/mirror/pgbouncer-exporter:v0.11.0", "port": 9200,
        "resources": {"requests": {"cpu": "5m"}, "limits": {"memory": "32Mi"}}}}}))
    assert custom["image"] == "registry.example.com/mirror/pgbouncer-exporter:v0.11.0"
    assert custom["ports"][0]["containerPort"] == 9200
    assert "--web.listen-address=:9200" in custom["args"]
    assert custom["resources"] == {"requests": {"cpu": "5m"}, "limits": {"memory": "32Mi"}}


def test_credentials_come_from_the_derived_secret_by_reference_only() -> None:
    ctx = full_ctx()
    container = _exporter(ctx)
    (env,) = container["env"]
    assert env == {"name": "PGBOUNCER_EXPORTER_CONNECTION_STRING", "valueFrom": {
        "secretKeyRef": {"name": "research-pgbouncer", "key": "exporter-connection-string"}}}
    secret = _secret(ctx)
    url = urlsplit(secret["exporter-connection-string"])
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "postgres", "127.0.0.1", 6432, "/pgbouncer")
    assert url.username == "agentpool_stats"
    password = url.password
    assert password
    assert len(password) == 64
    # No secret material in the container spec (args, env values, anywhere), nor in the
    # ConfigMap; the database password is not the stats user's.
    rendered = json.dumps(container)
    for value in (password, DB_PASSWORD, secret["exporter-connection-string"]):
        assert value not in rendered
        assert value not in json.dumps(build_children(ctx).config_map)
    assert password != DB_PASSWORD
    assert all("value" not in item for item in container["env"])


def test_pgbouncer_lets_the_stats_user_read_stats_and_nothing_more() -> None:
    ctx = full_ctx()
    secret = _secret(ctx)
    password = urlsplit(secret["exporter-connection-string"]).password
    assert secret["userlist.txt"].splitlines() == [
        f'"agents" "{DB_PASSWORD}"', f'"agentpool_stats" "{password}"']
    ini = build_children(ctx).config_map["data"]["pgbouncer.ini"].splitlines()
    assert "stats_users = agentpool_stats" in ini
    assert "admin_users =" in ini
    # Disabled: no stats user at all.
    off = full_ctx(DISABLED)
    assert "stats_users =" in build_children(off).config_map["data"]["pgbouncer.ini"].splitlines()
    assert "agentpool_stats" not in _secret(off)["userlist.txt"]
    assert "exporter-connection-string" not in _secret(off)


def test_stats_password_is_stable_per_pool_and_follows_the_database_password() -> None:
    def password(ctx: Any) -> str | None:
        return urlsplit(_secret(ctx)["exporter-connection-string"]).password

    assert password(full_ctx()) == password(full_ctx())
    rotated = dataclasses.replace(
        FULL_SECRETS, database_dsn="postgresql://agents:rotated@postgres.data.svc:5432/agents")
    assert password(full_ctx(secrets=rotated)) != password(full_ctx())
    # Turning the exporter on or off changes what the pods read: it rolls them.
    assert config_hash(full_ctx()) != config_hash(full_ctx(DISABLED))


def test_the_stats_user_name_is_reserved() -> None:
    taken = dataclasses.replace(
        FULL_SECRETS, database_dsn="postgresql://agentpool_stats:pw@postgres.data.svc/agents")
    with pytest.raises(InvalidDatabaseDsn) as caught:
        build_children(full_ctx(secrets=taken))
    assert "pw" not in str(caught.value).replace("PgBouncer", "")


def test_service_and_pod_monitor_expose_the_exporter_port() -> None:
    ports = {p["name"]: p for p in build_service(full_ctx())["spec"]["ports"]}
    assert ports["pgb-metrics"] == {"name": "pgb-metrics", "port": 9127,
                                    "targetPort": "pgb-metrics", "protocol": "TCP"}
    assert "pgb-metrics" not in {p["name"] for p in build_service(minimal_ctx())["spec"]["ports"]}
    monitor = build_pod_monitor(full_ctx())
    assert monitor is not None
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert [e["port"] for e in endpoints] == ["metrics", "pgb-metrics"]
    assert endpoints[1]["relabelings"] == endpoints[0]["relabelings"]
    off = build_pod_monitor(full_ctx(DISABLED))
    assert off is not None
    assert [e["port"] for e in off["spec"]["podMetricsEndpoints"]] == ["metrics"]


def test_the_old_boolean_form_still_reads() -> None:
    spec = {**full_ctx().spec.to_json(), "monitoring": {"pgbouncerExporter": False}}
    assert not AgentPoolSpec.model_validate(spec).monitoring.pgbouncer_exporter.enabled
