"""The chart the way a GitOps tool installs it: `helm template` offline (no cluster, Helm's own
default Kubernetes version), applied with kubectl, then rendered and applied again, and again
with server-side apply (as Flux does). The operator keeps the metrics API's certificates
(`metricsApi.tls.mode: operator`, the default): nothing random is rendered, so the second
render is the same text, and re-applying it changes no certificate, no CA and no caBundle,
and the operator writes nothing. The APIService's caBundle (set by the operator) verifies
the certificate the metrics API serves for its Service's DNS name, first in a TLS handshake
of our own and then by the real aggregator (the APIService becomes Available once its
Service leads to the local metrics API). Then the serving certificate is rotated: a shorter
validity takes effect at once and, two thirds of it later, the operator renews it under the
same CA; the metrics API serves the new one without a restart.

The pods are KWOK's; the operator and the metrics API run as local processes under the
chart's ServiceAccounts with the rendered containers' flags (`ChartProcess`). The kubelet's
part, updating a pod's mounted Secret, is done by the test (`mount`).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import socket
import ssl
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from agentpool_dev.cluster import Cluster
from agentpool_dev.procs import free_port
from tests.plugins.chart import (
    APISERVICE,
    ChartProcess,
    Helm,
    container_of,
    documents,
    forbidden_requests,
    route_apiservice,
    service_account_kubeconfig,
)
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RELEASE = "gitops"
FULLNAME = f"{RELEASE}-agentpool-operator"
METRICS_API = f"{FULLNAME}-metrics-api"
SERVING, CA = f"{METRICS_API}-serving-cert", f"{METRICS_API}-ca"
VALUES = {"crds": {"enabled": False}, "operator": {"resyncSeconds": 2}}


@dataclass
class GitOps:
    cluster: Cluster
    helm: Helm
    namespace: str
    work: Path
    rendered: str = ""
    processes: dict[str, ChartProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def render(self) -> str:
        # No --kube-version: Helm's default, whatever it is (the chart has no kubeVersion).
        return self.helm.template(VALUES, release=RELEASE, namespace=self.namespace,
                                  pin_kube_version=False).stdout

    def apply(self, *flags: str) -> str:
        return self.cluster.kubectl("apply", *flags, "-f", "-", input=self.rendered).stdout

    def deployment(self, name: str) -> dict[str, Any]:
        return next(d for d in documents(self.rendered)
                    if d["kind"] == "Deployment" and d["metadata"]["name"] == name)

    def start_operator(self, *extra: str) -> ChartProcess:
        self.ports["operator"] = port = free_port()
        process = ChartProcess(
            "agentpool_operator", container_of(self.deployment(FULLNAME), "operator"),
            service_account_kubeconfig(self.cluster, self.namespace, FULLNAME,
                                       self.work / "operator.kubeconfig"),
            self.work / "operator.log",
            extra_args=("--health-host=127.0.0.1", f"--health-port={port}", *extra),
            health_url=f"http://127.0.0.1:{port}/readyz")
        process.start()
        self.processes["operator"] = process
        return process

    def start_metrics_api(self) -> ChartProcess:
        self.ports["secure"], self.ports["metrics"] = free_port(), free_port()
        process = ChartProcess(
            "agentpool_operator.metrics_api",
            container_of(self.deployment(METRICS_API), "metrics-api"),
            service_account_kubeconfig(self.cluster, self.namespace, METRICS_API,
                                       self.work / "metrics-api.kubeconfig"),
            self.work / "metrics-api.log",
            extra_args=("--bind-address=127.0.0.1", f"--secure-port={self.ports['secure']}",
                        "--metrics-address=127.0.0.1",
                        f"--metrics-port={self.ports['metrics']}",
                        f"--tls-cert-file={self.work / 'tls.crt'}",
                        f"--tls-private-key-file={self.work / 'tls.key'}"),
            health_url=f"http://127.0.0.1:{self.ports['metrics']}/readyz")
        process.start()
        self.processes["metrics-api"] = process
        return process

    def secret(self, name: str) -> dict[str, bytes]:
        found = self.cluster.kubectl_json("get", "secret", name, "-n", self.namespace)
        return {k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()}

    def ca_bundle(self) -> bytes:
        found = self.cluster.kubectl_json("get", "apiservice", APISERVICE)
        return base64.b64decode(found["spec"].get("caBundle") or "")

    def mount(self) -> bytes:
        """What the kubelet does for the metrics API's pods: the Secret's files, updated."""
        data = self.secret(SERVING)
        for key in ("tls.crt", "tls.key"):
            path = self.work / key
            path.write_bytes(data[key])
            path.chmod(0o600)
        return data["tls.crt"]

    def checks(self, result: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['operator']}/metrics",
                                    timeout=5) as response:
            text = response.read().decode()
        match = re.search(rf'^agentpool_operator_certificate_checks_total{{result="{result}"}} '
                          r"(\S+)$", text, re.MULTILINE)
        assert match, text[-2000:]
        return float(match.group(1))

    def served_certificate(self, bundle: bytes) -> x509.Certificate:
        """A TLS handshake with the metrics API as the aggregator makes it: trusting the
        APIService's caBundle, expecting the Service's DNS name."""
        context = ssl.create_default_context(cadata=bundle.decode())
        with context.wrap_socket(
                socket.create_connection(("127.0.0.1", self.ports["secure"]), timeout=5),
                server_hostname=f"{METRICS_API}.{self.namespace}.svc") as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)


@pytest.fixture(scope="module")
def gitops(cluster: Cluster, helm: Helm, agentpool_crd: dict[str, Any],
           external_metrics_apiservice: None, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[GitOps]:
    namespace = f"gitops-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    installed = GitOps(cluster, helm, namespace, tmp_path_factory.mktemp("gitops"))
    try:
        installed.rendered = installed.render()
        installed.apply()
        installed.start_operator()
        eventually(lambda: installed.secret(SERVING) and installed.ca_bundle(), timeout=30)
        yield installed
    finally:
        for process in installed.processes.values():
            process.stop()
        # The APIService first: one whose server is gone blocks namespace deletion.
        cluster.kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found")
        if installed.rendered:
            cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-",
                            input=installed.rendered, check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_applying_the_rendered_chart_again_changes_no_certificate(gitops: GitOps) -> None:
    certificate, ca = gitops.secret(SERVING), gitops.secret(CA)
    bundle = gitops.ca_bundle()
    assert bundle == ca["ca.crt"] == certificate["ca.crt"]
    assert "ca.key" not in certificate  # the metrics API's pods never see the CA key
    written = gitops.checks("written")
    applied_at = dt.datetime.now(dt.UTC)

    # The GitOps loop: render, apply; render, apply server-side as Flux does.
    again = gitops.render()
    assert again == gitops.rendered
    output = gitops.apply()
    for kind, name in (("secret", SERVING), ("secret", CA),
                       ("apiservice.apiregistration.k8s.io", APISERVICE)):
        assert f"{kind}/{name} unchanged" in output, output
    gitops.apply("--server-side", "--force-conflicts", "--field-manager=kustomize-controller")
    seen = gitops.checks("ok")
    eventually(lambda: gitops.checks("ok") >= seen + 2, timeout=30)  # two checks since

    assert gitops.secret(SERVING) == certificate
    assert gitops.secret(CA) == ca
    assert gitops.ca_bundle() == bundle
    assert gitops.checks("written") == written
    operator_user = f"system:serviceaccount:{gitops.namespace}:{FULLNAME}"
    rewrites = [e for e in gitops.cluster.audit_events()
                if e["user"]["username"] == operator_user
                and dt.datetime.fromisoformat(e["requestReceivedTimestamp"]) > applied_at
                and (e.get("objectRef") or {}).get("resource") in ("secrets", "apiservices")
                and (e.get("objectRef") or {}).get("name") in (SERVING, CA, APISERVICE)]
    assert not rewrites, rewrites

    # What the pods serve is what the APIService trusts, under the Service's name ...
    serve(gitops)
    served = gitops.served_certificate(bundle)
    assert served == x509.load_pem_x509_certificate(certificate["tls.crt"])
    # ... and the real aggregator agrees: with the Service leading to the local server, the
    # APIService verifies its certificate against the caBundle and becomes Available.
    discovery = json.loads(gitops.cluster.kubectl(
        "get", "--raw", "/apis/external.metrics.k8s.io/v1beta1").stdout)
    assert [r["name"] for r in discovery["resources"]] == ["agentpool_queue_backlog"]
    assert not forbidden_requests(gitops.cluster, operator_user)


def serve(gitops: GitOps) -> None:
    """The metrics API running with the Secret's files, and the APIService led to it (once):
    its Service becomes an ExternalName for 127.0.0.1 (pod IPs are simulated) and the
    APIService names the local port. The caBundle and the Service's name, which the
    aggregator verifies the certificate for, stay the chart's and the operator's."""
    if "metrics-api" in gitops.processes:
        return
    gitops.mount()
    gitops.start_metrics_api()
    route_apiservice(gitops.cluster, gitops.namespace, METRICS_API, gitops.ports["secure"])


def test_the_operator_renews_the_serving_certificate_and_the_metrics_api_serves_it(
        gitops: GitOps) -> None:
    serve(gitops)
    ca, bundle = gitops.secret(CA), gitops.ca_bundle()
    first = gitops.secret(SERVING)["tls.crt"]
    gitops.processes["operator"].stop()
    # 0.0004 days = 34.6 s, renewed after two thirds: a lower validity applies at once.
    gitops.start_operator("--serving-cert-validity-days=0.0004")
    short = eventually(lambda: replaced(gitops, first), timeout=30)
    issued = x509.load_pem_x509_certificate(short)
    assert issued.not_valid_after_utc - issued.not_valid_before_utc < dt.timedelta(minutes=6)
    renewed = eventually(lambda: replaced(gitops, short), timeout=60)
    renewed_at = dt.datetime.now(dt.UTC)
    # Two thirds of its life after it was issued (its validity starts 5 minutes earlier, for
    # clock skew), not before.
    issued_at = issued.not_valid_before_utc + dt.timedelta(minutes=5)
    assert renewed_at >= issued_at + (issued.not_valid_after_utc - issued_at) * 2 / 3
    assert gitops.secret(CA) == ca  # the CA stays, and with it the caBundle
    assert gitops.ca_bundle() == bundle
    gitops.mount()  # the kubelet updates the files; the metrics API reloads them
    wanted = x509.load_pem_x509_certificate(renewed)
    eventually(lambda: gitops.served_certificate(bundle) == wanted, timeout=20)
    assert gitops.processes["metrics-api"].process is not None
    assert gitops.processes["metrics-api"].process.poll() is None  # no restart
    gitops.cluster.kubectl("wait", "--for=condition=Available", f"apiservice/{APISERVICE}",
                           "--timeout=60s")



def replaced(gitops: GitOps, old: bytes) -> bytes | None:
    """The serving certificate in the Secret, once it is no longer `old`."""
    current = gitops.secret(SERVING)["tls.crt"]
    return current if current != old else None
