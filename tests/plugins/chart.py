"""pytest fixtures for the Helm chart: the pinned helm binary, rendering, the Prometheus Operator
CRDs, and running the product's processes with exactly the identity and flags the chart gives
them.

`helm` (session) wraps the helm binary built from its Go module (`hack/testcluster`), bound to
the test cluster. `monitoring_crds`, `keda_crds` and `cert_manager_crds` (module) install the
real ServiceMonitor, PodMonitor, PrometheusRule, ScaledObject, TriggerAuthentication, Issuer
and Certificate CRDs, taken from the Prometheus Operator's, KEDA's and cert-manager's Go
modules (the same pinned-module route as the control plane), and remove them afterwards, so
the chart's Capabilities gating, the API server's strict validation and the operator's
optional children meet the real schemas. `ChartProcess` runs a
container of a rendered Deployment as a local process (the pods themselves are simulated by
KWOK), authenticated as the chart's ServiceAccount with a token from the TokenRequest API, so
the chart's RBAC is exactly what it runs with.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentpool_dev import cluster as cluster_mod
from agentpool_dev.cluster import Cluster
from agentpool_dev.paths import REPO_ROOT
from agentpool_dev.procs import log_tail, module_env, spawn_module, terminate
from tests.waiting import eventually

CHART = REPO_ROOT / "charts" / "agentpool-operator"
MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
MONITORING_APIS = tuple(f"monitoring.coreos.com/v1/{kind}" for kind in MONITORING_KINDS)
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
KEDA_MODULE = "github.com/kedacore/keda/v2@v2.21.0"
CERT_MANAGER_MODULE = "github.com/cert-manager/cert-manager@v1.19.1"
APISERVICE = "v1beta1.external.metrics.k8s.io"
"""The external metrics APIService: one per cluster."""
_CRD_FILES = ("servicemonitors", "podmonitors", "prometheusrules")


def kube_version() -> str:
    """The pinned Kubernetes release of the test control plane (for offline rendering)."""
    text = (REPO_ROOT / "hack" / "testcluster" / "versions.env").read_text()
    match = re.search(r"^KUBE_VERSION=(\S+)$", text, re.MULTILINE)
    assert match, "KUBE_VERSION missing from hack/testcluster/versions.env"
    return match.group(1)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that rejects duplicate keys (kubectl silently keeps the last one)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    keys = [loader.construct_object(key, deep=deep) for key, _ in node.value]
    duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
    if duplicates:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate keys {duplicates}", node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def documents(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of rendered manifests; duplicate keys are an error."""
    return [doc for doc in yaml.load_all(text, Loader=_UniqueKeyLoader) if doc]


@dataclass
class Helm:
    """The pinned helm binary; `kubeconfig` None renders offline."""

    binary: str
    kubeconfig: Path | None
    home: Path

    def run(self, *args: str, check: bool = True, timeout: float = 180
            ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HELM_CACHE_HOME": str(self.home / "cache"),
               "HELM_CONFIG_HOME": str(self.home / "config"),
               "HELM_DATA_HOME": str(self.home / "data")}
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        result = subprocess.run([self.binary, *args], capture_output=True, text=True,
                                timeout=timeout, env=env)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def values_file(self, values: Mapping[str, Any]) -> str:
        path = self.home / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.json"
        path.write_text(json.dumps(values))
        return str(path)

    def template(self, values: Mapping[str, Any] | None = None, *,
                 release: str = "agentpool-operator", namespace: str = "agentpool-system",
                 api_versions: Sequence[str] = (), check: bool = True,
                 pin_kube_version: bool = True) -> subprocess.CompletedProcess[str]:
        """`helm template`; with `pin_kube_version` False, against Helm's own default
        Kubernetes version, as a GitOps tool or a person without a cluster renders it."""
        args = ["template", release, str(CHART), "--namespace", namespace,
                "-f", self.values_file(values or {})]
        if pin_kube_version:
            args += ["--kube-version", kube_version()]
        for api in api_versions:
            args += ["--api-versions", api]
        return self.run(*args, check=check)

    def render(self, values: Mapping[str, Any] | None = None, **kwargs: Any
               ) -> list[dict[str, Any]]:
        return documents(self.template(values, **kwargs).stdout)


@pytest.fixture(scope="session")
def helm_offline(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm for lint and template: no cluster needed."""
    binary = cluster_mod.find_binaries() / "helm"
    return Helm(str(binary), None, tmp_path_factory.mktemp("helm-offline"))


@pytest.fixture(scope="session")
def helm(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(cluster.binary("helm"), cluster.kubeconfig, tmp_path_factory.mktemp("helm"))


def module_files(module: str, *paths: str) -> list[Path]:
    """Files of a Go module at a pinned version (downloaded once into the Go module cache)."""
    result = subprocess.run(["go", "mod", "download", "-json", module],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "GOFLAGS": "-mod=mod"})
    if result.returncode != 0:
        pytest.fail(f"cannot fetch {module}: {result.stdout}{result.stderr}")
    root = Path(json.loads(result.stdout)["Dir"])
    return [root / path for path in paths]


@contextlib.contextmanager
def served_crds(cluster: Cluster, files: Sequence[Path], names: Sequence[str],
                kinds: Sequence[str]) -> Iterator[list[str]]:
    """CRDs applied from `files` and served (discovery included) while the block runs; the
    ones that were not there before are deleted afterwards."""
    existed = {name for name in names if cluster.kubectl(
        "get", "crd", name, "--ignore-not-found", "-o", "name").stdout.strip()}
    args = ["apply", "--server-side", "--force-conflicts", "--field-manager=agentpool-chart-tests"]
    for path in files:
        args += ["-f", str(path)]
    cluster.kubectl(*args)
    for name in names:
        cluster.wait_condition(f"crd/{name}", "Established")
    # Discovery (which helm reads for .Capabilities) can trail Established by a moment.
    eventually(lambda: all(cluster.kubectl("get", kind.lower(), "-A", check=False).returncode
                           == 0 for kind in kinds), timeout=30)
    try:
        yield list(names)
    finally:
        created = [name for name in names if name not in existed]
        if created:
            cluster.kubectl("delete", "crd", *created, "--wait=true", "--timeout=60s",
                            check=False)


@pytest.fixture(scope="module")
def monitoring_crds(cluster: Cluster) -> Iterator[list[str]]:
    """The Prometheus Operator's monitor and rule CRDs, served while the module runs.

    Removed afterwards: while they exist the operator renders PodMonitors for pools that ask,
    which other tests do not expect."""
    files = module_files(PROMETHEUS_OPERATOR_MODULE, *(
        f"example/prometheus-operator-crd/monitoring.coreos.com_{name}.yaml"
        for name in _CRD_FILES))
    with served_crds(cluster, files, [f"{name}.monitoring.coreos.com" for name in _CRD_FILES],
                     MONITORING_KINDS) as names:
        yield names


@pytest.fixture(scope="module")
def keda_crds(cluster: Cluster) -> Iterator[list[str]]:
    """KEDA's ScaledObject and TriggerAuthentication CRDs (the real schemas, from KEDA's Go
    module; KEDA itself does not run), served while the module runs."""
    plurals = ("scaledobjects", "triggerauthentications")
    files = module_files(KEDA_MODULE, *(f"config/crd/bases/keda.sh_{p}.yaml" for p in plurals))
    with served_crds(cluster, files, [f"{p}.keda.sh" for p in plurals],
                     ("ScaledObject", "TriggerAuthentication")) as names:
        yield names


@pytest.fixture(scope="module")
def cert_manager_crds(cluster: Cluster) -> Iterator[list[str]]:
    """cert-manager's Issuer, ClusterIssuer and Certificate CRDs (the real schemas, from its
    Go module; cert-manager itself does not run: its controllers' modules are not on the
    module proxy), served while the module runs."""
    plurals = ("issuers", "clusterissuers", "certificates")
    files = module_files(CERT_MANAGER_MODULE,
                         *(f"deploy/crds/cert-manager.io_{p}.yaml" for p in plurals))
    with served_crds(cluster, files, [f"{p}.cert-manager.io" for p in plurals],
                     ("Issuer", "ClusterIssuer", "Certificate")) as names:
        yield names


@pytest.fixture(scope="module")
def external_metrics_apiservice(cluster: Cluster) -> Iterator[None]:
    """The cluster's external metrics APIService is the module's to register while it runs:
    one the session registered (the harness's metrics API, `tests/plugins/metrics_api.py`)
    is set aside and put back, Available, afterwards; whatever the module left is deleted
    first (an APIService whose server is gone blocks namespace deletion)."""
    found = cluster.kubectl("get", "apiservice", APISERVICE, "-o", "json", check=False)
    saved = json.loads(found.stdout) if found.returncode == 0 else None
    if saved is not None:
        cluster.kubectl("delete", "apiservice", APISERVICE)
    try:
        yield
    finally:
        cluster.kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found")
        if saved is not None:
            manifest = {"apiVersion": saved["apiVersion"], "kind": "APIService",
                        "metadata": {"name": APISERVICE,
                                     "labels": saved["metadata"].get("labels") or {}},
                        "spec": saved["spec"]}
            cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
            cluster.kubectl("wait", "--for=condition=Available", f"apiservice/{APISERVICE}",
                            "--timeout=60s")


def route_apiservice(cluster: Cluster, namespace: str, service: str, port: int) -> None:
    """Lead the chart's APIService to a metrics API running locally on `port`: its Service
    becomes an ExternalName for 127.0.0.1 (pod IPs are simulated) and the APIService names the
    local port. The caBundle and the Service's name, for which the aggregator verifies the
    served certificate, stay as they are; then wait until the aggregator reports the
    APIService Available."""
    cluster.kubectl("patch", "service", service, "-n", namespace, "--type=merge", "-p",
                    json.dumps({"spec": {"type": "ExternalName", "externalName": "127.0.0.1",
                                         "clusterIP": None, "clusterIPs": None,
                                         "selector": None}}))
    cluster.kubectl("patch", "apiservice", APISERVICE, "--type=merge", "-p",
                    json.dumps({"spec": {"service": {"port": port}}}))
    cluster.kubectl("wait", "--for=condition=Available", f"apiservice/{APISERVICE}",
                    "--timeout=60s")


def service_account_kubeconfig(cluster: Cluster, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig that authenticates as ServiceAccount `namespace/name` with a bound token
    from the TokenRequest API, against the cluster (server and CA) of the harness kubeconfig."""
    token = cluster.kubectl("create", "token", name, "-n", namespace,
                            "--duration=1h").stdout.strip()
    base = yaml.safe_load(cluster.kubeconfig.read_text())
    context_name = base.get("current-context") or base["contexts"][0]["name"]
    context = next(c["context"] for c in base["contexts"] if c["name"] == context_name)
    server = next(c for c in base["clusters"] if c["name"] == context["cluster"])
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [server],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": server["name"], "user": name,
                                                "namespace": namespace}}],
        "current-context": "sa",
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def container_of(deployment: Mapping[str, Any], name: str) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = next(c for c in containers if c["name"] == name)
    return found


@dataclass
class ChartProcess:
    """A container of a rendered Deployment, run as a local process.

    `module` replaces the image's entry point (`python -m <module>`); the container's own
    `args` and literal `env` are kept, then `extra_args` (argparse: the last value wins), so
    the process runs with the flags the chart renders except where a pod's network differs
    from this machine's (ports, bind addresses, file paths).
    """

    module: str
    container: dict[str, Any]
    kubeconfig: Path
    log_path: Path
    extra_args: tuple[str, ...] = ()
    health_url: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout: float = 60) -> None:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("AGENTPOOL_")}
        env.update({item["name"]: item["value"] for item in self.container.get("env") or []
                    if "value" in item})
        self.process = spawn_module(
            self.module, [*self.container.get("args", []), *self.extra_args],
            module_env(self.kubeconfig, env), self.log_path)
        if self.health_url:
            eventually(self._ready, timeout=timeout, interval=0.2)

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"{self.module} exited:\n{log_tail(self.log_path, 60)}")
        try:
            with urllib.request.urlopen(self.health_url, timeout=5) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def forbidden_requests(cluster: Cluster, username: str) -> list[str]:
    """Write requests of `username` the API server refused for lack of permission (403),
    from the audit log. Refusals to write into a terminating namespace are not RBAC's doing
    (other tests' namespaces may be terminating) and are left out."""
    found = []
    for event in cluster.audit_events():
        if event.get("user", {}).get("username") != username:
            continue
        status = event.get("responseStatus") or {}
        if status.get("code") == 403 and "being terminated" not in status.get("message", ""):
            ref = event.get("objectRef") or {}
            found.append(f"{event['verb']} {ref.get('resource')}/{ref.get('subresource', '')} "
                         f"{ref.get('namespace', '')}/{ref.get('name', '')}: "
                         f"{status.get('message', '')}")
    return found


def forbidden_in_log(text: str) -> list[str]:
    """Log lines of a process that report a refused request (reads are not audited)."""
    return [line for line in text.splitlines()
            if re.search(r"\b403\b|forbidden", line, re.IGNORECASE)]
