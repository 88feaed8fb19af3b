"""The external metrics API's answers, with the API server and Redis replaced by doubles."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent_runtime.queue.backlog import Backlog
from agentpool_operator.metrics_api.auth import AuthConfig, Authenticator, Authorizer
from agentpool_operator.metrics_api.pools import PoolDirectory
from agentpool_operator.metrics_api.server import MetricsApi, build_app
from agentpool_operator.metrics_api.telemetry import Telemetry
from tests.unit.operator.metrics_api_fakes import FakeApiServer, FakeReader

BASE = "/apis/external.metrics.k8s.io/v1beta1"
METRIC = f"{BASE}/namespaces/agents/agentpool_queue_backlog"
HPA = {"Authorization": "Bearer hpa-token"}
NOBODY = {"Authorization": "Bearer nobody-token"}
URL = "redis://:queue-secret-pw@redis.agents.svc:6379/0"


@pytest.fixture
def kube() -> FakeApiServer:
    kube = FakeApiServer(
        tokens={"hpa-token": {"username": "hpa"}, "nobody-token": {"username": "nobody"}},
        allowed_users={"hpa"})
    kube.add_pool("agents", "research", URL)
    kube.add_pool("agents", "echo", URL)
    kube.add_pool("other", "research", URL)
    return kube


@pytest.fixture
def reader() -> FakeReader:
    return FakeReader({"agentpool:{agents/research}:tasks": Backlog(waiting=7, in_flight=5),
                       "agentpool:{agents/echo}:tasks": Backlog(waiting=1, in_flight=0)})


@pytest.fixture
async def client(kube: FakeApiServer, reader: FakeReader) -> AsyncIterator[TestClient[Any, Any]]:
    api = MetricsApi(Authenticator(AuthConfig(), kube.as_kube()), Authorizer(kube.as_kube()),
                     PoolDirectory(kube.as_kube(), "agentpool-system", "queues"),
                     reader.as_reader(), Telemetry())
    async with TestClient(TestServer(build_app(api))) as test_client:
        yield test_client


async def test_one_value_per_matching_pool_is_waiting_plus_in_flight(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get(METRIC, params={"labelSelector": "agentpool.dev/pool=research"},
                                headers=HPA)
    assert response.status == 200
    body = await response.json()
    assert body["kind"] == "ExternalMetricValueList"
    assert body["apiVersion"] == "external.metrics.k8s.io/v1beta1"
    assert [(i["metricName"], i["metricLabels"], i["value"]) for i in body["items"]] == [
        ("agentpool_queue_backlog", {"agentpool.dev/pool": "research"}, "12")]
    assert body["items"][0]["timestamp"].endswith("Z")

    response = await client.get(METRIC, headers=HPA)  # no selector: every pool here
    values = {i["metricLabels"]["agentpool.dev/pool"]: i["value"]
              for i in (await response.json())["items"]}
    assert values == {"echo": "1", "research": "12"}


async def test_unknown_pools_give_an_empty_list(client: TestClient[Any, Any]) -> None:
    response = await client.get(METRIC, params={"labelSelector": "agentpool.dev/pool=nope"},
                                headers=HPA)
    assert (response.status, (await response.json())["items"]) == (200, [])


async def test_anonymous_requests_get_401_and_unauthorised_users_403(
    client: TestClient[Any, Any], kube: FakeApiServer,
) -> None:
    response = await client.get(METRIC)
    assert (response.status, (await response.json())["reason"]) == (401, "Unauthorized")
    response = await client.get(METRIC, headers=NOBODY)
    body = await response.json()
    assert (response.status, body["reason"]) == (403, "Forbidden")
    assert body["message"].startswith('agentpool_queue_backlog.external.metrics.k8s.io is '
                                      'forbidden: User "nobody" cannot list resource')
    # The review asked exactly what the kube-apiserver checks for this URL.
    assert ("nobody", "list", "agentpool_queue_backlog", "agents") in kube.access_reviews


async def test_discovery_needs_authentication_and_health_does_not(
    client: TestClient[Any, Any],
) -> None:
    assert (await client.get(BASE)).status == 401
    response = await client.get(BASE, headers=NOBODY)
    assert [r["name"] for r in (await response.json())["resources"]] == [
        "agentpool_queue_backlog"]
    for path in ("/apis", "/apis/external.metrics.k8s.io", "/openapi/v2", "/openapi/v3"):
        assert (await client.get(path, headers=NOBODY)).status == 200, path
    for path in ("/healthz", "/readyz", "/livez"):
        assert (await client.get(path)).status == 200, path


async def test_other_metrics_are_not_found_and_bad_selectors_are_rejected(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get(f"{BASE}/namespaces/agents/other_metric", headers=HPA)
    assert response.status == 404
    response = await client.get(METRIC, params={"labelSelector": "a in (b"}, headers=HPA)
    assert (response.status, (await response.json())["reason"]) == (400, "BadRequest")


async def test_an_unreadable_queue_is_503_and_the_message_has_no_credentials(
    client: TestClient[Any, Any], reader: FakeReader, kube: FakeApiServer,
) -> None:
    reader.error = "cannot read the queue at redis redis.agents.svc:6379/0: Connection refused"
    response = await client.get(METRIC, params={"labelSelector": "agentpool.dev/pool=research"},
                                headers=HPA)
    body = await response.json()
    assert (response.status, body["reason"]) == (503, "ServiceUnavailable")
    assert "queue-secret-pw" not in await response.text()



async def test_a_missing_queue_directory_is_503_and_says_which_secret(
    client: TestClient[Any, Any], kube: FakeApiServer,
) -> None:
    kube.queues = None
    response = await client.get(METRIC, params={"labelSelector": "agentpool.dev/pool=research"},
                                headers=HPA)
    body = await response.json()
    assert (response.status, body["reason"]) == (503, "ServiceUnavailable")
    assert "queue directory Secret agentpool-system/queues does not exist" in body["message"]


async def test_a_pool_published_after_the_last_read_is_served_at_once(
    client: TestClient[Any, Any], kube: FakeApiServer, reader: FakeReader,
) -> None:
    response = await client.get(METRIC, params={"labelSelector": "agentpool.dev/pool=new"},
                                headers=HPA)
    assert (await response.json())["items"] == []
    kube.add_pool("agents", "new", URL)
    reader.backlogs["agentpool:{agents/new}:tasks"] = Backlog(waiting=3, in_flight=0)
    await asyncio.sleep(1.1)  # the directory is read again for an unknown pool after 1 s

    response = await client.get(METRIC, params={"labelSelector": "agentpool.dev/pool=new"},
                                headers=HPA)
    assert [i["value"] for i in (await response.json())["items"]] == ["3"]
    # Known pools are served from the directory read a moment ago.
    reads = len(kube.directory_reads)
    await client.get(METRIC, params={"labelSelector": "agentpool.dev/pool=research"},
                     headers=HPA)
    assert len(kube.directory_reads) == reads
    assert set(kube.directory_reads) == {("agentpool-system", "queues")}


async def test_work_waiting_on_its_budget_holds_the_autoscaler(
    kube: FakeApiServer, reader: FakeReader, client: TestClient[Any, Any],
) -> None:
    # 2 workers per pod x 3 tasks per worker: the HPA wants one pod per 6 tasks of backlog.
    autoscaled = {"workers": {"perPod": 2},
                  "autoscaling": {"enabled": True, "targetBacklogPerWorker": 3}}
    kube.add_pool("agents", "bound", URL, **autoscaled)
    kube.add_pool("agents", "free", URL, **autoscaled)
    reader.backlogs["agentpool:{agents/bound}:tasks"] = Backlog(
        waiting=40, in_flight=8, budget_waiting=5, live_pods=2)
    reader.backlogs["agentpool:{agents/free}:tasks"] = Backlog(
        waiting=40, in_flight=8, budget_waiting=0, live_pods=2)
    response = await client.get(METRIC, headers=HPA)
    values = {i["metricLabels"]["agentpool.dev/pool"]: i["value"]
              for i in (await response.json())["items"]}
    # Bound by its budget: what its 2 live pods already cover (2 x 6), so the HPA holds at 2.
    # Bound by its workers: the whole backlog, so the HPA scales out to 8.
    assert values["bound"] == "12"
    assert values["free"] == "48"
