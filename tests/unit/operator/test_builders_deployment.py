"""The `<pool>` Deployment: replicas, rollout, pod hardening, containers and scheduling."""

from __future__ import annotations

from typing import Any

from agent_runtime.config import (
    CACHE_REDIS_URL_ENV,
    CONFIG_PATH_ENV,
    DATABASE_URL_ENV,
    PGBOUNCER_STATS_URL_ENV,
    POD_NAME_ENV,
    REDIS_URL_ENV,
)
from agentpool_operator.builders import build_deployment, selector_labels
from tests.unit.operator.builder_samples import full_ctx, minimal_ctx

HARDENED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _runtime(deployment: dict[str, Any]) -> dict[str, Any]:
    # The first container; the PgBouncer exporter (pools with a database) comes after it.
    container = _pod(deployment)["containers"][0]
    assert container["name"] == "runtime"
    return dict(container)


def _env(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in _runtime(deployment)["env"]}


def test_replicas_always_follow_the_spec() -> None:
    assert build_deployment(full_ctx({"replicas": 7}))["spec"]["replicas"] == 7
    # Also with autoscaling: the HPA scales the AgentPool, never the Deployment.
    assert full_ctx().spec.autoscaling.enabled
    assert build_deployment(full_ctx())["spec"]["replicas"] == 2
    assert build_deployment(minimal_ctx({"replicas": 0}))["spec"]["replicas"] == 0


def test_rollout_never_drops_capacity() -> None:
    spec = build_deployment(minimal_ctx())["spec"]
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
    }
    assert spec["revisionHistoryLimit"] == 5
    assert spec["selector"] == {"matchLabels": selector_labels("echo")}


def test_pod_is_hardened() -> None:
    pod = _pod(build_deployment(minimal_ctx()))
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "serviceAccountName" not in pod
    assert _runtime(build_deployment(minimal_ctx()))["securityContext"] == HARDENED


def test_grace_period_covers_the_drain() -> None:
    pod = _pod(build_deployment(full_ctx()))
    assert pod["terminationGracePeriodSeconds"] == 960 + 15
    assert _pod(build_deployment(minimal_ctx()))["terminationGracePeriodSeconds"] == 330 + 15


def test_runtime_container_command_ports_probes() -> None:
    container = _runtime(build_deployment(full_ctx()))
    assert container["image"] == "registry.example.com/research/agents:2.3.1"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert (container["command"], container["args"]) == (["agentpool-runtime"], ["run"])
    assert container["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    ready = {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"] == {
        "httpGet": ready,
        "periodSeconds": 2,
        "failureThreshold": 60,
    }
    assert container["readinessProbe"] == {"httpGet": ready, "periodSeconds": 5}
    assert container["livenessProbe"] == {
        "httpGet": {"path": "/healthz", "port": "metrics"},
        "periodSeconds": 10,
        "failureThreshold": 3,
    }


def test_metrics_port_follows_the_spec() -> None:
    container = _runtime(build_deployment(minimal_ctx({"monitoring": {"metricsPort": 9200}})))
    assert container["ports"][0]["containerPort"] == 9200


def test_minimal_container_omits_unset_fields() -> None:
    container = _runtime(build_deployment(minimal_ctx()))
    assert "imagePullPolicy" not in container
    assert "resources" not in container


def test_resources_are_strings_as_written() -> None:
    container = _runtime(build_deployment(full_ctx()))
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "4Gi"},
        "limits": {"cpu": "2", "memory": "8Gi"},
    }
    only_limits = _runtime(
        build_deployment(minimal_ctx({"resources": {"limits": {"memory": "1536Mi"}}}))
    )
    assert only_limits["resources"] == {"limits": {"memory": "1536Mi"}}


def test_env_references_secrets_and_appends_user_env() -> None:
    deployment = build_deployment(full_ctx())
    names = [item["name"] for item in _runtime(deployment)["env"]]
    assert names == [
        CONFIG_PATH_ENV,
        POD_NAME_ENV,
        REDIS_URL_ENV,
        CACHE_REDIS_URL_ENV,
        DATABASE_URL_ENV,
        PGBOUNCER_STATS_URL_ENV,
        "LOG_LEVEL",
        "OPENAI_API_KEY",
    ]
    env = _env(deployment)
    assert env[CONFIG_PATH_ENV] == {"name": CONFIG_PATH_ENV, "value": "/etc/agentpool/runtime.yaml"}
    assert env[POD_NAME_ENV]["valueFrom"] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}
    }
    assert env[REDIS_URL_ENV]["valueFrom"] == {
        "secretKeyRef": {"name": "research-redis", "key": "queue-url"}
    }
    assert env[CACHE_REDIS_URL_ENV]["valueFrom"] == {
        "secretKeyRef": {"name": "research-redis", "key": "cache-url"}
    }
    assert env[DATABASE_URL_ENV]["valueFrom"] == {
        "secretKeyRef": {"name": "research-pgbouncer", "key": "database-url"}
    }
    assert env["LOG_LEVEL"] == {"name": "LOG_LEVEL", "value": "info"}


def test_minimal_env_has_no_cache_or_database() -> None:
    assert list(_env(build_deployment(minimal_ctx()))) == [
        CONFIG_PATH_ENV,
        POD_NAME_ENV,
        REDIS_URL_ENV,
    ]


def test_disabled_cache_does_not_reference_its_secret() -> None:
    env = _env(build_deployment(full_ctx({"cache": {"enabled": False}})))
    assert CACHE_REDIS_URL_ENV not in env


def test_user_field_ref_gets_the_defaulted_api_version() -> None:
    ctx = minimal_ctx(
        {
            "pod": {
                "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
            }
        }
    )
    assert _env(build_deployment(ctx))["NODE"]["valueFrom"] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}
    }


def test_volumes_without_database() -> None:
    deployment = build_deployment(minimal_ctx())
    pod = _pod(deployment)
    assert "initContainers" not in pod
    assert pod["volumes"] == [
        {
            "name": "config",
            "configMap": {
                "name": "echo-config",
                "items": [{"key": "runtime.yaml", "path": "runtime.yaml"}],
            },
        },
        {"name": "tmp", "emptyDir": {}},
    ]
    assert _runtime(deployment)["volumeMounts"] == [
        {"name": "config", "mountPath": "/etc/agentpool", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]


def test_pgbouncer_is_a_native_sidecar() -> None:
    pod = _pod(build_deployment(full_ctx()))
    (sidecar,) = pod["initContainers"]
    assert sidecar["name"] == "pgbouncer"
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "ghcr.io/cloudnative-pg/pgbouncer:1.24.1"
    assert sidecar["command"] == ["pgbouncer", "/etc/pgbouncer/pgbouncer.ini"]
    assert sidecar["resources"] == {
        "requests": {"cpu": "50m", "memory": "32Mi"},
        "limits": {"memory": "64Mi"},
    }
    assert sidecar["securityContext"] == HARDENED
    assert not {"readinessProbe", "ports"} & set(sidecar)
    # Probed from inside the container, on loopback where PgBouncer listens: bash's /dev/tcp
    # or netcat, whichever the image has.
    check = ["sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -c "
             "': </dev/tcp/127.0.0.1/6432'; else exec nc -z 127.0.0.1 6432; fi"]
    assert sidecar["startupProbe"] == {"exec": {"command": check}, "timeoutSeconds": 5,
                                       "periodSeconds": 1, "failureThreshold": 30}
    assert sidecar["livenessProbe"] == {"exec": {"command": check}, "timeoutSeconds": 5,
                                        "periodSeconds": 20, "failureThreshold": 3}
    assert sidecar["volumeMounts"] == [
        {"name": "pgbouncer", "mountPath": "/etc/pgbouncer", "readOnly": True}
    ]


def test_pgbouncer_files_come_from_config_map_and_secret() -> None:
    volumes = {v["name"]: v for v in _pod(build_deployment(full_ctx()))["volumes"]}
    projected = volumes["pgbouncer"]["projected"]
    assert projected["defaultMode"] == 0o440
    config_source, secret_source = projected["sources"]
    assert config_source == {
        "configMap": {
            "name": "research-config",
            "items": [{"key": "pgbouncer.ini", "path": "pgbouncer.ini"}],
        }
    }
    assert secret_source == {
        "secret": {
            "name": "research-pgbouncer",
            "items": [
                {"key": "databases.ini", "path": "secret/databases.ini"},
                {"key": "userlist.txt", "path": "secret/userlist.txt"},
            ],
        }
    }


def test_pod_template_metadata_keeps_our_labels() -> None:
    ctx = minimal_ctx({"pod": {"labels": {"team": "a", "app.kubernetes.io/component": "hijack"}}})
    labels = build_deployment(ctx)["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "a"
    assert labels["app.kubernetes.io/component"] == "worker"
    # User labels stay on the pods only.
    assert "team" not in build_deployment(ctx)["metadata"]["labels"]


def test_scheduling_overrides_are_copied() -> None:
    pod = _pod(build_deployment(full_ctx()))
    assert pod["serviceAccountName"] == "research-agents"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [
        {"key": "workload", "operator": "Equal", "value": "agents", "effect": "NoSchedule"}
    ]
    assert pod["priorityClassName"] == "agents-high"
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert "podAntiAffinity" in pod["affinity"]
    # The user's spread counts this pool's pods when it names no selector.
    assert pod["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels("research")},
        }
    ]


def test_user_spread_selector_and_extra_fields_are_kept() -> None:
    constraint = {
        "maxSkew": 2,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"tier": "agents"}},
        "minDomains": 3,
    }
    pod = _pod(build_deployment(minimal_ctx({"pod": {"topologySpreadConstraints": [constraint]}})))
    assert pod["topologySpreadConstraints"] == [constraint]


def test_default_spread_is_soft_across_nodes() -> None:
    pod = _pod(build_deployment(minimal_ctx()))
    assert pod["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels("echo")},
        }
    ]
    assert not {"nodeSelector", "tolerations", "affinity", "priorityClassName"} & set(pod)
    assert "imagePullSecrets" not in pod
