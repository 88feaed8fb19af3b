"""Two releases of the chart in two namespaces (per-team installs) on one cluster.

A cluster has one external metrics API (the APIService `v1beta1.external.metrics.k8s.io`) and
one AgentPool CRD. The first release ("platform") installs both; a second one installed the
same way is stopped at install time by a message that names the first release and the exact
`--set` flags that make it share the first one's metrics API; installed with them, it leaves
the CRD and the APIService to the first release (its NOTES say so), and its operator
publishes its pools' queues into the first release's queue directory, under its own key.
Both operators (each under its own ServiceAccount, with its own Lease) bring their pools to
Ready, and the first release's metrics API, reached through the real aggregator (its
APIService trusting the operator-kept certificate), answers for the pools of both.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentpool_dev.cluster import Cluster
from agentpool_dev.services import ServiceSettings
from tests.plugins.chart import APISERVICE, CHART, Helm, documents, route_apiservice
from tests.plugins.releases import Release, disown_crd, new_namespace, pool, release_values
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]


@pytest.fixture
def two_releases(cluster: Cluster, helm: Helm, tmp_path: Path, agentpool_crd: dict[str, Any],
                 external_metrics_apiservice: None, only_the_charts_operator: None,
                 scratch_namespaces: list[str]) -> Iterator[tuple[Release, Release]]:
    suffix = uuid.uuid4().hex[:4]
    first = Release(cluster, helm, f"platform-{suffix}",
                    new_namespace(cluster, scratch_namespaces, "platform"), tmp_path / "a")
    second = Release(cluster, helm, f"team-{suffix}",
                     new_namespace(cluster, scratch_namespaces, "team"), tmp_path / "b")
    for release in (first, second):
        release.work.mkdir()
    try:
        yield first, second
    finally:
        cluster.kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found")
        for release in (second, first):
            release.stop()
            helm.run("uninstall", release.name, "--namespace", release.namespace, "--wait",
                     check=False)


def backlog(cluster: Cluster, namespace: str, name: str) -> str | None:
    """A pool's backlog, asked through the aggregator as the HPA controller asks."""
    found = cluster.kubectl(
        "get", "--raw", f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/"
        f"agentpool_queue_backlog?labelSelector=agentpool.dev%2Fpool%3D{name}", check=False)
    if found.returncode != 0:
        return None
    items = json.loads(found.stdout)["items"]
    return str(items[0]["value"]) if items else None


def test_a_second_release_shares_the_first_ones_metrics_api_and_crd(
        cluster: Cluster, services: ServiceSettings,
        two_releases: tuple[Release, Release]) -> None:
    first, second = two_releases
    # The first release installs the CRD (adopting the one other tests applied) and the
    # APIService, and its operator keeps the metrics API's certificates.
    disown_crd(cluster)
    first.install(release_values(metricsApi={"apiService": {"create": True}}),
                  "install", "--take-ownership")
    first.start_operator()
    first.start_metrics_api()
    route_apiservice(cluster, first.namespace, first.metrics_api_name, first.secure_port)

    # The second one, installed the same way, is told what to do instead.
    refused = second.helm.run("install", second.name, str(CHART), "--namespace",
                              second.namespace, "-f", second.helm.values_file(release_values(
                                  metricsApi={"apiService": {"create": True}})),
                              check=False)
    assert refused.returncode != 0
    hint = (f"--set metricsApi.enabled=false --set metricsApi.shared.namespace="
            f"{first.namespace} --set metricsApi.shared.fullname={first.fullname}")
    assert f"already served by the AgentPool metrics API of release {first.namespace}/" \
           f"{first.name}" in refused.stderr, refused.stderr
    assert hint in refused.stderr, refused.stderr

    status = second.install(release_values(metricsApi={
        "enabled": False, "shared": {"namespace": first.namespace,
                                     "fullname": first.fullname}}))
    notes = status["info"]["notes"]
    assert f"The AgentPool CRD belongs to release {first.namespace}/{first.name}" in notes
    assert f"served by the metrics API of release\n{first.fullname} in namespace " \
           f"{first.namespace}" in notes
    manifest = documents(second.helm.run("get", "manifest", second.name, "--namespace",
                                         second.namespace).stdout)
    assert not [d for d in manifest
                if d["kind"] in ("CustomResourceDefinition", "APIService")
                or "metrics-api" in d["metadata"]["name"]]
    second.start_operator()

    pools = {release.name: pool(cluster, release.namespace, f"pool-{index}",
                                services.redis_url)
             for index, release in enumerate((first, second))}
    for index, release in enumerate((first, second)):
        release.wait_ready(pools[release.name], f"pool-{index}")
    # One metrics API, through the aggregator, for the pools of both releases.
    for index, release in enumerate((first, second)):
        def served(namespace: str = release.namespace, name: str = f"pool-{index}"
                   ) -> str | None:
            return backlog(cluster, namespace, name)

        assert eventually(served, timeout=30) == "0"
    # Each operator its own Lease, held.
    for release in (first, second):
        lease = cluster.kubectl_json("get", "lease", release.fullname, "-n", release.namespace)
        assert lease["spec"]["holderIdentity"]
    for release in (first, second):
        release.stop()
        release.assert_nothing_refused()
