"""The PgBouncer sidecar of pools with a database: its container and its config volume, and
the exporter container that serves PgBouncer's pool metrics.

Called by `deployment.py` only. PgBouncer runs as a native sidecar (an init container with
`restartPolicy: Always`): the kubelet starts it before the runtime container and stops it
after, so draining workers keep their database connection until the last task has finished.
"""

from __future__ import annotations

from typing import Any

from agentpool_operator.api import DatabaseSpec
from agentpool_operator.api.pod import SidecarResources
from agentpool_operator.builders.common import (
    PGBOUNCER_EXPORTER_PORT_NAME,
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
    EXPORTER_CONNECTION_KEY,
    USERLIST_KEY,
)

PGBOUNCER_CONTAINER = "pgbouncer"
EXPORTER_CONTAINER = "pgbouncer-exporter"
# Read by the exporter's --pgBouncer.connectionString flag (kingpin Envar): the credentials
# reach the process from the Secret, never through args the API shows to every reader.
EXPORTER_CONNECTION_ENV = "PGBOUNCER_EXPORTER_CONNECTION_STRING"
PGBOUNCER_VOLUME = "pgbouncer"
# Owner and group read only; with fsGroup the files belong to the pod's group, which the
# non-root user is in, so PgBouncer can read its credentials and nobody else can.
CREDENTIALS_MODE = 0o440
_SECRET_SUBDIR = PGBOUNCER_SECRET_DIR.removeprefix(PGBOUNCER_DIR + "/")


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

    No probes: PgBouncer listens on loopback only, and the kubelet runs tcpSocket and httpGet
    probes against the pod IP, so they could never succeed; an exec probe would need a
    client binary in the image. The runtime retries its first database connection instead.
    """
    return {
        "name": PGBOUNCER_CONTAINER,
        "image": database.pgbouncer.image,
        "restartPolicy": "Always",
        "command": ["pgbouncer", PGBOUNCER_INI_PATH],
        "resources": pgbouncer_resources(),
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": PGBOUNCER_VOLUME, "mountPath": PGBOUNCER_DIR, "readOnly": True}],
    }


def _quantities(resources: SidecarResources) -> dict[str, Any]:
    # Quantities as strings: the API server returns "1" for 1, and apply must compare equal.
    out: dict[str, Any] = {}
    for part, values in (("requests", resources.requests), ("limits", resources.limits)):
        if values is not None and values.amounts():
            out[part] = {name: str(value) for name, value in values.amounts().items()}
    return out


def pgbouncer_exporter_container(ctx: PoolContext) -> dict[str, Any]:
    """prometheus-community's pgbouncer_exporter, reading PgBouncer's admin console over
    loopback as the stats-only user and serving /metrics on the pod IP.

    A regular container, not a native sidecar: nothing waits for it, and since v0.11 it
    connects once per scrape, so it needs no start order relative to PgBouncer. No probes:
    a failing readiness probe would take a healthy worker pod out of the pool, and the
    exporter reports a PgBouncer it cannot reach as `pgbouncer_up 0` instead of failing.
    """
    exporter = ctx.spec.monitoring.pgbouncer_exporter
    container: dict[str, Any] = {
        "name": EXPORTER_CONTAINER,
        "image": exporter.image,
        "args": [f"--web.listen-address=:{exporter.port}", "--log.format=json"],
        "env": [
            {
                "name": EXPORTER_CONNECTION_ENV,
                "valueFrom": {
                    "secretKeyRef": {"name": secret_name(ctx.name), "key": EXPORTER_CONNECTION_KEY}
                },
            }
        ],
        "ports": [
            # protocol is part of the ports list's merge key: sent explicitly for apply.
            {"name": PGBOUNCER_EXPORTER_PORT_NAME, "containerPort": exporter.port,
             "protocol": "TCP"}
        ],
    }
    resources = _quantities(exporter.resources)
    if resources:
        container["resources"] = resources
    container["securityContext"] = container_security_context()
    return container
