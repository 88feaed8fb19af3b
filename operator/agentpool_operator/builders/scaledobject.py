"""KEDA instead of the HPA (`autoscaling.provider: keda`): ScaledObject, TriggerAuthentication
and the Secret they read.

For clusters whose `external.metrics.k8s.io` already belongs to KEDA (one provider per
cluster). Built only while the cluster serves KEDA's CRDs (`PoolContext.keda_api`, detected
by the resync like the PodMonitor CRD); otherwise the pool keeps the builtin HPA.

- ScaledObject `<pool>`: scales the AgentPool through its scale subresource, like the HPA,
  between minReplicas and maxReplicas, with the spec's scale-up/scale-down behaviour passed
  to the HPA KEDA creates (`keda-hpa-<pool>`). One `redis-streams` trigger in stream-length
  mode (XLEN, no consumer group): the runtime deletes every entry when it acknowledges it, so
  the stream holds exactly the waiting and the in-flight tasks - the same backlog the builtin
  metric reports (minus retries parked for later), from one trigger (KEDA takes the maximum
  of several triggers, not their sum) and already before any worker created the group.
- TriggerAuthentication `<pool>-keda` and Secret `<pool>-keda`: KEDA takes the address, user
  and password as separate parameters, not a URL, so they are derived from the pool's queue
  URL; the database index and TLS are trigger metadata.

When KEDA cannot read Redis, the HPA it drives keeps the current replicas (no `fallback`
is set), the same behaviour as the builtin metrics server answering 503.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from agentpool_operator.api import API_VERSION, KIND
from agentpool_operator.builders.common import Manifest, object_meta
from agentpool_operator.builders.config import runtime_config
from agentpool_operator.builders.context import PoolContext
from agentpool_operator.builders.hpa import behavior, per_pod_target

KEDA_API_VERSION = "keda.sh/v1alpha1"
POLLING_INTERVAL_SECONDS = 15
DEFAULT_REDIS_PORT = 6379


def keda_name(pool: str) -> str:
    """The TriggerAuthentication and the Secret it reads."""
    return f"{pool}-keda"


@dataclass(frozen=True)
class RedisTarget:
    """A Redis URL taken apart the way KEDA's Redis scalers want it."""

    address: str
    username: str
    password: str
    database: int
    tls: bool


def redis_target(url: str) -> RedisTarget:
    """`redis[s]://[user[:password]@]host[:port][/db]`; unix sockets are not supported by
    KEDA and come out as the default localhost address."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    try:
        port = parts.port or DEFAULT_REDIS_PORT
    except ValueError:
        port = DEFAULT_REDIS_PORT
    path = parts.path.strip("/")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return RedisTarget(address=address, username=unquote(parts.username or ""),
                       password=unquote(parts.password or ""),
                       database=int(path) if path.isdigit() else 0,
                       tls=parts.scheme == "rediss")


def build_keda_secret(ctx: PoolContext) -> Manifest | None:
    """The `<pool>-keda` Secret: address, and user and password when the URL has them."""
    if not ctx.uses_keda:
        return None
    target = redis_target(ctx.secrets.redis_url)
    values = {"address": target.address, "username": target.username,
              "password": target.password}
    # base64 `data`, not `stringData`, for the reason given in builders/secret.py.
    data = {key: base64.b64encode(value.encode()).decode("ascii")
            for key, value in sorted(values.items()) if value}
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": object_meta(ctx, keda_name(ctx.name)), "type": "Opaque", "data": data}


def build_trigger_authentication(ctx: PoolContext) -> Manifest | None:
    """The `<pool>-keda` TriggerAuthentication, mapping the Secret's keys to KEDA parameters."""
    if not ctx.uses_keda:
        return None
    target = redis_target(ctx.secrets.redis_url)
    present = [key for key, value in (("address", target.address),
                                      ("username", target.username),
                                      ("password", target.password)) if value]
    return {
        "apiVersion": KEDA_API_VERSION, "kind": "TriggerAuthentication",
        "metadata": object_meta(ctx, keda_name(ctx.name)),
        "spec": {"secretTargetRef": [
            {"parameter": key, "name": keda_name(ctx.name), "key": key} for key in present]},
    }


def build_scaled_object(ctx: PoolContext) -> Manifest | None:
    """The `<pool>` ScaledObject, or None unless the pool is autoscaled by KEDA."""
    if not ctx.uses_keda:
        return None
    spec = ctx.spec
    target = redis_target(ctx.secrets.redis_url)
    return {
        "apiVersion": KEDA_API_VERSION, "kind": "ScaledObject",
        "metadata": object_meta(ctx, ctx.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": API_VERSION, "kind": KIND, "name": ctx.name},
            # The API requires minReplicas >= 1 with autoscaling, as for the HPA.
            "minReplicaCount": max(1, spec.min_replicas),
            "maxReplicaCount": spec.max_replicas,
            "pollingInterval": POLLING_INTERVAL_SECONDS,
            "advanced": {"horizontalPodAutoscalerConfig": {
                "behavior": behavior(spec.autoscaling)}},
            "triggers": [{
                "type": "redis-streams",
                "name": "queue-backlog",
                "metadata": {
                    "stream": runtime_config(ctx).stream_key,
                    # Average per pod, as the HPA's AverageValue target.
                    "streamLength": str(per_pod_target(spec)),
                    "databaseIndex": str(target.database),
                    "enableTLS": "true" if target.tls else "false",
                },
                "authenticationRef": {"name": keda_name(ctx.name)},
            }],
        },
    }
