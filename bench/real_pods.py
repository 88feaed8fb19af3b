"""Real pods on the test cluster (issue 14), measured, not asserted:

* **cold start of a pool pod**: AgentPool created -> its pod scheduled -> Ready (the runtime's
  startup probe passes: workers warm) -> the first task, queued as soon as the operator wrote
  the pool's config, done;
* **burst -> first task done on a new pod**: a backlog lands on a one-pod autoscaled pool; the
  HPA (reading the queue through the metrics API), the scheduler and the kubelet add pods, and
  the clock stops when a task finishes on one of them;
* **pod memory at rest**: working set (usage minus inactive file cache, as the kubelet counts
  it) of the runtime container and of the PgBouncer sidecar of an idle pod, from their cgroups.

Starts its own cluster with one real node (root), services on its bridge, the operator and the
metrics API as host processes; the example handler image and PgBouncer run in the pods.

    python -m bench real-pods [--reps N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent_runtime.config import RuntimeConfig, parse_config
from agent_runtime.sdk.client import TaskClient
from agentpool_dev import cluster as cluster_mod
from agentpool_dev import images, procs, realnode, services
from agentpool_dev.paths import REPO_ROOT

IMAGES = ("pause", "echo-agent", "pgbouncer")
MIB = 1 << 20
# Context, not comparable measurements: the documented defaults that bound the reaction of the
# autoscalers users compare us with.
CONTEXT = [
    ("KEDA", "pollingInterval default 30 s, cooldownPeriod 300 s",
     "keda.sh/docs/latest/reference/scaledobject-spec"),
    ("KubeRay (Ray autoscaler)", "idleTimeoutSeconds default 60 s before a worker pod goes",
     "ray-project/kuberay ray-operator/config/samples/ray-cluster.autoscaler.yaml"),
    ("Knative Serving", "about 15 s to start a function scaled to zero (a user's report)",
     "gitlab.com/gitlab-org/gitlab/-/issues/29097 (2019)"),
]


def _pool(name: str, redis_secret: str, db_secret: str | None = None,
          **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "image": images.catalog()["echo-agent"].name,
        "handler": "examples.handlers.echo:handle",
        "queue": {"redis": {"urlSecretRef": {"name": redis_secret, "key": "url"}}},
        "resources": {"requests": {"cpu": "50m", "memory": "96Mi"},
                      "limits": {"memory": "512Mi"}},
        **extra,
    }
    if db_secret is not None:
        spec["database"] = {"dsnSecretRef": {"name": db_secret, "key": "dsn"},
                            "connectionBudget": 40, "pgbouncer": {"defaultPoolSize": 4}}
    return {"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def _config(cluster: cluster_mod.Cluster, name: str) -> RuntimeConfig:
    config_map = cluster.kubectl_json("get", "configmap", f"{name}-config")
    return parse_config(config_map["data"]["runtime.yaml"])


def _pods(cluster: cluster_mod.Cluster, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "pods", "-l", f"app.kubernetes.io/instance={name}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod["status"].get("conditions") or [])


def _wait(check: Any, timeout: float = 180, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"not within {timeout}s")


def _secret(cluster: cluster_mod.Cluster, name: str, key: str, value: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "stringData": {key: value}}))


def cold_start(cluster: cluster_mod.Cluster, redis_url: str, rep: int) -> dict[str, float]:
    """Seconds from creating the pool to: scheduled, Ready, first task done."""
    name = f"cold-{rep}"
    started = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=json.dumps(_pool(name, "bench-redis")))
    config = _wait(lambda: _try_config(cluster, name))

    async def first_task() -> float:
        async with await TaskClient.connect(redis_url, config) as client:
            task = await client.submit({"n": 1})
            await client.wait(task, max_wait=180)
        return time.monotonic() - started

    marks: dict[str, float] = {}

    def watch() -> bool:
        for pod in _pods(cluster, name):
            if pod["spec"].get("nodeName") and "scheduled" not in marks:
                marks["scheduled"] = time.monotonic() - started
            if _ready(pod) and "ready" not in marks:
                marks["ready"] = time.monotonic() - started
        return "ready" in marks

    loop = asyncio.new_event_loop()
    try:
        done = loop.create_task(first_task())
        while not watch():
            loop.run_until_complete(asyncio.sleep(0.05))
        marks["first task done"] = loop.run_until_complete(done)
    finally:
        loop.close()
    cluster.kubectl("delete", "agentpool", name, "--wait=false")
    return marks


def _try_config(cluster: cluster_mod.Cluster, name: str) -> RuntimeConfig | None:
    found = cluster.kubectl("get", "configmap", f"{name}-config", "-o", "json", check=False)
    if found.returncode != 0:
        return None
    return parse_config(json.loads(found.stdout)["data"]["runtime.yaml"])


def burst(cluster: cluster_mod.Cluster, redis_url: str) -> float:
    """Seconds from a backlog burst to the first task done on a pod the HPA added."""
    name = "burst"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(_pool(
        name, "bench-redis", minReplicas=1, maxReplicas=3, workers={"perPod": 1,
                                                                     "concurrency": 2},
        autoscaling={"enabled": True, "targetBacklogPerWorker": 1})))
    _wait(lambda: [p for p in _pods(cluster, name) if _ready(p)])
    first = {p["metadata"]["name"] for p in _pods(cluster, name)}
    config = _config(cluster, name)

    async def run() -> float:
        async with await TaskClient.connect(redis_url, config) as client:
            started = time.monotonic()
            ids = await client.submit_many({"sleep": 2} for _ in range(30))
            pending = set(ids)
            while pending:
                for task in list(pending):
                    result = await client.get(task)
                    if result is None:
                        continue
                    pending.discard(task)
                    if result.worker.rsplit("-", 2)[0] not in first:
                        return time.monotonic() - started
                await asyncio.sleep(0.1)
        raise RuntimeError("every task ran on the first pod")

    try:
        return asyncio.run(run())
    finally:
        cluster.kubectl("delete", "agentpool", name, "--wait=false")


def memory_at_rest(cluster: cluster_mod.Cluster, settle: float) -> dict[str, float]:
    """MiB of working set per container of an idle pool pod with a database."""
    name = "rest"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(_pool(name, "bench-redis", "bench-db")))
    [pod] = _wait(lambda: [p for p in _pods(cluster, name) if _ready(p)] or None)
    time.sleep(settle)
    node = cluster.real_node(pod["spec"]["nodeName"])
    statuses = pod["status"]["containerStatuses"] + pod["status"]["initContainerStatuses"]
    found = {}
    for status in statuses:
        container = status["containerID"].split("//")[1]
        [folder] = Path("/sys/fs/cgroup/memory", node.cgroup).rglob(container)
        usage = int((folder / "memory.usage_in_bytes").read_text())
        stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
        found[status["name"]] = (usage - int(stat["total_inactive_file"])) / MIB
    cluster.kubectl("delete", "agentpool", name, "--wait=false")
    return found


@contextmanager
def _environment(work: Path) -> Iterator[tuple[cluster_mod.Cluster, services.ServiceSettings]]:
    cluster = cluster_mod.up(work / "cluster", real_nodes=1, default_kind="real")
    operator: procs.Proc | None = None
    metrics: procs.Proc | None = None
    settings: services.ServiceSettings | None = None
    try:
        node = cluster.real_node(cluster.real_nodes[0])
        realnode.import_images(node, images.node_archives(IMAGES))
        pg, pgb, rd, prom = procs.free_ports(4)
        settings = services.up(services.ServiceSettings(
            host=cluster.host, pg_port=pg, pgbouncer_port=pgb, redis_port=rd,
            prometheus_port=prom, state_dir=work / "services"))
        cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
        cluster.wait_condition("crd/agentpools.agentpool.dev", "Established")
        env = procs.module_env(cluster.kubeconfig)
        health = procs.free_port()
        operator = procs.start("operator", [sys.executable, "-m", "agentpool_operator",
                                            "--health-host", "127.0.0.1",
                                            "--health-port", str(health)],
                               work / "operator.log", env=env)
        metrics = _start_metrics_api(cluster, work, env)
        _secret(cluster, "bench-redis", "url", settings.redis_url)
        _secret(cluster, "bench-db", "dsn", settings.postgres_dsn)
        procs.wait_until("operator ready", lambda: procs.http_ok(
            f"http://127.0.0.1:{health}/readyz"), 60, operator)
        yield cluster, settings
    finally:
        procs.stop([p for p in (operator, metrics) if p is not None])
        cluster.kubectl("delete", "apiservice", "v1beta1.external.metrics.k8s.io",
                        "--ignore-not-found", check=False)
        cluster.stop()
        if settings is not None:
            services.down(settings)


def _start_metrics_api(cluster: cluster_mod.Cluster, work: Path, env: dict[str, str]
                       ) -> procs.Proc:
    """The metrics API on the host, registered with the aggregator (ExternalName to loopback,
    as the tests do), so the HPA reads the queue."""
    port, metrics_port = procs.free_ports(2)
    proc = procs.start("metrics-api", [
        sys.executable, "-m", "agentpool_operator.metrics_api", "--bind-address", "127.0.0.1",
        "--secure-port", str(port), "--metrics-address", "127.0.0.1",
        "--metrics-port", str(metrics_port), "--deletion-cost-interval", "1"],
        work / "metrics-api.log", env=env)
    procs.wait_until("metrics API ready", lambda: procs.http_ok(
        f"http://127.0.0.1:{metrics_port}/readyz"), 60, proc)
    items = [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "agentpool-metrics-apiserver", "namespace": "kube-system"},
         "spec": {"type": "ExternalName", "externalName": "127.0.0.1"}},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": {"name": "v1beta1.external.metrics.k8s.io"},
         "spec": {"group": "external.metrics.k8s.io", "version": "v1beta1",
                  "groupPriorityMinimum": 100, "versionPriority": 100,
                  "insecureSkipTLSVerify": True,
                  "service": {"name": "agentpool-metrics-apiserver",
                              "namespace": "kube-system", "port": port}}},
    ]
    cluster.kubectl("apply", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    cluster.wait_condition("apiservice/v1beta1.external.metrics.k8s.io", "Available")
    return proc


def _row(label: str, values: list[float]) -> str:
    med = statistics.median(values)
    return f"| {label} | {med:.1f} | {min(values):.1f} | {max(values):.1f} | {len(values)} |"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench real-pods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="cold starts to measure")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds an idle pod rests before its memory is read")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-real-pods-") as tmp, \
            _environment(Path(tmp)) as (cluster, settings):
        colds = [cold_start(cluster, settings.redis_url, rep) for rep in range(args.reps)]
        to_new_pod = burst(cluster, settings.redis_url)
        memory = memory_at_rest(cluster, args.settle)
    print("Cold start of a pool pod on a real node (seconds from `kubectl apply`):\n")
    print("| step | median | min | max | runs |\n| --- | --- | --- | --- | --- |")
    for step in ("scheduled", "ready", "first task done"):
        print(_row(step, [c[step] for c in colds]))
    print(f"\nBacklog burst (30 tasks of 2 s, one pod, HPA max 3) -> first task done on a new "
          f"pod: {to_new_pod:.1f} s\n")
    print("Pod memory at rest (working set, MiB): " + ", ".join(
        f"{name} {value:.1f}" for name, value in memory.items())
          + f"; pod total {sum(memory.values()):.1f}\n")
    print("Context (documented defaults, not measurements of ours):\n")
    print("| system | figure | source |\n| --- | --- | --- |")
    for system, figure, source in CONTEXT:
        print(f"| {system} | {figure} | {source} |")
    return 0
