"""Real nodes in the test cluster: containers really run, limits reach the kernel, pods reach
the API server through the `kubernetes` Service and nothing else off the machine, pods land on
the intended kind of node, and `down` leaves no trace on the host.

These tests start a cluster of their own (not the session's) because they tear it down.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentpool_dev import cgroups, images, procs, realnode
from agentpool_dev import cluster as cluster_mod
from agentpool_dev.realnode import NODE_KIND_LABEL
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# What the kubelet would set machine-wide (it must find them shown, not change the host's).
WATCHED_SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
TOLERATE_REAL = {"key": NODE_KIND_LABEL, "operator": "Equal", "value": "real",
                 "effect": "NoSchedule"}
RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
              "capabilities": {"drop": ["ALL"]}}
# A shell in the PgBouncer image: PgBouncer on the pod IP, plus two connection attempts whose
# outcome the test reads from the log.
PROBE_SCRIPT = """
printf '[databases]\\n[pgbouncer]\\nlisten_addr = 0.0.0.0\\nlisten_port = 6432\\n\
auth_type = trust\\nunix_socket_dir =\\nlogfile =\\npidfile =\\n' > /tmp/p.ini
if timeout 5 bash -c "exec 3<>/dev/tcp/$API_SERVICE/443"; then echo api-service=reached;
else echo api-service=failed; fi
if timeout 5 bash -c "exec 3<>/dev/tcp/$OUTSIDE/$OUTSIDE_PORT"; then echo outside=reached;
else echo outside=unreachable; fi
exec pgbouncer /tmp/p.ini
"""


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    found: list[dict[str, Any]] = json.loads(out or "[]")
    return found


def _outside_address() -> tuple[str, int]:
    """An address off this machine: the default gateway's (routes never reach it from pods)."""
    default = _ip_json("route", "show", "default")
    if default and "gateway" in default[0]:
        return str(default[0]["gateway"]), 53
    return "203.0.113.1", 80  # TEST-NET-3: off the machine by definition


def _traces(c: cluster_mod.Cluster) -> dict[str, Any]:
    """What a cluster with real nodes adds to the host, as far as the host can see it."""
    assert c.net is not None
    state = str(c.state_dir.resolve())
    with open("/proc/self/mountinfo") as mounts:
        mounted = sorted(line.split()[4] for line in mounts if state in line)
    ours = {c.net.bridge, *(c.net.host_veth(i) for i in range(2))}
    links = sorted(link["ifname"] for link in _ip_json("link") if link["ifname"] in ours)
    routes = sorted(str(r.get("dst")) for r in _ip_json("route") if r.get("dev") in ours)
    names = [f"agentpool-{c.net.index}-{i}" for i in range(2)]
    cgroup_dirs = sorted(str(root / name) for root in cgroups.hierarchies() for name in names
                         if (root / name).exists())
    nft = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    return {"mounts": mounted, "links": links, "routes": routes, "cgroups": cgroup_dirs,
            "nft": nft,
            "sysctls": {name: Path("/proc/sys", name).read_text() for name in WATCHED_SYSCTLS}}


@pytest.fixture
def real_cluster(tmp_path: Path) -> Iterator[cluster_mod.Cluster]:
    running = cluster_mod.up(tmp_path / "cluster", real_nodes=1)
    try:
        yield running
    finally:
        running.stop()


def _probe_pod(outside: tuple[str, int], api_service: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
        "spec": {
            "nodeSelector": {NODE_KIND_LABEL: "real"},
            "tolerations": [TOLERATE_REAL],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "probe", "image": images.catalog()["pgbouncer"].name,
                "command": ["bash", "-c", PROBE_SCRIPT],
                "env": [{"name": "API_SERVICE", "value": api_service},
                        {"name": "OUTSIDE", "value": outside[0]},
                        {"name": "OUTSIDE_PORT", "value": str(outside[1])}],
                "resources": {"limits": {"memory": "48Mi"}},
                "securityContext": RESTRICTED,
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_a_real_pod_runs_within_its_limits_and_down_leaves_no_trace(
    real_cluster: cluster_mod.Cluster,
) -> None:
    c = real_cluster
    node = c.real_node("real-node-0")
    built = images.ensure(["pause", "pgbouncer"])
    realnode.import_images(node, {b.image.name: b.archive for b in built.values()})
    running = _traces(c)
    before_sysctls = running["sysctls"]
    # While the node runs, its traces are visible (so the final check can fail) ...
    assert running["links"]
    assert running["mounts"]
    assert running["cgroups"]

    outside = _outside_address()
    assert c.net is not None
    api_service = c.net.kubernetes_service_ip
    c.kubectl("apply", "-f", "-", input=json.dumps(_probe_pod(outside, api_service)))
    def probe_log() -> str | None:
        out = c.kubectl("logs", "probe", check=False).stdout
        return out if "outside=" in out else None

    logs = eventually(probe_log, timeout=90)
    pod = c.kubectl_json("get", "pod", "probe")
    assert pod["spec"]["nodeName"] == "real-node-0"
    assert "api-service=reached" in logs, logs
    assert "outside=unreachable" in logs, logs
    # The host reaches the pod at its CNI address (PgBouncer listens there).
    ip = pod["status"]["podIP"]
    assert ip.startswith(node.pod_cidr.rsplit(".", 1)[0] + ".")
    eventually(lambda: _tcp_open(ip, 6432), timeout=30)
    # ... and the cluster's Services, through the node's kube-proxy, as the API server does
    # for aggregated APIs: here the `kubernetes` Service, which leads back to the API server.
    # The API server answers there with a certificate that names that address.
    assert c.net.service_cidr in running["routes"]
    trusted = ssl.create_default_context(cafile=str(c.state_dir / "pki" / "ca.crt"))
    eventually(lambda: procs.http_ok(f"https://{api_service}/version", trusted), timeout=30)
    # The memory limit is the kernel's, in the container's cgroup below the node's.
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("//")[1]
    limits = list(Path("/sys/fs/cgroup/memory", node.cgroup).rglob(
        f"{container_id}/memory.limit_in_bytes"))
    assert [p.read_text().strip() for p in limits] == [str(48 * 2**20)]
    # The kubelet found the kernel settings it wants without changing the host's.
    assert _traces(c)["sysctls"] == before_sysctls

    c.stop()
    after = _traces(c)
    # ... and after `down` none is left; no firewall rule was ever added to the host.
    assert after["links"] == []
    assert after["routes"] == []
    assert after["mounts"] == []
    assert after["cgroups"] == []
    assert after["nft"] == running["nft"]
    assert after["sysctls"] == before_sysctls
    assert cgroups.pids(node.cgroup) == []


def test_pods_land_on_real_nodes_only_when_they_ask(
    real_cluster: cluster_mod.Cluster,
) -> None:
    c = real_cluster
    plain = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
             "spec": {"containers": [{"name": "c", "image": "example.invalid/any:1"}]}}
    asking = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "asking"},
              "spec": {"nodeSelector": {NODE_KIND_LABEL: "real"}, "tolerations": [TOLERATE_REAL],
                       "containers": [{"name": "c", "image": "example.invalid/any:1"}]}}
    only_selecting = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "selecting"},
                      "spec": {"nodeSelector": {NODE_KIND_LABEL: "real"},
                               "containers": [{"name": "c", "image": "example.invalid/any:1"}]}}
    for pod in (plain, asking, only_selecting):
        c.kubectl("apply", "-f", "-", input=json.dumps(pod))

    def node_of(name: str) -> str:
        return str(c.kubectl_json("get", "pod", name)["spec"].get("nodeName") or "")

    assert eventually(lambda: node_of("plain")).startswith("kwok-node-")
    assert eventually(lambda: node_of("asking")) == "real-node-0"
    # Selecting real nodes without tolerating their taint: unschedulable, not misplaced.
    eventually(lambda: any(
        cond.get("reason") == "Unschedulable"
        for cond in c.kubectl_json("get", "pod", "selecting")["status"].get("conditions", [])))
    assert node_of("selecting") == ""
