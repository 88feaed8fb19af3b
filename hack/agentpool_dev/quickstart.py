"""`make up`: the whole product running locally, as a person would try it.

Starts (or reuses) the control plane with a real node, builds the images (once per content
hash) and loads them into the node, starts Redis and PostgreSQL where pods reach them (the
cluster bridge), installs the Helm chart as the README's install section does (`chart.py`:
the CRD, RBAC, the operator's and the metrics API's pods and APIService), applies the minimal
example AgentPool, waits until its pod really runs, then submits a batch of tasks with the
runtime's CLI (progress bar) and prints their results. `make down` stops all of it.

`make up-kwok` (`up(real=False)`) is the API-only mode: KWOK's simulated pods, no images, no
containers, services on loopback, no tasks (nothing would process them). The chart is
installed the same way, and the operator runs as a local process in place of its simulated
pod, with the chart's flags and ServiceAccount.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from agentpool_dev import chart, images, procs, realnode, services
from agentpool_dev import cluster as cluster_mod
from agentpool_dev.paths import REPO_ROOT, state_root

EXAMPLE = REPO_ROOT / "examples" / "agentpool-minimal.yaml"
OPERATOR_HEALTH_PORT = int(os.environ.get("AGENTPOOL_OPERATOR_HEALTH_PORT", "18080"))
DEMO_TASKS = 20
# What the pods run: the sandbox, the example handler image (which contains the runtime base
# image's layers) and the chart's operator image (the operator and the metrics API).
EXAMPLE_IMAGES = ("pause", "echo-agent", "operator")


def _operator_state() -> Path:
    return state_root() / "operator.json"


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _running_cluster(real: bool) -> cluster_mod.Cluster:
    state_dir = cluster_mod.default_state_dir()
    found = cluster_mod.load(state_dir)
    if (found is not None and all(p.alive() for p in found.processes)
            and bool(found.real_nodes) == real):
        return found
    if real:
        return cluster_mod.up(state_dir, real_nodes=1, default_kind="real")
    return cluster_mod.up(state_dir)


def _pod_services(cluster: cluster_mod.Cluster) -> services.ServiceSettings:
    """Redis and PostgreSQL (and PgBouncer, Prometheus) on the cluster bridge, for pods."""
    settings = replace(services.ServiceSettings.from_env(), host=cluster.host,
                       state_dir=state_root() / "pod-services")
    # A cluster started anew may have another bridge address: services still bound to the
    # old one would be out of the pods' reach.
    marker = settings.state_dir / "host"
    if marker.exists() and marker.read_text() != settings.host:
        services.down(settings)
    running = services.up(settings)
    marker.write_text(settings.host)
    return running


def _install_chart(cluster: cluster_mod.Cluster, real: bool) -> str:
    """The chart installed; where the operator's log is. On a real node its pods run; on KWOK
    the operator runs here in place of its simulated pod."""
    procs.stop(procs.load(_operator_state()))
    _operator_state().unlink(missing_ok=True)
    deployment = chart.install(cluster, apiservice=real)
    _log(f"chart: release {chart.RELEASE} in {chart.NAMESPACE}, serving {chart.SERVED}")
    if real:
        return (f"kubectl -n {chart.NAMESPACE} logs -l app.kubernetes.io/component=operator "
                "--prefix")
    proc = chart.start_operator(cluster, deployment, OPERATOR_HEALTH_PORT)
    procs.save(_operator_state(), [proc])
    procs.wait_until("the operator's /readyz", lambda: procs.http_ok(
        f"http://127.0.0.1:{OPERATOR_HEALTH_PORT}/readyz"), 60, proc)
    return f"pid {proc.pid}, {proc.log}"


def _pool_ready(cluster: cluster_mod.Cluster, name: str) -> bool:
    pool = cluster.kubectl_json("get", "agentpool", name)
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pool.get("status") or {}).get("conditions") or [])


def _example(redis_url: str | None) -> tuple[str, list[dict[str, Any]]]:
    """The example's documents, with its Secret pointing at our Redis when one is given."""
    docs = [doc for doc in yaml.safe_load_all(EXAMPLE.read_text()) if doc]
    for doc in docs:
        if doc["kind"] == "Secret" and redis_url is not None:
            doc["stringData"] = {"url": redis_url}
    name = next(doc["metadata"]["name"] for doc in docs if doc["kind"] == "AgentPool")
    return name, docs


def _submit_demo(cluster: cluster_mod.Cluster, name: str, redis_url: str) -> int:
    """The runtime's own CLI, as a user would run it: submit a batch, wait with progress."""
    config_map = cluster.kubectl_json("get", "configmap", f"{name}-config")
    config = state_root() / f"{name}-runtime.yaml"
    config.write_text(config_map["data"]["runtime.yaml"])
    env = procs.module_env(cluster.kubeconfig)
    env["AGENTPOOL_REDIS_URL"] = redis_url
    argv = [sys.executable, "-m", "agent_runtime.cli", "--config", str(config), "submit",
            "--payload", json.dumps({"hello": "from make up"}), "--count", str(DEMO_TASKS),
            "--wait", "--timeout", "120"]
    return subprocess.run(argv, env=env, check=False).returncode


def up(real: bool = True) -> int:
    started = time.monotonic()
    cluster = _running_cluster(real)
    _log(f"control plane: {cluster.server}"
         + (f", real node(s): {', '.join(cluster.real_nodes)}" if real else ", KWOK only"))
    redis_url: str | None = None
    if real:
        built = images.node_archives(EXAMPLE_IMAGES, log=_log)
        for name in cluster.real_nodes:
            realnode.import_images(cluster.real_node(name), built)
        _log(f"images ready after {time.monotonic() - started:.0f}s: {', '.join(built)}")
        settings = _pod_services(cluster)
        redis_url = settings.redis_url
    else:
        settings = services.up(services.ServiceSettings.from_env())
    _log(f"services: redis {settings.redis_url}, postgres {settings.host}:{settings.pg_port}")
    operator_log = _install_chart(cluster, real)
    _log(f"operator log: {operator_log}")
    name, docs = _example(redis_url)
    cluster.kubectl("apply", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    procs.wait_until(f"AgentPool {name} Ready", lambda: _pool_ready(cluster, name), 180)
    print(cluster.kubectl("get", "agentpools", "-o", "wide").stdout)
    print(cluster.kubectl("get", "pods", "-o", "wide").stdout)
    _log(f"pool ready in {time.monotonic() - started:.1f}s"
         + ("" if real else "; pods are simulated by KWOK."))
    status = 0
    if real and redis_url is not None:
        _log(f"submitting {DEMO_TASKS} tasks with agentpool-runtime submit --wait:")
        status = _submit_demo(cluster, name, redis_url)
        _log(f"done in {time.monotonic() - started:.1f}s")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return status


def down() -> int:
    procs.stop(procs.load(_operator_state()))
    _operator_state().unlink(missing_ok=True)
    cluster_mod.down(cluster_mod.default_state_dir())
    services.down(services.ServiceSettings.from_env())
    pod_services = state_root() / "pod-services"
    if pod_services.exists():
        services.down(replace(services.ServiceSettings.from_env(), state_dir=pod_services))
    return 0
