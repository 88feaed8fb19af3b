"""pytest fixtures for running the real operator process against the test cluster.

`operator` (per test module) starts `python -m agentpool_operator` as its own process with its own
client identity (`agentpool-operator`), so every write it makes can be counted in the API
server's audit log, and it can be restarted like a real pod. `pools` creates AgentPools and the
Secrets they reference.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentpool_dev.cluster import Cluster
from agentpool_dev.procs import free_port, log_tail, module_env, spawn_module, terminate
from tests.waiting import eventually

OPERATOR_USER = "agentpool-operator"
RESYNC_SECONDS = 2
QUEUE_DIRECTORY = "kube-system/agentpool-queues"
"""Where the harness's operator publishes the served pools' queues for the metrics API
(`tests/plugins/metrics_api.py` reads it); the chart's processes use the chart's Secret."""
DELETION_COST_SECONDS = 1.0


@dataclass
class OperatorProcess:
    cluster: Cluster
    kubeconfig: Path
    log_path: Path
    health_port: int = field(default_factory=free_port)
    resync_seconds: float = RESYNC_SECONDS
    extra_args: tuple[str, ...] = ()
    """Appended to the harness's flags (argparse: the last value of a flag wins)."""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}"

    def start(self) -> None:
        self.process = spawn_module(
            "agentpool_operator",
            ["--health-host", "127.0.0.1", "--health-port", str(self.health_port),
             "--resync-seconds", str(self.resync_seconds), "--stall-seconds", "60",
             "--queue-directory", QUEUE_DIRECTORY,
             "--deletion-cost-seconds", str(DELETION_COST_SECONDS), *self.extra_args],
            module_env(self.kubeconfig), self.log_path)
        eventually(self._ready, timeout=60)

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"operator exited:\n{log_tail(self.log_path, 60)}")
        return self.get("/readyz")[0] == 200

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            return 0, ""

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
        self.process = None

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on the operator's /metrics (0 when absent)."""
        status, body = self.get("/metrics")
        assert status == 200, body
        return sum(sample.value for family in text_string_to_metric_families(body)
                   for sample in family.samples if sample.name == name)

    def wait_resyncs(self, count: int, timeout: float = 120) -> None:
        """Until `count` more periodic resyncs have completed and the work queue is empty
        again (every pool they queued reconciled): what a steady-state check waits for."""
        target = self.metric("agentpool_operator_resyncs_total") + count
        eventually(lambda: self.metric("agentpool_operator_resyncs_total") >= target
                   and self.metric("agentpool_operator_workqueue_depth") == 0,
                   timeout=timeout, interval=0.2)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The operator process stopped (SIGSTOP) for the block: it sees what happened
        meanwhile only when it resumes, as after a long pause or a slow start."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def writes(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Write requests this operator made, from the API server's audit log."""
        found = []
        for event in self.cluster.audit_events():
            if event.get("user", {}).get("username") != OPERATOR_USER:
                continue
            ref = event.get("objectRef") or {}
            if namespace is None or ref.get("namespace") == namespace:
                found.append(event)
        return found


# Module scope: the operator acts on every AgentPool in the cluster, so it runs only while the
# tests that want it run (the CRD tests, for one, write pool status themselves).
@pytest.fixture(scope="module")
def operator(cluster: Cluster, agentpool_crd: dict[str, Any],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    # On the harness's own cluster the operator gets its own identity, so its writes can be
    # counted in the audit log; an existing cluster (AGENTPOOL_TEST_KUBECONFIG) has no CA key
    # here, so the operator shares the given kubeconfig.
    owns_ca = (cluster.state_dir / "pki" / "ca.key").exists()
    kubeconfig = (cluster.kubeconfig_for(OPERATOR_USER, ("system:masters",)) if owns_ca
                  else cluster.kubeconfig)
    with running_operator(OperatorProcess(cluster, kubeconfig,
                                          tmp_path_factory.mktemp("operator") / "log")) as process:
        yield process


@contextlib.contextmanager
def running_operator(process: OperatorProcess) -> Iterator[OperatorProcess]:
    """Start `process`; stop it at the end and print its log tail (for failing tests)."""
    process.start()
    try:
        yield process
    finally:
        process.stop()
        print(f"--- operator log tail ---\n{log_tail(process.log_path, 40)}")


@dataclass
class Pools:
    """Creates AgentPools (and their Secrets) in one namespace."""

    cluster: Cluster
    namespace: str

    def secret(self, name: str, data: dict[str, str]) -> None:
        manifest = {"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name, "namespace": self.namespace},
                    "type": "Opaque", "stringData": data}
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def create(self, name: str, *, with_secret: bool = True, **spec: Any) -> dict[str, Any]:
        if with_secret:
            self.secret(f"{name}-redis", {"url": "redis://127.0.0.1:6379/0"})
        body = {
            "image": "registry.example/agents:1.0",
            "handler": "agents.tasks:handle",
            "queue": {"redis": {"urlSecretRef": {"name": f"{name}-redis", "key": "url"}}},
            **spec,
        }
        manifest = {"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
                    "metadata": {"name": name, "namespace": self.namespace}, "spec": body}
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        return manifest

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        found = self.cluster.kubectl("-n", self.namespace, "get", kind, name, "-o", "json",
                                     check=False)
        if found.returncode != 0:
            return None
        result: dict[str, Any] = json.loads(found.stdout)
        return result

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        pool = self.get("agentpool", name) or {}
        conditions = (pool.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == type_), None)

    def wait_ready(self, name: str, timeout: float = 60) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            condition = self.condition(name, "Ready")
            return condition if condition and condition["status"] == "True" else None
        return eventually(ready, timeout=timeout)


@pytest.fixture
def pools(cluster: Cluster, namespace: str) -> Pools:
    return Pools(cluster, namespace)
