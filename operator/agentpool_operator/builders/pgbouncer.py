"""The PgBouncer sidecar of pools with a database: its container and its config volume.
(Its pool metrics are served by the runtime container:
agent_runtime/supervisor/pgbouncer_metrics.py.)

Called by `deployment.py` only. PgBouncer runs as a native sidecar (an init container with
`restartPolicy: Always`): the kubelet starts it before the runtime container and stops it
after, so draining workers keep their database connection until the last task has finished.
"""

from __future__ import annotations

from typing import Any

from agentpool_operator.api import DatabaseSpec
from agentpool_operator.builders.common import (
    config_map_name,
    container_security_context,
    secret_name,
)
from agentpool_operator.builders.config import (
    PGBOUNCER_DIR,
    PGBOUNCER_INI_KEY,
    PGBOUNCER_INI_PATH,
    PGBOUNCER_SECRET_DIR,
)
from agentpool_operator.builders.context import PoolContext
from agentpool_operator.builders.secret import (
    DATABASES_INI_KEY,
    PGBOUNCER_HOST,
    PGBOUNCER_PORT,
    USERLIST_KEY,
)

PGBOUNCER_CONTAINER = "pgbouncer"
PGBOUNCER_VOLUME = "pgbouncer"
# Owner and group read only; with fsGroup the files belong to the pod's group, which the
# non-root user is in, so PgBouncer can read its credentials and nobody else can.
CREDENTIALS_MODE = 0o440
_SECRET_SUBDIR = PGBOUNCER_SECRET_DIR.removeprefix(PGBOUNCER_DIR + "/")
# Whether PgBouncer accepts a connection on loopback, from inside the container: the kubelet's
# own tcpSocket and httpGet probes dial the pod IP, where PgBouncer does not listen. bash's
# /dev/tcp (bash is essential in every Debian-based image: the default, cloudnative-pg's),
# else netcat (busybox-based images).
LISTENING = (
    f"if command -v bash >/dev/null 2>&1; then "
    f"exec bash -c ': </dev/tcp/{PGBOUNCER_HOST}/{PGBOUNCER_PORT}'; "
    f"else exec nc -z {PGBOUNCER_HOST} {PGBOUNCER_PORT}; fi"
)


def pgbouncer_resources() -> dict[str, Any]:
    """Small and fixed: PgBouncer needs a few MiB per thousand client connections."""
    return {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}


def pgbouncer_volume(ctx: PoolContext) -> dict[str, Any]:
    """One projected volume at /etc/pgbouncer: `pgbouncer.ini` from the ConfigMap and the
    Secret's files under `secret/`.

    One volume rather than a Secret volume nested inside a ConfigMap volume: a mount point
    inside a read-only API-data volume has to be created by the kubelet, which some runtimes
    (e.g. Kata) cannot do, and one volume is also updated atomically as a whole.
    """
    return {
        "name": PGBOUNCER_VOLUME,
        "projected": {
            "defaultMode": CREDENTIALS_MODE,
            "sources": [
                {
                    "configMap": {
                        "name": config_map_name(ctx.name),
                        "items": [{"key": PGBOUNCER_INI_KEY, "path": PGBOUNCER_INI_KEY}],
                    }
                },
                {
                    "secret": {
                        "name": secret_name(ctx.name),
                        "items": [
                            {"key": key, "path": f"{_SECRET_SUBDIR}/{key}"}
                            for key in (DATABASES_INI_KEY, USERLIST_KEY)
                        ],
                    }
                },
            ],
        },
    }


def pgbouncer_container(database: DatabaseSpec) -> dict[str, Any]:
    """The native-sidecar init container running PgBouncer on 127.0.0.1:6432.

    Its probes connect on loopback from inside the container (`LISTENING`): the startup
    probe holds the runtime container back until PgBouncer listens (the kubelet starts the
    next container once a native sidecar's startup probe passes), and the liveness probe
    restarts a PgBouncer that stopped accepting connections. No readiness probe: nothing
    connects to PgBouncer from outside the pod, and the runtime's own readiness covers it.
    """
    probe = {"exec": {"command": ["sh", "-c", LISTENING]}, "timeoutSeconds": 5}
    return {
        "name": PGBOUNCER_CONTAINER,
        "image": database.pgbouncer.image,
        "restartPolicy": "Always",
        "command": ["pgbouncer", PGBOUNCER_INI_PATH],
        "resources": pgbouncer_resources(),
        "startupProbe": {**probe, "periodSeconds": 1, "failureThreshold": 30},
        "livenessProbe": {**probe, "periodSeconds": 20, "failureThreshold": 3},
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": PGBOUNCER_VOLUME, "mountPath": PGBOUNCER_DIR, "readOnly": True}],
    }
