"""The metrics API server's queue gauges: one series per published pool, refreshed on a
period, read-only, and one unreadable pool never stops the refresh of the others."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import generate_latest

from agent_runtime.queue.backlog import Backlog, BacklogError, BacklogReader
from agentpool_operator.metrics_api.gauges import GaugeRefresher
from agentpool_operator.metrics_api.pools import PoolDirectory
from agentpool_operator.metrics_api.telemetry import Telemetry
from tests.unit.operator.metrics_api_fakes import FakeApiServer, FakeReader, queue_entry

URL = "redis://:queue-secret-pw@redis:6379/0"


def exposition(telemetry: Telemetry) -> str:
    return generate_latest(telemetry.registry).decode()


def refresher(kube: FakeApiServer, reader: FakeReader, telemetry: Telemetry) -> GaugeRefresher:
    # ttl 0: every pass reads the directory, as passes 10 s apart do.
    pools = PoolDirectory(kube.as_kube(), "agentpool-system", "queues", ttl=0)
    return GaugeRefresher(pools, reader.as_reader(), telemetry)


async def test_every_published_pool_gets_its_gauges_and_a_deleted_one_loses_them() -> None:
    kube = FakeApiServer()
    kube.add_pool("agents", "research", URL)
    kube.add_pool("team", "echo", URL)
    reader = FakeReader({"agentpool:{agents/research}:tasks": Backlog(4, 2),
                         "agentpool:{team/echo}:tasks": Backlog(1, 0)})
    telemetry = Telemetry()
    gauges = refresher(kube, reader, telemetry)
    await gauges.run_once()
    text = exposition(telemetry)
    assert 'agentpool_queue_backlog{agentpool="research",namespace="agents"} 6.0' in text
    assert 'agentpool_queue_in_flight_tasks{agentpool="research",namespace="agents"} 2.0' in text
    assert 'agentpool_queue_backlog{agentpool="echo",namespace="team"} 1.0' in text

    assert kube.queues is not None
    del kube.queues[("agents", "research")]
    await gauges.run_once()
    assert 'agentpool="research"' not in exposition(telemetry)


@pytest.mark.parametrize("failure", [
    BacklogError("cannot read the queue at redis redis:6379/0: refused"),
    ValueError("Redis URL must specify a scheme"), KeyError("pending")],
    ids=["redis-down", "bad-url", "unexpected"])
async def test_an_unreadable_pool_never_stops_the_refresh_of_the_others(
        failure: Exception, caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeApiServer()
    for name in ("alpha", "broken", "omega"):
        kube.add_pool("agents", name, URL)
    reader = FakeReader({"agentpool:{agents/alpha}:tasks": Backlog(3, 0),
                         "agentpool:{agents/omega}:tasks": Backlog(0, 5)},
                        failing={"agentpool:{agents/broken}:tasks": failure})
    telemetry = Telemetry()
    gauges = refresher(kube, reader, telemetry)
    with caplog.at_level(logging.WARNING):
        await gauges.run_once()
        await gauges.run_once()
    text = exposition(telemetry)
    assert 'agentpool_queue_backlog{agentpool="alpha",namespace="agents"} 3.0' in text
    assert 'agentpool_queue_backlog{agentpool="omega",namespace="agents"} 5.0' in text
    assert 'agentpool="broken"' not in text
    assert "agentpool_metrics_api_queue_errors_total 2.0" in text
    assert gauges.passes == 2
    assert len([r for r in caplog.records if "agents/broken" in r.getMessage()]) == 1
    assert "queue-secret-pw" not in caplog.text


async def test_a_missing_directory_is_reported_once_and_the_refresh_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeApiServer(queues=None)
    telemetry = Telemetry()
    gauges = refresher(kube, FakeReader(), telemetry)
    with caplog.at_level(logging.WARNING):
        await gauges.run_once()
        await gauges.run_once()
    assert caplog.text.count("agentpool-system/queues does not exist") == 1
    kube.queues = {}
    kube.add_pool("agents", "alpha", URL)
    await gauges.run_once()
    assert 'agentpool_queue_backlog{agentpool="alpha",namespace="agents"} 0.0' in exposition(
        telemetry)


@pytest.mark.parametrize("url", ["not a url", "redis://:queue-secret-pw@redis:port/0"])
async def test_an_unusable_redis_url_is_a_queue_error_that_names_no_credentials(
        url: str) -> None:
    reader = BacklogReader()
    try:
        with pytest.raises(BacklogError, match="Redis URL cannot be used") as raised:
            await reader.read(url, queue_entry("agents", "alpha", url).keys)
        assert "queue-secret-pw" not in str(raised.value)
    finally:
        await reader.close()
