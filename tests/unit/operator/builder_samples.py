"""Sample AgentPools for the builder tests: a minimal spec and one with every section set.

They mirror `examples/agentpool-minimal.yaml` and `examples/agentpool-full.yaml` but are kept
here, so the builder tests change only when the builders (or the API defaults) do. Builders
are tested by focused assertions on what each field is for (one per behaviour), not by golden
copies of whole manifests: a golden file restates every field without saying which matter.
"""

from __future__ import annotations

import copy
from typing import Any

from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.builders import PoolContext, SecretValues

NAMESPACE = "agents"
UID = "8d0f6c1e-3b5a-4c2e-9f1d-2a7b6c5d4e3f"

MINIMAL_SPEC: dict[str, Any] = {
    "image": "ghcr.io/example/echo-agent:0.1.0",
    "handler": "echo_agent.tasks:handle",
    "queue": {"redis": {"urlSecretRef": {"name": "echo-redis", "key": "url"}}},
}
MINIMAL_SECRETS = SecretValues(redis_url="redis://:queue-pw-minimal@redis.default.svc:6379/0")

FULL_SPEC: dict[str, Any] = {
    "image": "registry.example.com/research/agents:2.3.1",
    "imagePullPolicy": "IfNotPresent",
    "handler": "research_agents.entrypoints:run_task",
    "replicas": 2,
    "minReplicas": 2,
    "maxReplicas": 20,
    "workers": {
        "perPod": 4,
        "concurrency": 8,
        "maxTasksPerWorker": 500,
        "maxMemoryPerWorker": "1536Mi",
        "taskTimeoutSeconds": 900,
        "drainGracePeriodSeconds": 960,
    },
    "resources": {
        "requests": {"cpu": 1, "memory": "4Gi"},
        "limits": {"cpu": "2", "memory": "8Gi"},
    },
    "queue": {
        "redis": {"urlSecretRef": {"name": "research-redis", "key": "queue-url"}},
        "stream": "research:tasks",
        "consumerGroup": "research-workers",
        "maxDeliveries": 3,
        "leaseSeconds": 30,
    },
    "cache": {
        "enabled": True,
        "redis": {"urlSecretRef": {"name": "research-redis", "key": "cache-url"}},
        "ttlSeconds": 1800,
    },
    "database": {
        "dsnSecretRef": {"name": "research-postgres", "key": "dsn"},
        "connectionBudget": 90,
        "pgbouncer": {
            "image": "ghcr.io/cloudnative-pg/pgbouncer:1.24.1",
            "poolMode": "transaction",
            "defaultPoolSize": 4,
            "maxClientConnections": 64,
        },
    },
    "autoscaling": {
        "enabled": True,
        "targetBacklogPerWorker": 2,
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": 30},
                {"type": "Pods", "value": 4, "periodSeconds": 30},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": 600,
            "selectPolicy": "Min",
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
        },
    },
    "monitoring": {"metrics": True, "metricsPort": 9090, "podMonitor": True},
    "pod": {
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [
            {"key": "workload", "operator": "Equal", "value": "agents", "effect": "NoSchedule"}
        ],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {
                                "matchLabels": {"app.kubernetes.io/instance": "research"}
                            },
                        },
                    }
                ]
            }
        },
        "priorityClassName": "agents-high",
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
            }
        ],
        "serviceAccountName": "research-agents",
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "env": [
            {"name": "LOG_LEVEL", "value": "info"},
            {
                "name": "OPENAI_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": "research-llm", "key": "api-key"}},
            },
        ],
        "labels": {"team": "research", "cost-center": "4711"},
        "annotations": {"example.com/owner": "research-platform"},
    },
}
FULL_SECRETS = SecretValues(
    redis_url="redis://:queue-pw-full@redis-queue.data.svc:6379/0",
    cache_redis_url="redis://:cache-pw-full@redis-cache.data.svc:6379/1",
    database_dsn="postgresql://agents:db-pw-full@postgres.data.svc:5432/agents",
)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        elif value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def make_ctx(
    name: str,
    spec: dict[str, Any],
    secrets: SecretValues,
    *,
    overrides: dict[str, Any] | None = None,
    pod_monitor_api: bool = False,
) -> PoolContext:
    """A context for `spec` deep-merged with `overrides` (a None value removes a key)."""
    merged = _merge(spec, overrides or {})
    return PoolContext(
        name=name,
        namespace=NAMESPACE,
        uid=UID,
        spec=AgentPoolSpec.model_validate(merged),
        secrets=secrets,
        pod_monitor_api=pod_monitor_api,
    )


def minimal_ctx(
    overrides: dict[str, Any] | None = None, secrets: SecretValues = MINIMAL_SECRETS
) -> PoolContext:
    """The `echo` pool: image, handler and queue only."""
    return make_ctx("echo", MINIMAL_SPEC, secrets, overrides=overrides)


def full_ctx(
    overrides: dict[str, Any] | None = None,
    secrets: SecretValues = FULL_SECRETS,
    *,
    pod_monitor_api: bool = True,
) -> PoolContext:
    """The `research` pool: database, cache, autoscaling, PodMonitor, pod overrides."""
    return make_ctx(
        "research", FULL_SPEC, secrets, overrides=overrides, pod_monitor_api=pod_monitor_api
    )
