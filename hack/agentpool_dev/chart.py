"""The chart installed as the README's install section installs it (`make up`).

`install` runs `helm upgrade --install` of `charts/agentpool-operator` (the CRD, RBAC, the
operator's and the metrics API's Deployments, their certificates' Secrets) serving the
`default` namespace. On a real node its pods run the chart's image. Where they are simulated
by KWOK (`make up-kwok`, `tests/e2e/test_readme_install.py`), `start_operator` runs the
operator as a local process standing in for its pod: the installed Deployment's container
arguments, under the chart's ServiceAccount's identity (a client certificate from the
harness's CA for `system:serviceaccount:<namespace>:<name>`, which RBAC treats as the
ServiceAccount and which, unlike a token, does not expire), so it has exactly the chart's
rights; the metrics API's APIService is then left out: the aggregator cannot reach simulated
pods.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Any

from agentpool_dev import cluster as cluster_mod
from agentpool_dev import procs
from agentpool_dev.paths import REPO_ROOT, state_root

CHART = REPO_ROOT / "charts" / "agentpool-operator"
RELEASE = "agentpool-operator"
NAMESPACE = "agentpool-system"
SERVED = "default"
CRD = "agentpools.agentpool.dev"


def _crd_needs_adoption(cluster: cluster_mod.Cluster) -> bool:
    """Whether the CRD exists without a Helm release (applied with kubectl, e.g. by an
    earlier `make up`): then the release adopts it (`--take-ownership`, Helm >= 3.17)."""
    found = cluster.kubectl("get", "crd", CRD, "-o", "json", check=False)
    if found.returncode != 0:
        return False
    annotations = json.loads(found.stdout)["metadata"].get("annotations") or {}
    return "meta.helm.sh/release-name" not in annotations


def install(cluster: cluster_mod.Cluster, apiservice: bool = False) -> dict[str, Any]:
    """Install (or upgrade) the release and wait for its pods; the operator's Deployment as
    installed. `apiservice`: register the metrics API (its pods must be real)."""
    args = ["upgrade", "--install", RELEASE, str(CHART), "--namespace", NAMESPACE,
            "--create-namespace", "--set", f"operator.watchNamespaces={{{SERVED}}}",
            "--set", f"metricsApi.apiService.create={str(apiservice).lower()}",
            "--wait", "--timeout", "180s"]
    if _crd_needs_adoption(cluster):
        args.append("--take-ownership")
    subprocess.run([cluster.binary("helm"), *args], check=True, env=cluster.env(),
                   stdout=subprocess.DEVNULL)
    deployment: dict[str, Any] = cluster.kubectl_json("get", "deployment", RELEASE,
                                                      "-n", NAMESPACE)
    return deployment


def start_operator(cluster: cluster_mod.Cluster, deployment: dict[str, Any],
                   health_port: int) -> procs.Proc:
    """The operator's container as a local process, with the chart's flags and identity."""
    pod = deployment["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "operator")
    account = pod["serviceAccountName"]
    kubeconfig = cluster.kubeconfig_for(
        f"system:serviceaccount:{NAMESPACE}:{account}",
        ("system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}",
         "system:authenticated"))
    env = {item["name"]: item["value"] for item in container.get("env") or []
           if "value" in item}
    # The downward API's part: the pod's name (the leader election identity) and namespace.
    env.update({"POD_NAME": f"{socket.gethostname()}-local", "POD_NAMESPACE": NAMESPACE})
    env = procs.module_env(kubeconfig, {**os.environ, **env})
    argv = [sys.executable, "-m", "agentpool_operator", *container.get("args", []),
            "--health-host=127.0.0.1", f"--health-port={health_port}"]
    return procs.start("agentpool-operator", argv, state_root() / "logs" / "operator.log",
                       env=env)
