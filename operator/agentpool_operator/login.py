"""How the operator's kopf half reaches the API server: in a pod, like client-go (and
lightkube, the operator's other half) with the `kubernetes` Service's address from the
environment the kubelet gives every container; elsewhere, the kubeconfig.

kopf's own `login_with_service_account` dials `https://kubernetes.default.svc`, a name only
cluster DNS resolves: in a pod without it (a cluster without DNS, `dnsPolicy: Default`, a
resolver of its own) kopf's watches never connect, and the operator crashes after reconciling
only through its periodic resync.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import kopf


def in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """`https://host:port` of the `kubernetes` Service, from KUBERNETES_SERVICE_HOST and
    KUBERNETES_SERVICE_PORT (an IPv6 host in brackets), or None when either is unset."""
    host = environ.get("KUBERNETES_SERVICE_HOST")
    port = environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's login handler: the pod's service account at the Service's address, else the
    kubeconfig."""
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    if info is None:
        found: kopf.ConnectionInfo | None = kopf.login_with_kubeconfig(**kwargs)
        return found
    server = in_cluster_server(os.environ)
    return dataclasses.replace(info, server=server) if server else info
