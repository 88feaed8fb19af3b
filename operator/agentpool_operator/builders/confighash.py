"""The config hash on the pod template: rolls the pods when their configuration changes.

Kubernetes does not restart pods when a ConfigMap or Secret they use changes (environment
variables are fixed at container start), so the Deployment builder puts this hash in the pod
template's annotations: any change to the rendered config, the derived Secret or a referenced
Secret's value changes the template and starts a normal rolling update. Only what the pods
consume goes in: `spec.replicas` (written by the autoscaler) must not roll the pool.

Who can read the Deployment sees the hash. It is the usual checksum-annotation trade-off: it
reveals nothing by itself, but lets someone who knows everything else test guesses of a weak
password offline; use generated credentials.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from agentpool_operator.builders.config import config_data
from agentpool_operator.builders.context import PoolContext
from agentpool_operator.builders.secret import secret_data

HASH_LENGTH = 16


def consumed_secret_values(ctx: PoolContext) -> dict[str, str | None]:
    """The referenced Secret values the pods actually read (as env vars or via the derived
    Secret); values of Secrets the spec no longer uses must not roll the pool."""
    spec = ctx.spec
    secrets = ctx.secrets
    cache_separate = spec.cache.enabled and spec.cache.redis is not None
    return {
        "redisUrl": secrets.redis_url,
        "cacheRedisUrl": secrets.cache_redis_url if cache_separate else None,
        "databaseDsn": secrets.database_dsn if spec.database is not None else None,
    }


def config_hash(ctx: PoolContext) -> str:
    """sha256 (first 16 hex digits) over a canonical JSON of everything the pods consume."""
    material: dict[str, Any] = {
        "configMap": config_data(ctx),
        "secret": secret_data(ctx),
        "secretValues": consumed_secret_values(ctx),
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:HASH_LENGTH]
