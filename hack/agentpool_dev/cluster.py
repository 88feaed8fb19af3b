"""A real Kubernetes control plane from the binaries `hack/testcluster` builds, with KWOK's
simulated nodes and, on request, real nodes.

etcd, kube-apiserver (with the aggregation layer and a write audit log), kube-controller-manager,
kube-scheduler and KWOK (which plays the kubelet for fake nodes, so pods become Running and
Ready). Used by the pytest fixtures (`tests/plugins/cluster.py`) and by people through
`python -m agentpool_dev cluster up|down|kubeconfig|status`.

KWOK's pod and service IPs are simulated 10.x addresses nothing connects to. Real nodes
(`realnode`: kubelet, containerd, runc, CNI, kube-proxy) run real containers; they need the
cluster's own network (`nodenet`), so a cluster started with `network=True` serves its API on
the host's bridge address instead of 127.0.0.1, where the nodes and pods reach it.

Which kind of node a pod lands on is never left to chance: both kinds carry the label
`agentpool.dev/node-kind` (`kwok` or `real`), and the kind that is not the cluster's default
is tainted with that key, so pods go there only when they tolerate it (and select it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentpool_dev import images, nodenet, procs, realnode
from agentpool_dev import pki as pki_mod
from agentpool_dev.paths import build_script, state_root
from agentpool_dev.realnode import NODE_KIND_LABEL

SERVICE_CIDR = "10.96.0.0/24"
"""The Service range of a cluster without its own network; with one, `NodeNet.service_cidr`."""
POD_CIDR = "10.244.0.1/16"
FAKE_NODES = ("kwok-node-0", "kwok-node-1")
REAL_NODE_PREFIX = "real-node-"
KINDS = ("kwok", "real")
LOOPBACK = "127.0.0.1"

# Log write requests only: tests count them to prove a quiet steady state.
_AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
"""


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl command; unlike its base class, its message shows kubectl's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()}"


def _build(*target: str) -> Path:
    result = subprocess.run(
        ["bash", str(build_script()), *target], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(result.stdout.strip().splitlines()[-1])


def find_binaries() -> Path:
    """The folder with the control plane binaries, building them first when absent."""
    override = os.environ.get("AGENTPOOL_TESTCLUSTER_BIN")
    return Path(override) if override else _build()


def find_node_binaries() -> Path:
    """The folder with the kubelet and kube-proxy, building them first when absent."""
    override = os.environ.get("AGENTPOOL_NODE_BIN")
    return Path(override) if override else _build("node")


def find_prometheus() -> Path:
    """Prometheus with Kubernetes service discovery (Debian's has none), building it first
    when absent (`build.sh prometheus`)."""
    override = os.environ.get("AGENTPOOL_PROMETHEUS_BIN")
    return Path(override) if override else _build("prometheus") / "prometheus"


@dataclass
class Cluster:
    """A control plane's files and processes; `kubeconfig` is what clients use."""

    state_dir: Path
    bin_dir: Path
    kubeconfig: Path
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[procs.Proc] = field(default_factory=list)
    net: nodenet.NodeNet | None = None
    """The cluster's own network, when it can have real nodes."""
    real_nodes: list[str] = field(default_factory=list)
    default_kind: str = "kwok"
    """Where pods go unless they tolerate the other kind's taint."""

    @property
    def host(self) -> str:
        """The address the API server serves on: the bridge's, or loopback."""
        return self.net.host_ip if self.net is not None else LOOPBACK

    @property
    def service_cidr(self) -> str:
        return self.net.service_cidr if self.net is not None else SERVICE_CIDR

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.ports['apiserver']}"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "logs" / "audit.log"

    def binary(self, name: str) -> str:
        found = self.bin_dir / name
        if found.exists():
            return str(found)
        on_path = shutil.which(name)
        if on_path is None:
            raise FileNotFoundError(f"{name} is neither in {self.bin_dir} nor on PATH")
        return on_path

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; on failure the error carries stderr."""
        result = subprocess.run(
            [self.binary("kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def wait_condition(self, resource: str, condition: str, timeout: float = 60) -> None:
        """Wait until `resource` (e.g. `crd/<name>`) has `condition` True.

        Polls instead of `kubectl wait`, which fails at once ("status.conditions accessor
        error") when it reads a just-created object before any condition was set."""
        def met() -> bool:
            found = self.kubectl("get", resource, "-o", "json", check=False)
            if found.returncode != 0:
                return False
            conditions = (json.loads(found.stdout).get("status") or {}).get("conditions") or []
            return any(c.get("type") == condition and c.get("status") == "True"
                       for c in conditions)

        procs.wait_until(f"{resource} {condition}", met, timeout)

    def kubeconfig_for(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for a separate identity, so its requests can be told apart (audit log)
        or held to RBAC (no `system:masters` group unless asked for)."""
        pki = pki_mod.Pki(self.state_dir / "pki")
        cert, key = pki_mod.issue_client(pki, user, groups)
        # No ':' in the name: KUBECONFIG is a ':'-separated list (kopf splits it), and a
        # ServiceAccount's user name is full of them.
        path = self.state_dir / f"kubeconfig-{re.sub(r'[^A-Za-z0-9_.-]', '_', user)}"
        _write_kubeconfig(path, self.server, pki, cert, key)
        return path

    def audit_events(self) -> list[dict[str, Any]]:
        """Write requests the API server has logged so far (see the audit policy)."""
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line]

    def real_node(self, name: str) -> realnode.RealNode:
        if self.net is None:
            raise RuntimeError("this cluster has no network for real nodes (network=False)")
        index = int(name.removeprefix(REAL_NODE_PREFIX))
        return realnode.RealNode(name=name, index=index,
                                 dir=self.state_dir / "nodes" / name, net=self.net)

    def add_real_node(self, timeout: float = 120) -> realnode.RealNode:
        """Start one more real node and wait until it is Ready."""
        if self.net is None:
            raise RuntimeError("this cluster has no network for real nodes (network=False)")
        node = self.real_node(f"{REAL_NODE_PREFIX}{len(self.real_nodes)}")
        self.real_nodes.append(node.name)
        _save_info(self)  # recorded before anything exists, so `down` cleans half a start up
        nodenet.add_node(self.net, node.index)
        pki = pki_mod.Pki(self.state_dir / "pki")
        realnode.prepare(node, self.server, pki,
                         taint=None if self.default_kind == "real" else "real",
                         sandbox_image=images.catalog()["pause"].name)
        started = realnode.start(node, find_node_binaries(), {NODE_KIND_LABEL: "real"},
                                 self.state_dir / "logs", timeout)
        self.processes.extend(started)
        procs.save(_state_file(self.state_dir), self.processes)
        procs.wait_until(f"node {node.name} Ready", lambda: _ready(self, node.name), timeout,
                         started[1])
        return node

    def stop(self) -> None:
        _stop(self)


def _state_file(state_dir: Path) -> Path:
    return state_dir / "cluster.json"


def _write_kubeconfig(path: Path, server: str, pki: pki_mod.Pki, cert: Path | None = None,
                      key: Path | None = None) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "agentpool-test", "cluster": {
            "server": server, "certificate-authority": str(pki.ca_crt)}}],
        "users": [{"name": "admin", "user": {
            "client-certificate": str(cert or pki.admin_crt),
            "client-key": str(key or pki.admin_key)}}],
        "contexts": [{"name": "agentpool-test", "context": {
            "cluster": "agentpool-test", "user": "admin", "namespace": "default"}}],
        "current-context": "agentpool-test",
    }
    # JSON is valid YAML, and every kubeconfig reader accepts it.
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


def _apiserver_args(c: Cluster, pki: pki_mod.Pki) -> list[str]:
    p = c.ports
    if c.net is None:
        # Endpoints may not point at loopback: don't let it try to publish itself there.
        where = ["--endpoint-reconciler-type=none"]
    else:
        # The `kubernetes` Service's endpoint is the bridge address, which kube-proxy sends
        # pods' in-cluster clients to; logs and exec reach kubelets by node address.
        where = ["--kubelet-preferred-address-types=InternalIP",
                 f"--kubelet-client-certificate={pki.admin_crt}",
                 f"--kubelet-client-key={pki.admin_key}"]
    return [
        c.binary("kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
        f"--bind-address={c.host}",
        f"--secure-port={p['apiserver']}",
        # Without it the apiserver looks for a default route, which this machine may lack.
        f"--advertise-address={c.host}",
        *where,
        f"--tls-cert-file={pki.apiserver_crt}",
        f"--tls-private-key-file={pki.apiserver_key}",
        f"--client-ca-file={pki.ca_crt}",
        "--authorization-mode=Node,RBAC",
        f"--service-cluster-ip-range={c.service_cidr}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-account-key-file={pki.sa_pub}",
        "--allow-privileged=true",
        "--profiling=false",
        # The aggregation layer, so APIServices (external metrics) work.
        f"--requestheader-client-ca-file={pki.front_proxy_ca_crt}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_client_crt}",
        f"--proxy-client-key-file={pki.front_proxy_client_key}",
        f"--audit-policy-file={c.state_dir / 'audit-policy.yaml'}",
        f"--audit-log-path={c.audit_log}",
        "--audit-log-format=json",
        "--audit-log-maxsize=200",
    ]


def _component_args(c: Cluster, binary: str, port: str) -> list[str]:
    """Flags the controller-manager and the scheduler share: admin kubeconfig for API calls
    and for delegated authn/authz of their health endpoint, loopback serving, no election."""
    kc = str(c.kubeconfig)
    return [
        c.binary(binary),
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1",
        f"--secure-port={c.ports[port]}",
        "--leader-elect=false",
    ]


def _controller_manager_args(c: Cluster, pki: pki_mod.Pki) -> list[str]:
    return [
        *_component_args(c, "kube-controller-manager", "controller-manager"),
        "--controllers=*",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca_crt}",
        f"--cluster-signing-cert-file={pki.ca_crt}",
        f"--cluster-signing-key-file={pki.ca_key}",
        # Faster HPA loops than the 15 s default, so autoscaling tests finish quickly.
        "--horizontal-pod-autoscaler-sync-period=5s",
        "--concurrent-deployment-syncs=10",
        "--concurrent-replicaset-syncs=10",
        "--kube-api-qps=200",
        "--kube-api-burst=400",
    ]


def _scheduler_args(c: Cluster) -> list[str]:
    return _component_args(c, "kube-scheduler", "scheduler")


def _kwok_args(c: Cluster) -> list[str]:
    return [
        c.binary("kwok"),
        f"--kubeconfig={c.kubeconfig}",
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        f"--cidr={POD_CIDR}",
        "--node-ip=10.244.255.254",
        "--node-lease-duration-seconds=40",
        f"--server-address=127.0.0.1:{c.ports['kwok']}",
    ]


def _node_manifest(name: str, tainted: bool) -> dict[str, Any]:
    node: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                NODE_KIND_LABEL: "kwok",
                "topology.kubernetes.io/zone": f"zone-{name[-1]}",
            },
        },
        "status": {
            "allocatable": {"cpu": "256", "memory": "1Ti", "pods": "2000"},
            "capacity": {"cpu": "256", "memory": "1Ti", "pods": "2000"},
        },
    }
    if tainted:
        node["spec"] = {"taints": [{"key": NODE_KIND_LABEL, "value": "kwok",
                                    "effect": "NoSchedule"}]}
    return node


def _start(c: Cluster, name: str, argv: Sequence[str]) -> procs.Proc:
    proc = procs.start(name, argv, c.state_dir / "logs" / f"{name}.log")
    c.processes.append(proc)
    procs.save(_state_file(c.state_dir), c.processes)
    return proc


def _ssl_context(pki: pki_mod.Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_crt))
    context.load_cert_chain(str(pki.admin_crt), str(pki.admin_key))
    return context


def _unverified_context() -> ssl.SSLContext:
    # Controller-manager and scheduler serve health on self-signed certificates.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def up(state_dir: Path, bin_dir: Path | None = None, timeout: float = 120, *,
       real_nodes: int = 0, network: bool | None = None, default_kind: str = "kwok") -> Cluster:
    """Start a fresh control plane in `state_dir` (wiped first) and wait until it works.

    `real_nodes`: how many real nodes to start now (more with `Cluster.add_real_node`).
    `network`: give the cluster its own network so real nodes can join (needs root); on
    by default when real nodes are asked for. `default_kind`: which kind of node (`kwok` or
    `real`) takes pods that say nothing; the other kind is tainted.
    """
    if default_kind not in KINDS:
        raise ValueError(f"default_kind must be one of {KINDS}, not {default_kind!r}")
    if network is None:
        network = real_nodes > 0
    if real_nodes and not network:
        raise ValueError("real nodes need the cluster's network (network=True)")
    if _state_file(state_dir).exists():
        down(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    bin_dir = bin_dir or find_binaries()
    if real_nodes:
        find_node_binaries()  # build before anything starts, not while a cluster waits
    cluster = Cluster(state_dir=state_dir, bin_dir=bin_dir, kubeconfig=state_dir / "kubeconfig",
                      default_kind=default_kind)
    names = ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")
    cluster.ports = {name: procs.free_port() for name in names}
    try:
        if network:
            cluster.net = nodenet.create(state_dir / "ns")
            cluster.net.save(_net_file(state_dir))
        _save_info(cluster)
        _boot(cluster, timeout)
        for _ in range(real_nodes):
            cluster.add_real_node(timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _save_info(c: Cluster) -> None:
    _info_file(c.state_dir).write_text(json.dumps({
        "bin_dir": str(c.bin_dir), "ports": c.ports, "real_nodes": c.real_nodes,
        "default_kind": c.default_kind}, indent=2))


def _ready(c: Cluster, name: str) -> bool:
    found = c.kubectl("get", "node", name, "-o", "json", check=False)
    if found.returncode != 0:
        return False
    conditions = json.loads(found.stdout).get("status", {}).get("conditions", [])
    return any(cond["type"] == "Ready" and cond["status"] == "True" for cond in conditions)


def _boot(c: Cluster, timeout: float) -> None:
    extra_ips = (c.net.host_ip, c.net.kubernetes_service_ip) if c.net is not None else ()
    pki = pki_mod.generate(c.state_dir / "pki", extra_ips=extra_ips)
    (c.state_dir / "audit-policy.yaml").write_text(_AUDIT_POLICY)
    _write_kubeconfig(c.kubeconfig, c.server, pki)
    p = c.ports

    etcd = _start(c, "etcd", [
        c.binary("etcd"),
        "--name=agentpool-test",
        f"--data-dir={c.state_dir / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{p['etcd']}",
        f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
        f"--listen-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
        f"--initial-cluster=agentpool-test=http://127.0.0.1:{p['etcd-peer']}",
        # Test data is disposable: skipping fsync makes every write several times faster.
        "--unsafe-no-fsync=true",
        "--quota-backend-bytes=4294967296",
        "--log-level=warn",
    ])
    procs.wait_until("etcd /health",
                     lambda: procs.http_ok(f"http://127.0.0.1:{p['etcd']}/health"), timeout, etcd)

    apiserver = _start(c, "kube-apiserver", _apiserver_args(c, pki))
    context = _ssl_context(pki)
    procs.wait_until("kube-apiserver /readyz",
                     lambda: procs.http_ok(f"{c.server}/readyz", context), timeout, apiserver)

    insecure = _unverified_context()
    kcm = _start(c, "kube-controller-manager", _controller_manager_args(c, pki))
    scheduler = _start(c, "kube-scheduler", _scheduler_args(c))
    kwok = _start(c, "kwok", _kwok_args(c))
    procs.wait_until("kube-controller-manager /healthz", lambda: procs.http_ok(
        f"https://127.0.0.1:{p['controller-manager']}/healthz", insecure), timeout, kcm)
    procs.wait_until("kube-scheduler /healthz", lambda: procs.http_ok(
        f"https://127.0.0.1:{p['scheduler']}/healthz", insecure), timeout, scheduler)

    tainted = c.default_kind != "kwok"
    nodes = {"apiVersion": "v1", "kind": "List",
             "items": [_node_manifest(name, tainted) for name in FAKE_NODES]}
    c.kubectl("apply", "-f", "-", input=json.dumps(nodes))
    procs.wait_until("KWOK nodes Ready", lambda: all(_ready(c, n) for n in FAKE_NODES),
                     timeout, kwok)
    # Pods can only be created once the service-account controller made `default`.
    procs.wait_until("the default ServiceAccount", lambda: c.kubectl(
        "get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
        timeout, kcm)


def _info_file(state_dir: Path) -> Path:
    return state_dir / "ports.json"


def _net_file(state_dir: Path) -> Path:
    return state_dir / "network.json"


def load(state_dir: Path) -> Cluster | None:
    """The running cluster recorded in `state_dir`, or None when there is none."""
    if not _state_file(state_dir).exists() or not _info_file(state_dir).exists():
        return None
    info = json.loads(_info_file(state_dir).read_text())
    return Cluster(
        state_dir=state_dir,
        bin_dir=Path(info["bin_dir"]),
        kubeconfig=state_dir / "kubeconfig",
        ports={k: int(v) for k, v in info["ports"].items()},
        processes=procs.load(_state_file(state_dir)),
        net=nodenet.NodeNet.load(_net_file(state_dir)),
        real_nodes=list(info.get("real_nodes", [])),
        default_kind=info.get("default_kind", "kwok"),
    )


def _stop(c: Cluster) -> None:
    """Processes first (they exit cleanly), then what real nodes leave: containers,
    namespaces, mounts, cgroups; then the cluster's network."""
    # Newest first, one at a time: signalled together, the API server waits for an etcd that
    # is already gone and needs SIGKILL after the timeout (15 s); in this order all stop in ~1 s.
    for proc in reversed(c.processes):
        procs.stop([proc])
    c.processes = []
    procs.save(_state_file(c.state_dir), [])
    if c.net is not None:
        for name in c.real_nodes:
            realnode.destroy(c.real_node(name))
        nodenet.destroy(c.net)
        _net_file(c.state_dir).unlink(missing_ok=True)


def down(state_dir: Path) -> None:
    """Stop every process recorded in `state_dir`, remove every real node's and the
    network's traces, and forget them."""
    found = load(state_dir)
    if found is not None:
        _stop(found)
    else:
        procs.stop(procs.load(_state_file(state_dir)))
    _state_file(state_dir).unlink(missing_ok=True)


def default_state_dir() -> Path:
    return state_root() / "cluster"
