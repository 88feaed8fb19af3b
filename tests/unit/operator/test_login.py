"""The operator's kopf login in a pod dials the `kubernetes` Service at the address the
kubelet puts in the environment, not the DNS name kopf assumes (which a cluster without DNS
cannot resolve); outside a pod it uses the kubeconfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf
import pytest

from agentpool_operator import login


def test_the_service_address_comes_from_the_environment() -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.3.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert login.in_cluster_server(env) == "https://10.96.3.1:443"
    assert login.in_cluster_server({**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}) == \
        "https://[fd00::1]:443"
    assert login.in_cluster_server({"KUBERNETES_SERVICE_HOST": "10.96.3.1"}) is None


def _pod_account(monkeypatch: pytest.MonkeyPatch, info: kopf.ConnectionInfo | None) -> None:
    def service_account(**_: Any) -> kopf.ConnectionInfo | None:
        return info
    monkeypatch.setattr(kopf, "login_with_service_account", service_account)


def test_in_a_pod_kopf_uses_the_service_address_with_the_pods_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pod = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="t",
                              ca_path="/ca.crt", default_namespace="ns")
    _pod_account(monkeypatch, pod)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.3.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    found = login.login(settings=kopf.OperatorSettings())
    assert found is not None
    assert found.server == "https://10.96.3.1:443"
    assert (found.token, found.ca_path, found.default_namespace) == ("t", "/ca.crt", "ns")
    # Without the variables (not a pod the kubelet started), kopf's default stays.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert login.login(settings=kopf.OperatorSettings()) == pod


def test_outside_a_pod_the_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _pod_account(monkeypatch, None)
    config = tmp_path / "kubeconfig"
    config.write_text("""
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: abc}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
    monkeypatch.setenv("KUBECONFIG", str(config))
    found = login.login(settings=kopf.OperatorSettings())
    assert found is not None
    assert (found.server, found.token) == ("https://127.0.0.1:6443", "abc")
