"""pytest fixtures for real pods: a real node in the session's cluster with the images it
runs, and PostgreSQL and Redis on the cluster bridge, where pods reach them.

The node joins on first use (about 20 s with the images' archives cached; a cold image build
adds about 2 minutes once per machine), so sessions without real-pod tests never pay for it.
Real nodes carry the taint `agentpool.dev/node-kind=real`: pods reach them only with
`REAL_NODE_POD`'s selector and toleration.
"""

from __future__ import annotations

from collections.abc import Iterator

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


@pytest.fixture(scope="session")
def real_node(cluster: Cluster) -> realnode.RealNode:
    """One real node, with the images an AgentPool with a database runs."""
    _require_network(cluster)
    built = images.ensure(POOL_IMAGES)
    node = cluster.add_real_node()
    realnode.import_images(node, {item.image.name: item.archive for item in built.values()})
    return node


@pytest.fixture(scope="session")
def pod_services(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[ServiceSettings]:
    """PostgreSQL, PgBouncer, Redis and Prometheus listening on the cluster bridge only
    (PostgreSQL logs every statement: tests check how pods' PgBouncers prepared them)."""
    _require_network(cluster)
    assert cluster.net is not None
    pg, pgbouncer, redis, prometheus = free_ports(4)
    settings = ServiceSettings(host=cluster.net.host_ip, pg_port=pg, pgbouncer_port=pgbouncer,
                               redis_port=redis, prometheus_port=prometheus,
                               state_dir=tmp_path_factory.mktemp("pod-services"),
                               log_statements=True)
    try:
        with session(settings) as running:
            yield running
    except ServiceError as exc:
        pytest.fail(f"services for pods unavailable: {exc}", pytrace=False)
