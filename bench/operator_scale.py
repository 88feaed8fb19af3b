"""Operator scale benchmark: how fast N AgentPools converge to Ready, against the floor.

The floor is the same child objects (what the operator's builders render for each pool)
created directly through the API in one `kubectl apply`, waiting until every Deployment is
Available: the operator cannot beat it, so the ratio says what the operator's own work costs.
Also measured: the operator's peak RSS, its write requests per minute in steady state (from
the API server's audit log, by the operator's own client identity) and the read requests (GET
and LIST) per minute in steady state of the kinds the operator reads, from the API server's
`apiserver_request_total` (the audit log records writes only; after convergence nothing but
the operator reads these kinds with GET or LIST: the controllers use informers).

    python -m bench.operator_scale --pools 100 1000      # full run (see bench/RESULTS.md)
    python -m bench.operator_scale --pools 5 --steady-seconds 5   # smoke mode (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from agentpool_dev import cluster as cluster_mod
from agentpool_dev.paths import REPO_ROOT
from agentpool_dev.procs import (
    StartupError,
    free_port,
    http_ok,
    log_tail,
    module_env,
    spawn_module,
    terminate,
    wait_until,
)
from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.builders import PoolContext, SecretValues, build_children

OPERATOR_USER = "agentpool-operator"
IMAGE = "registry.example/agents:1.0"
REDIS_URL = "redis://127.0.0.1:6379/0"
# What the operator reads: its pools, their children, referenced Secrets, pods, CRDs.
READ_RESOURCES = frozenset({
    "agentpools", "deployments", "configmaps", "secrets", "services", "poddisruptionbudgets",
    "horizontalpodautoscalers", "pods", "customresourcedefinitions"})
_REQUEST_TOTAL = re.compile(r'^apiserver_request_total\{([^}]*)\} (\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Result:
    pools: int
    floor_seconds: float
    operator_seconds: float
    operator_peak_rss_bytes: int
    steady_writes_per_minute: float
    steady_gets_per_minute: float
    steady_lists_per_minute: float

    @property
    def ratio(self) -> float:
        return self.operator_seconds / self.floor_seconds if self.floor_seconds else float("inf")


def _pool_spec() -> dict[str, Any]:
    return {"image": IMAGE, "handler": "agents.tasks:handle",
            "queue": {"redis": {"urlSecretRef": {"name": "bench-redis", "key": "url"}}}}


def _secret(namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "bench-redis", "namespace": namespace},
            "stringData": {"url": REDIS_URL}}


def _apply(cluster: cluster_mod.Cluster, items: list[dict[str, Any]]) -> None:
    # Chunks keep each kubectl call's memory and request body modest.
    for start in range(0, len(items), 500):
        chunk = {"apiVersion": "v1", "kind": "List", "items": items[start:start + 500]}
        cluster.kubectl("apply", "--server-side", "--force-conflicts",
                        "--field-manager=bench", "-f", "-", input=json.dumps(chunk), timeout=600)


def _count_ready(cluster: cluster_mod.Cluster, namespace: str, kind: str) -> int:
    items = cluster.kubectl_json("-n", namespace, "get", kind)["items"]
    wanted = "Ready" if kind == "agentpools" else "Available"
    return sum(1 for item in items if any(
        c.get("type") == wanted and c.get("status") == "True"
        for c in (item.get("status") or {}).get("conditions") or []))


def _wait_all(cluster: cluster_mod.Cluster, namespace: str, kind: str, count: int,
              started: float, timeout: float) -> float:
    while _count_ready(cluster, namespace, kind) < count:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{kind} in {namespace} not all ready after {timeout:.0f}s")
        time.sleep(0.5)
    return time.monotonic() - started


CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok")


def control_plane_cpu() -> dict[str, float]:
    """CPU seconds used so far by this machine's control-plane processes, by name."""
    used: dict[str, float] = {}
    for process in psutil.process_iter(["name", "cpu_times"]):
        name = next((n for n in CONTROL_PLANE if (process.info["name"] or "").startswith(n)),
                    None)
        if name is not None and process.info["cpu_times"] is not None:
            times = process.info["cpu_times"]
            used[name] = used.get(name, 0.0) + times.user + times.system
    return used


def _print_cpu(what: str, before: dict[str, float], seconds: float) -> None:
    after = control_plane_cpu()
    shown = ", ".join(f"{name} {after.get(name, 0.0) - before.get(name, 0.0):.1f}"
                      for name in CONTROL_PLANE)
    print(f"{what}: control-plane CPU s in {seconds:.1f} s: {shown}", file=sys.stderr)


def measure_floor(cluster: cluster_mod.Cluster, pools: int, timeout: float) -> float:
    namespace = f"floor-{pools}"
    cluster.kubectl("create", "namespace", namespace)
    spec = AgentPoolSpec.model_validate(_pool_spec())
    items: list[dict[str, Any]] = []
    for i in range(pools):
        ctx = PoolContext(name=f"p{i:04d}", namespace=namespace, uid=f"00000000-{i:04d}",
                          spec=spec, secrets=SecretValues(redis_url=REDIS_URL))
        for manifest in build_children(ctx).manifests:
            manifest = json.loads(json.dumps(manifest))
            manifest["metadata"].pop("ownerReferences", None)  # no owner exists here
            items.append(manifest)
    cpu = control_plane_cpu()
    started = time.monotonic()
    _apply(cluster, items)
    seconds = _wait_all(cluster, namespace, "deployments", pools, started, timeout)
    _print_cpu(f"{pools} pools, floor", cpu, seconds)
    return seconds


class OperatorRun:
    """The operator as its own process, with its own identity, for the duration of a run."""

    def __init__(self, cluster: cluster_mod.Cluster, log: Path) -> None:
        self.cluster = cluster
        self.port = free_port()
        kubeconfig = cluster.kubeconfig_for(OPERATOR_USER, ("system:masters",))
        self.process = spawn_module(
            "agentpool_operator", ["--health-host", "127.0.0.1", "--health-port",
                                   str(self.port), "--log-level", "WARNING"],
            module_env(kubeconfig), log)
        try:
            wait_until("operator /readyz",
                       lambda: http_ok(f"http://127.0.0.1:{self.port}/readyz"), 60)
        except StartupError as error:
            self.stop()
            raise StartupError(f"{error}\n{log_tail(log)}") from None

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        """User plus system CPU the operator process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def writes(self) -> int:
        return sum(self.writes_by_kind().values())

    def writes_by_kind(self) -> dict[str, int]:
        """The operator's write requests so far by verb and resource[/subresource]."""
        counts: dict[str, int] = {}
        for event in self.cluster.audit_events():
            if event.get("user", {}).get("username") != OPERATOR_USER:
                continue
            ref = event.get("objectRef") or {}
            what = ref.get("resource", "") + (f"/{ref['subresource']}"
                                              if ref.get("subresource") else "")
            name = f"{event.get('verb', '')} {what}"
            counts[name] = counts.get(name, 0) + 1
        return counts

    def stop(self) -> None:
        terminate(self.process, timeout=30)


def read_requests(cluster: cluster_mod.Cluster) -> dict[tuple[str, str], float]:
    """(verb, resource) -> GET and LIST requests served so far, of the kinds the operator
    reads (the API server's own counter; it does not tell clients apart)."""
    counts: dict[tuple[str, str], float] = {}
    for line in cluster.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        found = _REQUEST_TOTAL.match(line)
        if found is None:
            continue
        labels = dict(_LABEL.findall(found.group(1)))
        verb, resource = labels.get("verb", ""), labels.get("resource", "")
        if verb in ("GET", "LIST") and resource in READ_RESOURCES and not labels.get(
                "subresource"):
            counts[verb, resource] = counts.get((verb, resource), 0.0) + float(found.group(2))
    return counts


@dataclass(frozen=True)
class Steady:
    writes_per_minute: float
    gets_per_minute: float
    lists_per_minute: float
    reads_by_resource: dict[tuple[str, str], float]


def measure_operator(cluster: cluster_mod.Cluster, run: OperatorRun, pools: int,
                     steady_seconds: float, timeout: float) -> tuple[float, Steady]:
    namespace = f"operator-{pools}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(_secret(namespace)))
    items = [{"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
              "metadata": {"name": f"p{i:04d}", "namespace": namespace}, "spec": _pool_spec()}
             for i in range(pools)]
    writes_before, reads_before = run.writes_by_kind(), read_requests(cluster)
    cpu_before, cluster_cpu = run.cpu_seconds(), control_plane_cpu()
    started = time.monotonic()
    _apply(cluster, items)
    converged = _wait_all(cluster, namespace, "agentpools", pools, started, timeout)
    print(f"{pools} pools, operator CPU while converging: {run.cpu_seconds() - cpu_before:.1f} s "
          f"in {converged:.1f} s", file=sys.stderr)
    _print_cpu(f"{pools} pools, operator", cluster_cpu, converged)
    _print_convergence_requests(pools, writes_before, run.writes_by_kind(), reads_before,
                                read_requests(cluster))
    time.sleep(5)  # let the last rollout status updates land before counting
    before, reads_before = run.writes(), read_requests(cluster)
    time.sleep(steady_seconds)
    writes, reads_after = run.writes(), read_requests(cluster)
    per_minute = 60 / steady_seconds
    reads = {key: (value - reads_before.get(key, 0.0)) * per_minute
             for key, value in reads_after.items() if value > reads_before.get(key, 0.0)}
    return converged, Steady(
        writes_per_minute=(writes - before) * per_minute,
        gets_per_minute=sum(v for (verb, _), v in reads.items() if verb == "GET"),
        lists_per_minute=sum(v for (verb, _), v in reads.items() if verb == "LIST"),
        reads_by_resource=reads)


def _print_convergence_requests(pools: int, writes_before: dict[str, int],
                                writes_after: dict[str, int],
                                reads_before: dict[tuple[str, str], float],
                                reads_after: dict[tuple[str, str], float]) -> None:
    """Requests per pool until every pool was Ready: the operator's writes (its identity, from
    the audit log) and the reads of the kinds it reads (every client's: while pools converge,
    only the operator lists pods or reads Secrets; the benchmark's own polling lists
    AgentPools)."""
    writes = {k: (v - writes_before.get(k, 0)) / pools for k, v in writes_after.items()
              if v > writes_before.get(k, 0)}
    reads = {f"{verb} {resource}": (v - reads_before.get((verb, resource), 0.0)) / pools
             for (verb, resource), v in reads_after.items()
             if v > reads_before.get((verb, resource), 0.0)}
    shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted({**writes, **reads}.items()))
    print(f"{pools} pools, requests per pool while converging: writes "
          f"{sum(writes.values()):.2f} ({shown})", file=sys.stderr)


def run(pool_counts: list[int], steady_seconds: float, timeout: float) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="agentpool-bench-") as tmp:
        cluster = cluster_mod.up(Path(tmp) / "cluster")
        try:
            cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
            # A loaded machine can take longer than kubectl's 30 s default.
            cluster.kubectl("wait", "--for=condition=Established", "--timeout=120s",
                            "crd/agentpools.agentpool.dev", timeout=150)
            for pools in pool_counts:
                load_before = os.getloadavg()[0]
                floor = measure_floor(cluster, pools, timeout)
                operator = OperatorRun(cluster, Path(tmp) / f"operator-{pools}.log")
                try:
                    converged, steady = measure_operator(cluster, operator, pools,
                                                         steady_seconds, timeout)
                    rss = operator.peak_rss()
                finally:
                    operator.stop()
                print(f"{pools} pools, 1-minute load average: {load_before:.2f} before the "
                      f"floor, {os.getloadavg()[0]:.2f} after the operator", file=sys.stderr)
                print(f"{pools} pools, steady-state reads/min by (verb, resource): "
                      f"{sorted(steady.reads_by_resource.items())}", file=sys.stderr)
                results.append(Result(pools, floor, converged, rss, steady.writes_per_minute,
                                      steady.gets_per_minute, steady.lists_per_minute))
        finally:
            cluster.stop()
    return results


def table(results: list[Result]) -> str:
    lines = ["| pools | direct-create floor (s) | operator to Ready (s) | ratio vs floor "
             "| operator peak RSS (MiB) | steady-state writes/min | steady-state GETs/min "
             "| steady-state LISTs/min |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r.pools} | {r.floor_seconds:.1f} | {r.operator_seconds:.1f} | {r.ratio:.2f}x "
              f"| {r.operator_peak_rss_bytes / 2**20:.0f} | {r.steady_writes_per_minute:.1f} "
              f"| {r.steady_gets_per_minute:.1f} | {r.steady_lists_per_minute:.1f} |"
              for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.operator_scale")
    parser.add_argument("--pools", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--steady-seconds", type=float, default=60)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    print(table(run(args.pools, args.steady_seconds, args.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
