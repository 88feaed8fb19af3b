"""A real Kubernetes node: kubelet, containerd (Debian's, with runc and the CNI plugins) and
kube-proxy, running inside a network and a mount namespace the harness owns.

Called by `cluster.py`. Every file a node writes is under `<cluster state>/nodes/<name>`:

* its **network namespace** (see `nodenet`) holds the node address, the pods' CNI bridge and
  kube-proxy's nftables table, so nothing is added to the host's firewall;
* its **mount namespace** (a copy of the host's, receiving host mounts but sending none back)
  gets tmpfs over `/run`, `/var/lib` and `/var/log`, with the node's folders bound where the
  kubelet and containerd insist on fixed paths (`/var/lib/kubelet`, `/var/lib/cni`,
  `/var/log/pods`). Volume, overlay and pod-network mounts therefore never reach the host,
  and they vanish with the namespace;
* the kernel settings the kubelet would otherwise change machine-wide (`vm.overcommit_memory`,
  `kernel.panic`, `kernel.panic_on_oops`) are shown to it, in that namespace only, as files
  holding the values it wants, so it finds nothing to change;
* its processes, containerd's shims and every container are in the cgroup subtree
  `/agentpool-<k>-<i>` (`cgroups`), killed and removed on stop.

Pitfalls this machine kind has (notes/realnodes.md): no CAP_SYS_RESOURCE, so containerd must
not lower oom_score_adj (`restrict_oom_score_adj`); cgroup v1 (`failCgroupV1: false`); no
registry (images are imported, see `images`).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agentpool_dev import cgroups, nodenet, procs
from agentpool_dev import pki as pki_mod

NODE_KIND_LABEL = "agentpool.dev/node-kind"
"""Label (and taint key) telling real nodes (`real`) from KWOK's simulated ones (`kwok`)."""
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
RUNC = "/usr/sbin/runc"
KUBELET_PORT = 10250  # each node has its own network namespace, so the defaults never clash
# What the kubelet sets machine-wide at start unless it already finds these values
# (pkg/kubelet/cm/container_manager_linux.go setupKernelTunables).
_KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
# Host folders that must not be written, because the node hides them behind its own tmpfs.
_HIDDEN = ("/run", "/var/lib", "/var/log")


@dataclass(frozen=True)
class RealNode:
    """Node `index` of cluster network `net`: names, folders, sockets."""

    name: str
    index: int
    dir: Path
    net: nodenet.NodeNet

    @property
    def ip(self) -> str:
        return self.net.node_ip(self.index)

    @property
    def pod_cidr(self) -> str:
        return self.net.pod_cidr(self.index)

    @property
    def cgroup(self) -> str:
        return f"agentpool-{self.net.index}-{self.index}"

    @property
    def containerd_socket(self) -> Path:
        """In the node's own /run (a tmpfs of its mount namespace): state-dir paths can
        exceed the 104 bytes a socket path may have, and nothing outside the node needs it."""
        return Path("/run/containerd/containerd.sock")

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def ctr(self, *args: str) -> list[str]:
        """A `ctr` command against this node's containerd, in the CRI's namespace (run
        inside the node's namespaces, where its socket is)."""
        return [*self.net.nsenter(self.index, mount=True), "ctr",
                f"--address={self.containerd_socket}", "--namespace=k8s.io", *args]


def _containerd_config(node: RealNode, sandbox_image: str) -> str:
    d = node.dir
    return f"""\
version = 2
root = "{d / 'containerd' / 'root'}"
state = "{d / 'containerd' / 'state'}"
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{node.containerd_socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'containerd' / 'opt'}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # The machine withholds CAP_SYS_RESOURCE: asking runc for oom_score_adj -998 fails every
  # sandbox ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  # Pod network namespaces are bound under the state dir, not /run/netns.
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{d / 'cni' / 'net.d'}"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{d / 'runc'}"
        SystemdCgroup = false
"""


def _cni_config(node: RealNode) -> dict[str, object]:
    return {
        "cniVersion": "1.0.0",
        "name": "agentpool",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                # The bridge gets the subnet's first address and is every pod's gateway.
                "isGateway": True,
                # No NAT: pod addresses are routed as they are, and only to harness links.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }
        ],
    }


def _kubelet_config(node: RealNode, ca: Path, taint: str | None) -> dict[str, object]:
    config: dict[str, object] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{node.cgroup}",
        "failCgroupV1": False,
        "failSwapOn": False,
        # No cluster DNS runs, and the host's resolver must not be handed to pods: their
        # lookups would leave the machine. Pods use addresses.
        "resolvConf": "",
        # The machine cannot lower oom_score_adj (no CAP_SYS_RESOURCE).
        "oomScoreAdj": 0,
        # Imported images cannot be pulled again: never collect them for disk space.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1Gi",
            "imagefs.available": "1Gi",
            "nodefs.inodesFree": "1%",
        },
        "podLogsDir": "/var/log/pods",
        # Faster than the defaults, so that tests see state changes within seconds.
        "nodeStatusUpdateFrequency": "4s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "serializeImagePulls": False,
    }
    if taint is not None:
        config["registerWithTaints"] = [
            {"key": NODE_KIND_LABEL, "value": taint, "effect": "NoSchedule"}
        ]
    return config


def _kube_proxy_config(node: RealNode, kubeconfig: Path) -> dict[str, object]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node.name,
        # Its own table per family, inside the node's network namespace.
        "mode": "nftables",
        "clusterCIDR": node.net.cluster_cidr,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # Leave the kernel's conntrack settings alone (the table size is machine-wide).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
    }


def _write_kubeconfig(path: Path, server: str, pki: pki_mod.Pki, user: str,
                      groups: tuple[str, ...]) -> None:
    cert, key = pki_mod.issue_client(pki, user, groups)
    path.write_text(json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "agentpool", "cluster": {
            "server": server, "certificate-authority": str(pki.ca_crt)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert),
                                          "client-key": str(key)}}],
        "contexts": [{"name": "agentpool", "context": {"cluster": "agentpool", "user": user}}],
        "current-context": "agentpool",
    }, indent=2))
    path.chmod(0o600)


def _host_sysctl(name: str) -> str:
    return Path("/proc/sys", name).read_text().strip()


def _mount_script(node: RealNode) -> str:
    """Shell commands run inside the new mount namespace, before any node process starts."""
    d = node.dir
    lines = ["set -e"]
    for hidden in _HIDDEN:
        lines.append(f"mount -t tmpfs -o mode=0755 agentpool-node {hidden}")
    binds = {"/var/lib/kubelet": d / "kubelet", "/var/lib/cni": d / "cni" / "lib",
             "/var/log/pods": d / "pod-logs"}
    for target, source in binds.items():
        lines.append(f"mkdir -p {target}")
        lines.append(f"mount --bind {shlex.quote(str(source))} {target}")
    lines.append("mkdir -p /var/log/containers /run/containerd")
    # No resolver: the host's would take the node's lookups (an image pull, say) off the
    # machine. Without one, Go's resolver asks the node's own loopback and fails at once.
    no_dns = d / "resolv.conf"
    no_dns.write_text("# the test cluster's real nodes resolve no names\n")
    lines.append(f"mount --bind {shlex.quote(str(no_dns))} /etc/resolv.conf")
    for name, wanted in _KUBELET_SYSCTLS.items():
        if _host_sysctl(name) != wanted:
            shown = d / "sysctl" / name.replace("/", ".")
            shown.write_text(f"{wanted}\n")
            lines.append(f"mount --bind {shlex.quote(str(shown))} /proc/sys/{name}")
    return "\n".join(lines)


def _check_state_dir(path: Path) -> None:
    resolved = str(path.resolve())
    for hidden in _HIDDEN:
        if resolved == hidden or resolved.startswith(hidden + "/"):
            raise ValueError(f"a real node's state cannot live under {hidden} ({path}): "
                             "the node hides that folder behind its own tmpfs")


def prepare(node: RealNode, server: str, pki: pki_mod.Pki, taint: str | None,
            sandbox_image: str) -> None:
    """Folders, configuration, credentials, cgroups and namespaces; nothing runs yet.

    `taint`: the `agentpool.dev/node-kind` taint value to register with (None: untainted).
    `sandbox_image`: the pause image containerd starts every pod with (imported, not pulled).
    """
    _check_state_dir(node.dir)
    for sub in ("containerd", "cni/net.d", "cni/lib", "kubelet", "pod-logs", "sysctl", "runc"):
        node.path(*sub.split("/")).mkdir(parents=True, exist_ok=True)
    node.path("containerd", "config.toml").write_text(_containerd_config(node, sandbox_image))
    node.path("cni", "net.d", "10-agentpool.conflist").write_text(
        json.dumps(_cni_config(node), indent=2))
    _write_kubeconfig(node.path("kubelet.kubeconfig"), server, pki,
                      f"system:node:{node.name}", ("system:nodes",))
    _write_kubeconfig(node.path("kube-proxy.kubeconfig"), server, pki,
                      "system:kube-proxy", ())
    # JSON is YAML: both components read their config files with a YAML parser.
    node.path("kubelet.yaml").write_text(json.dumps(_kubelet_config(node, pki.ca_crt, taint)))
    node.path("kube-proxy.yaml").write_text(
        json.dumps(_kube_proxy_config(node, node.path("kube-proxy.kubeconfig"))))
    cgroups.create(node.cgroup)
    mntns = node.net.mntns(node.index)
    mntns.touch()
    nodenet.run(["unshare", f"--mount={mntns}", "--propagation", "slave",
                 "sh", "-c", _mount_script(node)])


def _start(node: RealNode, name: str, argv: list[str], logs: Path) -> procs.Proc:
    proc = procs.start(f"{name}-{node.name}", [*node.net.nsenter(node.index, mount=True), *argv],
                       logs / f"{name}-{node.name}.log")
    cgroups.enter(node.cgroup, proc.pid)
    return proc


def start(node: RealNode, bin_dir: Path, labels: dict[str, str], logs: Path,
          timeout: float) -> list[procs.Proc]:
    """containerd, then the kubelet and kube-proxy. Returns them in start order; the caller
    records them (and waits for the Node to be Ready)."""
    started: list[procs.Proc] = []
    containerd = _start(node, "containerd", [
        "containerd", f"--config={node.path('containerd', 'config.toml')}"], logs)
    started.append(containerd)
    try:
        procs.wait_until(f"containerd of {node.name}", lambda: subprocess.run(
            node.ctr("version"), capture_output=True).returncode == 0, timeout, containerd)
        label_arg = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        started.append(_start(node, "kubelet", [
            str(bin_dir / "kubelet"),
            f"--config={node.path('kubelet.yaml')}",
            f"--kubeconfig={node.path('kubelet.kubeconfig')}",
            f"--hostname-override={node.name}",
            f"--node-ip={node.ip}",
            f"--node-labels={label_arg}",
            "--v=1",
        ], logs))
        started.append(_start(node, "kube-proxy", [
            str(bin_dir / "kube-proxy"), f"--config={node.path('kube-proxy.yaml')}", "--v=1",
        ], logs))
    except BaseException:
        procs.stop(started)
        raise
    return started


def image_names(node: RealNode) -> set[str]:
    """Names of the images the node's containerd has."""
    listed = subprocess.run(node.ctr("images", "ls", "--quiet"), capture_output=True, text=True,
                            check=True)
    return set(listed.stdout.split())


def import_images(node: RealNode, archives: dict[str, Path]) -> None:
    """Load image archives (name -> docker-archive) the node does not have yet into its
    containerd, where the kubelet finds them (pods never pull: no registry is reachable)."""
    present = image_names(node)
    for name, archive in archives.items():
        if name in present:
            continue
        done = subprocess.run(node.ctr("images", "import", str(archive)),
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ctr images import {archive} on {node.name}: {done.stderr}")


def destroy(node: RealNode) -> None:
    """Kill whatever the node still runs (containers, shims), then drop its namespaces and
    cgroups. Its recorded processes (kubelet, kube-proxy, containerd) are stopped first by
    the caller, so they can exit cleanly."""
    cgroups.kill_all(node.cgroup)
    nodenet.remove_node(node.net, node.index)
    cgroups.remove(node.cgroup)
