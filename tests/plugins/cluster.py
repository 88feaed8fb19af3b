"""pytest fixtures for the real Kubernetes control plane.

`cluster` starts one control plane per test session (see `agentpool_dev.cluster`), or uses an
existing cluster when `AGENTPOOL_TEST_KUBECONFIG` names its kubeconfig. Run as root, the
cluster gets its own network, so that real nodes can join it when a test asks for one
(`tests.plugins.realpods`); `AGENTPOOL_REAL_NODES=0` keeps it on loopback (KWOK only).
KWOK stays the default kind of node: real nodes are tainted. `namespace` gives each test a
fresh namespace so tests cannot see each other's objects.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentpool_dev import cluster as cluster_mod


def _existing_cluster(kubeconfig: Path, state_dir: Path) -> cluster_mod.Cluster:
    # kubectl and helm still come from the pinned build, whatever the machine has on PATH.
    return cluster_mod.Cluster(state_dir=state_dir, bin_dir=cluster_mod.find_binaries(),
                               kubeconfig=kubeconfig)


def real_nodes_possible() -> bool:
    """Real nodes need root (links, namespaces, cgroups, mounts) and may be turned off."""
    return os.geteuid() == 0 and os.environ.get("AGENTPOOL_REAL_NODES", "1") != "0"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster_mod.Cluster]:
    existing = os.environ.get("AGENTPOOL_TEST_KUBECONFIG")
    if existing:
        yield _existing_cluster(Path(existing), tmp_path_factory.mktemp("cluster"))
        return
    running = cluster_mod.up(tmp_path_factory.mktemp("cluster"), network=real_nodes_possible())
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def namespace(cluster: cluster_mod.Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
