"""The Deployment `<pool>`: the worker pods, their runtime container (which also serves
PgBouncer's metrics) and the PgBouncer sidecar.

`spec.replicas` is always the AgentPool's `spec.replicas`: the operator is the Deployment's
only replica writer, and the HorizontalPodAutoscaler scales the AgentPool through its scale
subresource instead of the Deployment, so no two managers fight over the field.
"""

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
from agent_runtime.contract import budget_api_key_env
from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.builders.common import (
    CONFIG_HASH_ANNOTATION,
    METRICS_PORT_NAME,
    Manifest,
    config_map_name,
    container_security_context,
    label_selector,
    object_meta,
    pgbouncer_exporter_enabled,
    secret_name,
    worker_labels,
)
from agentpool_operator.builders.config import (
    RUNTIME_CONFIG_DIR,
    RUNTIME_CONFIG_KEY,
    RUNTIME_CONFIG_PATH,
)
from agentpool_operator.builders.confighash import config_hash
from agentpool_operator.builders.context import PoolContext
from agentpool_operator.builders.pgbouncer import pgbouncer_container, pgbouncer_volume
from agentpool_operator.builders.scheduling import pod_security_context, scheduling
from agentpool_operator.builders.secret import DATABASE_URL_KEY, STATS_URL_KEY

RUNTIME_CONTAINER = "runtime"
# The `agentpool-runtime` console script and its `run` subcommand (agent_runtime/cli.py).
RUNTIME_COMMAND = ["agentpool-runtime"]
RUNTIME_ARGS = ["run"]
READY_PATH = "/readyz"
LIVE_PATH = "/healthz"
# Time after the drain grace period for the runtime to hand unfinished tasks back to the
# queue and for PgBouncer (stopped after the runtime) to exit, before the kubelet kills.
TERMINATION_MARGIN_SECONDS = 15
REVISION_HISTORY_LIMIT = 5
UNIX_USER = 65532  # the conventional "nonroot" user of distroless-style images

CONFIG_VOLUME = "config"
TMP_VOLUME = "tmp"


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    # A reference, never the value: the kubelet reads the Secret when it starts the pod.
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _user_env(spec: AgentPoolSpec) -> list[dict[str, Any]]:
    env = []
    for var in spec.pod.env or ():
        item = var.to_json()
        field_ref = item.get("valueFrom", {}).get("fieldRef")
        if isinstance(field_ref, dict) and "apiVersion" not in field_ref:
            # The API server defaults it; send it so the live object compares equal.
            item["valueFrom"]["fieldRef"] = {"apiVersion": "v1", **field_ref}
        env.append(item)
    return env


def runtime_env(ctx: PoolContext) -> list[dict[str, Any]]:
    """The runtime's environment: config path, pod name, secret URLs by reference, then the
    user's variables (which cannot use the reserved AGENTPOOL_ prefix)."""
    spec = ctx.spec
    queue_ref = spec.queue.redis.url_secret_ref
    env: list[dict[str, Any]] = [
        {"name": CONFIG_PATH_ENV, "value": RUNTIME_CONFIG_PATH},
        {
            "name": POD_NAME_ENV,
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        },
        _secret_env(REDIS_URL_ENV, queue_ref.name, queue_ref.key),
    ]
    if spec.cache.enabled and spec.cache.redis is not None:
        cache_ref = spec.cache.redis.url_secret_ref
        env.append(_secret_env(CACHE_REDIS_URL_ENV, cache_ref.name, cache_ref.key))
    if spec.database is not None:
        env.append(_secret_env(DATABASE_URL_ENV, secret_name(ctx.name), DATABASE_URL_KEY))
    if pgbouncer_exporter_enabled(spec):
        # With it the runtime also serves PgBouncer's pool metrics on its /metrics.
        env.append(_secret_env(PGBOUNCER_STATS_URL_ENV, secret_name(ctx.name), STATS_URL_KEY))
    # Budget keys' API keys: by reference to a Secret in the pool's namespace (the budget's
    # own, or the pool's copy of a shared budget's), never read or copied by the operator.
    for key in ctx.budgets:
        if key.api_key is not None:
            env.append(_secret_env(budget_api_key_env(key.config.name), *key.api_key))
    return env + _user_env(spec)


def _quantities(values: dict[str, int | str]) -> dict[str, str]:
    # Quantities as written, but as strings: the API server returns "2" for 2.
    return {name: str(value) for name, value in values.items()}


def _resources(spec: AgentPoolSpec) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if spec.resources.requests:
        resources["requests"] = _quantities(spec.resources.requests)
    if spec.resources.limits:
        resources["limits"] = _quantities(spec.resources.limits)
    return resources


def _http_probe(path: str, **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": METRICS_PORT_NAME}, **timing}


def runtime_container(ctx: PoolContext) -> dict[str, Any]:
    """The worker container: the runtime supervisor and its warm worker processes."""
    spec = ctx.spec
    container: dict[str, Any] = {"name": RUNTIME_CONTAINER, "image": spec.image}
    if spec.image_pull_policy is not None:
        container["imagePullPolicy"] = spec.image_pull_policy
    container |= {
        "command": RUNTIME_COMMAND,
        "args": RUNTIME_ARGS,
        "env": runtime_env(ctx),
        "ports": [
            # protocol is part of the ports list's merge key: sent explicitly for apply.
            {
                "name": METRICS_PORT_NAME,
                "containerPort": spec.monitoring.metrics_port,
                "protocol": "TCP",
            }
        ],
        # Warm-up imports the handler in every worker (models, SDKs) and can be slow: up to
        # 60 x 2 s before liveness checks start.
        "startupProbe": _http_probe(READY_PATH, periodSeconds=2, failureThreshold=60),
        "readinessProbe": _http_probe(READY_PATH, periodSeconds=5),
        "livenessProbe": _http_probe(LIVE_PATH, periodSeconds=10, failureThreshold=3),
    }
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    container["securityContext"] = container_security_context()
    container["volumeMounts"] = [
        {"name": CONFIG_VOLUME, "mountPath": RUNTIME_CONFIG_DIR, "readOnly": True},
        # The only writable path: Python and libraries may need a temp dir.
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
    ]
    return container


def _volumes(ctx: PoolContext) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": CONFIG_VOLUME,
            "configMap": {
                "name": config_map_name(ctx.name),
                "items": [{"key": RUNTIME_CONFIG_KEY, "path": RUNTIME_CONFIG_KEY}],
            },
        },
        {"name": TMP_VOLUME, "emptyDir": {}},
    ]
    if ctx.spec.database is not None:
        volumes.append(pgbouncer_volume(ctx))
    return volumes


def pod_spec(ctx: PoolContext) -> dict[str, Any]:
    """The worker pods' spec."""
    spec = ctx.spec
    pod: dict[str, Any] = {}
    if spec.pod.service_account_name is not None:
        pod["serviceAccountName"] = spec.pod.service_account_name
    pod |= {
        # Workers never call the Kubernetes API; no token to steal.
        "automountServiceAccountToken": False,
        # Service env vars are noise and can shadow the runtime's own variables.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": (
            spec.workers.drain_grace_period_seconds + TERMINATION_MARGIN_SECONDS
        ),
        "securityContext": pod_security_context(UNIX_USER),
    }
    if spec.database is not None:
        pod["initContainers"] = [pgbouncer_container(spec.database)]
    pod["containers"] = [runtime_container(ctx)]
    pod["volumes"] = _volumes(ctx)
    pod |= scheduling(ctx)
    return pod


def pod_template(ctx: PoolContext) -> dict[str, Any]:
    """The pod template: our labels and the config hash win over the user's overrides."""
    overrides = ctx.spec.pod
    return {
        "metadata": {
            "labels": {**(overrides.labels or {}), **worker_labels(ctx.name)},
            "annotations": {
                **(overrides.annotations or {}),
                CONFIG_HASH_ANNOTATION: config_hash(ctx),
            },
        },
        "spec": pod_spec(ctx),
    }


def build_deployment(ctx: PoolContext) -> Manifest:
    """The `<pool>` Deployment."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(ctx, ctx.name, worker_labels(ctx.name)),
        "spec": {
            "replicas": ctx.spec.replicas,
            "revisionHistoryLimit": REVISION_HISTORY_LIMIT,
            "selector": label_selector(ctx.name),
            # Surge, never drop: a rollout must not reduce the pool's capacity, and old
            # pods take their drain grace period to leave.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": pod_template(ctx),
        },
    }
