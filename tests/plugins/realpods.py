"""pytest fixtures for real pods: a real node in the session's cluster with the images it
runs, and PostgreSQL and Redis on the cluster bridge, where pods reach them.

The node joins on first use (about 20 s with the images' archives cached; a cold image build
adds about 2 minutes once per machine), so sessions without real-pod tests never pay for it.
Real nodes carry the taint `agentpool.dev/node-kind=real`: pods reach them only with
`REAL_NODE_POD`'s selector and toleration.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentpool_dev import images, realnode
from agentpool_dev.cluster import Cluster
from agentpool_dev.procs import free_ports
from agentpool_dev.realnode import NODE_KIND_LABEL
from agentpool_dev.services import ServiceError, ServiceSettings, session
from tests.plugins.cluster import real_nodes_possible

# What an AgentPool's `spec.pod` needs to run on the real node.
REAL_NODE_POD = {
    "nodeSelector": {NODE_KIND_LABEL: "real"},
    "tolerations": [{"key": NODE_KIND_LABEL, "operator": "Equal", "value": "real",
                     "effect": "NoSchedule"}],
}
# The example handler image (runtime base + examples/handlers), PgBouncer and the sandbox.
POOL_IMAGES = ("pause", "echo-agent", "pgbouncer")


def _require_network(cluster: Cluster) -> None:
    if cluster.net is None:
        why = ("turned off (AGENTPOOL_REAL_NODES=0, or not root)" if not real_nodes_possible()
               else "the cluster is not the harness's own (AGENTPOOL_TEST_KUBECONFIG)")
        # Fail rather than skip: CI must never pass by silently not testing real pods.
        pytest.fail(f"real pods are not possible: the test cluster has no network for real "
                    f"nodes: {why}", pytrace=False)


@dataclass
class RealNodes:
    """The session cluster's real nodes and the images they all have: every image a test
    asked for is loaded into every real node, those added later included, so a pod runs
    whichever real node the scheduler picks."""

    cluster: Cluster
    keys: set[str] = field(default_factory=set)

    def _archives(self) -> dict[str, Path]:
        built = images.ensure(sorted(self.keys))
        return {item.image.name: item.archive for item in built.values()}

    def images(self, *keys: str) -> dict[str, str]:
        """Catalog key -> image name, loaded into every real node."""
        self.keys.update(keys)
        archives = self._archives()
        for name in self.cluster.real_nodes:
            realnode.import_images(self.cluster.real_node(name), archives)
        catalog = images.catalog()
        return {key: catalog[key].name for key in keys}

    def nodes(self, count: int) -> list[realnode.RealNode]:
        """At least `count` real nodes (new ones get every image asked for so far)."""
        while len(self.cluster.real_nodes) < count:
            node = self.cluster.add_real_node()
            realnode.import_images(node, self._archives())
        return [self.cluster.real_node(name) for name in self.cluster.real_nodes[:count]]


@pytest.fixture(scope="session")
def real_nodes(cluster: Cluster) -> RealNodes:
    _require_network(cluster)
    return RealNodes(cluster)


@pytest.fixture(scope="session")
def real_node(real_nodes: RealNodes) -> realnode.RealNode:
    """The first real node, with the images an AgentPool with a database runs."""
    [node] = real_nodes.nodes(1)
    real_nodes.images(*POOL_IMAGES)
    return node


@pytest.fixture(scope="session")
def pod_services(cluster: Cluster) -> Iterator[ServiceSettings]:
    """PostgreSQL, PgBouncer, Redis and Prometheus listening on the cluster bridge only
    (PostgreSQL logs every statement: tests check how pods' PgBouncers prepared them)."""
    _require_network(cluster)
    assert cluster.net is not None
    pg, pgbouncer, redis, prometheus = free_ports(4)
    # Not under pytest's temporary root: the services run as their own user, which needs to
    # traverse it, and every pytest session starting on the machine makes that root private
    # again (0700), which would cut PostgreSQL off its data directory mid-run.
    state_dir = Path(tempfile.mkdtemp(prefix="agentpool-pod-services-"))
    settings = ServiceSettings(host=cluster.net.host_ip, pg_port=pg, pgbouncer_port=pgbouncer,
                               redis_port=redis, prometheus_port=prometheus,
                               state_dir=state_dir, log_statements=True)
    try:
        with session(settings) as running:
            yield running
    except ServiceError as exc:
        pytest.fail(f"services for pods unavailable: {exc}", pytrace=False)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
