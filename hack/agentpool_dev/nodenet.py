"""The test cluster's own network: one host bridge, and a network namespace per real node.

Real nodes never use the machine's network stack. The harness creates a bridge
`agentpool<k>` with the address 172.30.<k>.1/24 (the API server and the services pods must
reach listen there), and for node i a network namespace joined to the bridge by a veth pair
(node address 172.30.<k>.<10+i>). CNI gives the node's pods 10.<100+k>.<i>.0/24 inside that
namespace; the host and the other nodes reach them by routes through the node's address.
The cluster's Services get 10.96.<k>.0/24, and the host reaches them through node 0, whose
kube-proxy rewrites them like on any node: the API server, which runs on the host, dials an
aggregated API's Service (the metrics API pod) as it would on a control-plane node.

Why this shape (see the workplace's network rule): every packet a pod or node sends ends at
an address on a link the harness made, and so does every packet the host sends to the
cluster's pod and Service ranges. The node namespaces have a default route to the host
bridge, and the bridge has forwarding off, so a packet for anywhere else is dropped by the host
instead of being routed off the machine; no NAT and no host firewall rule is ever added.
kube-proxy's rules live inside the node namespaces and die with them.

The namespaces are bound to files under the cluster's state dir (not /run/netns), so
everything is under the state dir and `destroy` removes it all: unbinding the files frees the
namespaces (and the veths and routes in them), and deleting the bridge drops the host routes.
`k` is the first index whose bridge does not exist yet: creating the link is the atomic claim,
so clusters started side by side never share one.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

BRIDGE_PREFIX = "agentpool"
MAX_NETWORKS = 100  # k in 0..99: pod networks 10.100.0.0/16 .. 10.199.0.0/16
NODE_IF = "eth0"


class NetworkError(RuntimeError):
    """A link, address, route or namespace could not be set up."""


def run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a networking command; failures carry its stderr."""
    result = subprocess.run(list(argv), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


@dataclass(frozen=True)
class NodeNet:
    """The cluster network `k` and where its files live."""

    index: int
    ns_dir: Path

    @property
    def bridge(self) -> str:
        return f"{BRIDGE_PREFIX}{self.index}"

    @property
    def host_ip(self) -> str:
        """The host's address on the bridge: API server, PostgreSQL and Redis listen here."""
        return f"172.30.{self.index}.1"

    @property
    def subnet(self) -> str:
        return f"172.30.{self.index}.0/24"

    @property
    def cluster_cidr(self) -> str:
        """All real pods' addresses (kube-proxy's --cluster-cidr)."""
        return f"10.{100 + self.index}.0.0/16"

    @property
    def service_cidr(self) -> str:
        """The cluster's Service range: one per network, so that clusters side by side can
        each have the host's route to theirs."""
        return f"10.96.{self.index}.0/24"

    @property
    def kubernetes_service_ip(self) -> str:
        """The `kubernetes` Service's cluster IP (the range's first address)."""
        return f"10.96.{self.index}.1"

    def node_ip(self, node: int) -> str:
        return f"172.30.{self.index}.{10 + node}"

    def pod_cidr(self, node: int) -> str:
        return f"10.{100 + self.index}.{node}.0/24"

    def host_veth(self, node: int) -> str:
        return f"ap{self.index}n{node}"

    def netns(self, node: int) -> Path:
        return self.ns_dir / f"net-{node}"

    def mntns(self, node: int) -> Path:
        return self.ns_dir / f"mnt-{node}"

    def nsenter(self, node: int, *, mount: bool = False) -> list[str]:
        """The command prefix that runs a program inside node `node`'s namespaces."""
        prefix = ["nsenter", f"--net={self.netns(node)}"]
        if mount:
            prefix.append(f"--mount={self.mntns(node)}")
        return [*prefix, "--"]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"index": self.index, "ns_dir": str(self.ns_dir)}))

    @classmethod
    def load(cls, path: Path) -> NodeNet | None:
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(index=int(data["index"]), ns_dir=Path(data["ns_dir"]))

    def describe(self) -> dict[str, object]:
        return {**asdict(self), "bridge": self.bridge, "host_ip": self.host_ip}


def _sysctl(path: str, value: str, prefix: Sequence[str] = ()) -> None:
    # Through `sysctl` so that, run under nsenter, it writes the node namespace's value.
    run([*prefix, "sysctl", "-q", "-w", f"{path}={value}"])


def _claim_bridge(ns_dir: Path) -> NodeNet:
    for index in range(MAX_NETWORKS):
        net = NodeNet(index=index, ns_dir=ns_dir)
        claimed = run(["ip", "link", "add", net.bridge, "type", "bridge"], check=False)
        if claimed.returncode == 0:
            # The alias names the owner, so a stale state file never deletes another
            # cluster's bridge that reused the index.
            run(["ip", "link", "set", net.bridge, "alias", str(ns_dir)])
            return net
        if "File exists" not in claimed.stderr:
            raise NetworkError(f"ip link add {net.bridge} type bridge: {claimed.stderr.strip()}")
    raise NetworkError(f"all {MAX_NETWORKS} cluster networks are in use")


def create(ns_dir: Path) -> NodeNet:
    """Claim a cluster network and bring its bridge up (no nodes yet)."""
    net = _claim_bridge(ns_dir)
    try:
        # Nothing that arrives from the cluster is forwarded anywhere by the host, whatever
        # the machine's ip_forward says; no IPv6 (no router adverts, no second address family).
        _sysctl(f"net.ipv4.conf.{net.bridge}.forwarding", "0")
        _sysctl(f"net.ipv6.conf.{net.bridge}.disable_ipv6", "1")
        run(["ip", "addr", "add", f"{net.host_ip}/24", "dev", net.bridge])
        run(["ip", "link", "set", net.bridge, "up"])
        # A private mount to hold the namespace files: a mount namespace may only be bound
        # under a mount that does not propagate (else it could end up inside itself).
        ns_dir.mkdir(parents=True, exist_ok=True)
        run(["mount", "--bind", str(ns_dir), str(ns_dir)])
        run(["mount", "--make-private", str(ns_dir)])
    except BaseException:
        destroy(net)
        raise
    return net


def add_node(net: NodeNet, node: int) -> None:
    """Node `node`'s network namespace, veth into the bridge, addresses and routes.

    Nodes are added in order (0, 1, ...): the new node and every earlier one get routes to
    each other's pods, so pods on different nodes reach each other.
    """
    netns = net.netns(node)
    netns.touch()
    run(["unshare", f"--net={netns}", "true"])
    veth = net.host_veth(node)
    run(["ip", "link", "add", veth, "type", "veth", "peer", "name", NODE_IF, "netns", str(netns)])
    _sysctl(f"net.ipv6.conf.{veth}.disable_ipv6", "1")
    run(["ip", "link", "set", veth, "master", net.bridge, "up"])
    inside = net.nsenter(node)
    _sysctl("net.ipv6.conf.all.disable_ipv6", "1", inside)
    # The node routes between its pods' bridge and the host bridge.
    _sysctl("net.ipv4.ip_forward", "1", inside)
    run([*inside, "ip", "link", "set", "lo", "up"])
    run([*inside, "ip", "addr", "add", f"{net.node_ip(node)}/24", "dev", NODE_IF])
    run([*inside, "ip", "link", "set", NODE_IF, "up"])
    # Service IPs are rewritten by kube-proxy in this namespace; a default route lets the
    # kernel pick a source first. Whatever is not rewritten ends at the host, which drops it.
    run([*inside, "ip", "route", "add", "default", "via", net.host_ip])
    for other in range(node):
        run([*inside, "ip", "route", "add", net.pod_cidr(other), "via", net.node_ip(other)])
        run([*net.nsenter(other), "ip", "route", "add", net.pod_cidr(node), "via",
             net.node_ip(node)])
    run(["ip", "route", "add", net.pod_cidr(node), "via", net.node_ip(node), "dev", net.bridge])
    if node == 0:
        # Host -> Service IPs: through the first node, whose kube-proxy rewrites them to the
        # endpoints (and masquerades, the source being outside the cluster CIDR). A Service
        # IP without endpoints, or an endpoint off the cluster, ends back at the host, which
        # forwards nothing from the bridge. Gone with the bridge, like the routes above.
        run(["ip", "route", "add", net.service_cidr, "via", net.node_ip(0), "dev", net.bridge])


def _mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == target for line in mounts)


def unbind(path: Path) -> None:
    """Unmount a namespace file (every layer of it) and delete it."""
    while _mounted(path):
        if run(["umount", str(path)], check=False).returncode != 0:
            run(["umount", "--lazy", str(path)])
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def remove_node(net: NodeNet, node: int) -> None:
    """Free node `node`'s namespaces (call after its processes are gone)."""
    unbind(net.mntns(node))
    run(["ip", "link", "del", net.host_veth(node)], check=False)
    unbind(net.netns(node))


def destroy(net: NodeNet) -> None:
    """Remove the bridge, its routes and every namespace file still bound under `ns_dir`."""
    if net.ns_dir.exists():
        for entry in sorted(net.ns_dir.iterdir()):
            unbind(entry)
        while _mounted(net.ns_dir):
            run(["umount", str(net.ns_dir)])
    if _owns_bridge(net):
        run(["ip", "link", "del", net.bridge])


def _owns_bridge(net: NodeNet) -> bool:
    shown = run(["ip", "-j", "link", "show", net.bridge], check=False)
    if shown.returncode != 0:
        return False
    links = json.loads(shown.stdout)
    return bool(links) and links[0].get("ifalias") == str(net.ns_dir)
