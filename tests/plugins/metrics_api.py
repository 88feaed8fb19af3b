"""pytest fixtures for the AgentPool metrics API server (external.metrics.k8s.io).

`metrics_api` (session) runs `python -m agentpool_operator.metrics_api` as its own process on
127.0.0.1 with its own client identity, registers it with the test cluster's aggregator the
way a loopback cluster allows (an ExternalName Service to 127.0.0.1 and an APIService with
`insecureSkipTLSVerify`), and waits until the APIService is Available. At the end it removes
the APIService before stopping the server: an unavailable APIService blocks namespace
deletion. `MetricsApiServer.request` talks to the server directly (not through the
aggregator), with or without a client certificate or token, to test its authentication.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agentpool_dev.cluster import Cluster
from agentpool_dev.procs import free_port, log_tail, module_env, spawn_module, terminate
from tests.plugins.operator import QUEUE_DIRECTORY
from tests.waiting import eventually

METRICS_USER = "agentpool-metrics"
SERVICE_NAME = "agentpool-metrics-apiserver"
SERVICE_NAMESPACE = "kube-system"
APISERVICE_NAME = "v1beta1.external.metrics.k8s.io"
REFRESH_SECONDS = 1.0


@dataclass
class MetricsApiServer:
    cluster: Cluster
    kubeconfig: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = spawn_module(
            "agentpool_operator.metrics_api",
            ["--bind-address", "127.0.0.1", "--secure-port", str(self.port),
             "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
             "--refresh-seconds", str(REFRESH_SECONDS),
             # What the harness's operator publishes (tests/plugins/operator.py).
             "--queue-directory", QUEUE_DIRECTORY],
            module_env(self.kubeconfig), self.log_path)
        eventually(self._healthy, timeout=60, interval=0.2)

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"metrics API server exited:\n{log_tail(self.log_path, 60)}")
        return self.request("/healthz")[0] == 200

    def request(self, path: str, *, cert: tuple[Path, Path] | None = None,
                token: str | None = None, headers: Mapping[str, str] | None = None
                ) -> tuple[int, dict[str, Any]]:
        """GET `path` directly; (status, JSON body or {"text": ...}); 0 when unreachable."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # Our own self-signed serving certificate on loopback: nothing to verify against.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if cert is not None:
            context.load_cert_chain(*cert)
        request = urllib.request.Request(self.url + path, headers=dict(headers or {}))
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                return int(response.status), _body(response.read())
        except urllib.error.HTTPError as error:
            return error.code, _body(error.read())
        except OSError:
            return 0, {}

    def register(self) -> None:
        manifests = [
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": SERVICE_NAME, "namespace": SERVICE_NAMESPACE},
             "spec": {"type": "ExternalName", "externalName": "127.0.0.1"}},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
             "metadata": {"name": APISERVICE_NAME},
             "spec": {"group": "external.metrics.k8s.io", "version": "v1beta1",
                      "groupPriorityMinimum": 100, "versionPriority": 100,
                      # Loopback test cluster: the serving certificate is self-signed and
                      # the aggregator would check it for <svc>.<ns>.svc anyway.
                      "insecureSkipTLSVerify": True,
                      "service": {"name": SERVICE_NAME, "namespace": SERVICE_NAMESPACE,
                                  "port": self.port}}},
        ]
        for manifest in manifests:
            self.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        self.cluster.wait_condition(f"apiservice/{APISERVICE_NAME}", "Available")

    def unregister(self) -> None:
        self.cluster.kubectl("delete", "apiservice", APISERVICE_NAME, "--ignore-not-found",
                             check=False)
        self.cluster.kubectl("-n", SERVICE_NAMESPACE, "delete", "service", SERVICE_NAME,
                             "--ignore-not-found", check=False)

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _body(raw: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {"text": raw.decode(errors="replace")}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def client_cert_of(kubeconfig: Path) -> tuple[Path, Path]:
    """The client certificate and key files a harness kubeconfig points at."""
    config = json.loads(kubeconfig.read_text())
    user = config["users"][0]["user"]
    return Path(user["client-certificate"]), Path(user["client-key"])


@pytest.fixture(scope="module")
def metrics_api(cluster: Cluster, agentpool_crd: dict[str, Any],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsApiServer]:
    # Least-privilege RBAC for the server is the chart's job; here it runs as a cluster admin.
    # Module scope: the cluster-wide APIService exists only while the tests that need it run.
    # It serves the pools the harness's `operator` publishes: tests that query a pool need
    # that fixture too.
    kubeconfig = cluster.kubeconfig_for(METRICS_USER, ("system:masters",))
    server = MetricsApiServer(cluster, kubeconfig,
                              tmp_path_factory.mktemp("metrics-api") / "log")
    server.start()
    try:
        server.register()
        yield server
    finally:
        server.unregister()
        server.stop()
        print(f"--- metrics API server log tail ---\n{log_tail(server.log_path, 40)}")
