"""`make up`: the whole product running locally, as a person would try it.

Starts (or reuses) the loopback control plane and the services, installs the CRD, starts the
operator as a background process, applies the minimal example AgentPool and waits until it is
Ready. `make down` stops all of it. Pods are simulated by KWOK: they are Running and Ready but no
container runs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import yaml

from agentpool_dev import cluster as cluster_mod
from agentpool_dev import procs, services
from agentpool_dev.paths import REPO_ROOT, state_root

EXAMPLE = REPO_ROOT / "examples" / "agentpool-minimal.yaml"
OPERATOR_HEALTH_PORT = int(os.environ.get("AGENTPOOL_OPERATOR_HEALTH_PORT", "18080"))


def _operator_state() -> Path:
    return state_root() / "operator.json"


def _running_cluster() -> cluster_mod.Cluster:
    state_dir = cluster_mod.default_state_dir()
    found = cluster_mod.load(state_dir)
    if found is not None and all(p.alive() for p in found.processes):
        return found
    return cluster_mod.up(state_dir)


def _start_operator(cluster: cluster_mod.Cluster) -> procs.Proc:
    procs.stop(procs.load(_operator_state()))
    env = {
        "KUBECONFIG": str(cluster.kubeconfig),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT)]),
    }
    proc = procs.start(
        "agentpool-operator",
        [sys.executable, "-m", "agentpool_operator", "--health-host", "127.0.0.1",
         "--health-port", str(OPERATOR_HEALTH_PORT)],
        state_root() / "logs" / "operator.log", env=env,
    )
    procs.save(_operator_state(), [proc])
    procs.wait_until("the operator's /readyz", lambda: procs.http_ok(
        f"http://127.0.0.1:{OPERATOR_HEALTH_PORT}/readyz"), 60, proc)
    return proc


def _pool_ready(cluster: cluster_mod.Cluster, name: str) -> bool:
    pool = cluster.kubectl_json("get", "agentpool", name)
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pool.get("status") or {}).get("conditions") or [])


def up() -> int:
    started = time.monotonic()
    cluster = _running_cluster()
    print(f"control plane: {cluster.server}", file=sys.stderr)
    settings = services.up(services.ServiceSettings.from_env())
    print(f"services: redis {settings.redis_url}, postgres 127.0.0.1:{settings.pg_port}",
          file=sys.stderr)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                    str(REPO_ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/agentpools.agentpool.dev")
    operator = _start_operator(cluster)
    print(f"operator: pid {operator.pid}, log {operator.log}", file=sys.stderr)
    cluster.kubectl("apply", "-f", str(EXAMPLE))
    name = next(doc["metadata"]["name"] for doc in yaml.safe_load_all(EXAMPLE.read_text())
                if doc and doc.get("kind") == "AgentPool")
    procs.wait_until(f"AgentPool {name} Ready", lambda: _pool_ready(cluster, name), 120,
                     operator)
    print(cluster.kubectl("get", "agentpools", "-o", "wide").stdout)
    print(f"ready in {time.monotonic() - started:.1f}s; pods are simulated by KWOK.",
          file=sys.stderr)
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def down() -> int:
    procs.stop(procs.load(_operator_state()))
    _operator_state().unlink(missing_ok=True)
    cluster_mod.down(cluster_mod.default_state_dir())
    services.down(services.ServiceSettings.from_env())
    return 0
