"""Every PromQL expression the chart ships, evaluated by a real Prometheus on real data.

A real runtime supervisor (warm worker processes, the real Redis, PostgreSQL through PgBouncer)
runs handlers that call a loopback HTTP API, use the cache and the database, and sometimes fail;
the real operator reconciles AgentPools (one of them blocked by a ResourceQuota, so reconciles
also fail; one autoscaled, its HPA unable to get its metric); the real metrics API server
exports the queue gauges. Prometheus scrapes all three
(file_sd on loopback, 1 s interval). Then every dashboard query, every dashboard variable's
series selector, every alert expression and signal, and the HPA metric's prometheus-adapter
rule go through Prometheus' HTTP API: each must be valid, each query and signal must return at
least one finite sample, and every metric name they read must be among the names Prometheus
actually scraped.

The exception is PgBouncer's metrics, which only pods with a PgBouncer sidecar serve (see
`tests/chart/promql.py`): here their queries must be valid, and the test PgBouncer, after the
load went through it, must serve every SHOW column and list item they are read from;
`tests/e2e/test_real_pod_prometheus.py` gets them data from real pods.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from agentpool_tools.monitoring.catalogue import PGBOUNCER_EXPORTER_COLUMNS
from aiohttp import web

from agent_runtime.contract import BudgetKeyConfig
from agent_runtime.sdk.client import TaskClient
from agentpool_dev.cluster import Cluster
from agentpool_dev.procs import free_port
from agentpool_dev.services import ServiceSettings, pgbouncer_show
from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.builders.config import runtime_config
from agentpool_operator.builders.context import PoolContext, SecretValues
from tests.chart.promql import (
    EXPORTER_ONLY,
    Expression,
    adapter_expressions,
    metric_names,
    shipped_expressions,
)
from tests.plugins.metrics_api import MetricsApiServer
from tests.plugins.operator import OperatorProcess, Pools
from tests.plugins.runtime import RunningSupervisor, RuntimePool, StartSupervisor

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

HANDLERS = "tests.chart.handlers"
JOB = "agentpool-chart-live"


def prometheus_query(services: ServiceSettings, expr: str) -> dict[str, Any]:
    """One instant query; the parsed response (status "success" or "error")."""
    url = f"{services.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = json.loads(error.read())
    return body


def finite_samples(body: dict[str, Any]) -> list[float]:
    if body.get("status") != "success":
        return []
    data = body["data"]
    if data["resultType"] == "scalar":
        values = [float(data["result"][1])]
    else:
        values = [float(item["value"][1]) for item in data["result"]]
    return [v for v in values if math.isfinite(v)]


def scraped_names(services: ServiceSettings) -> set[str]:
    query = urllib.parse.urlencode({"match[]": f'{{job=~"{JOB}-.*"}}'})
    url = f"{services.prometheus_url}/api/v1/label/__name__/values?{query}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return set(json.loads(response.read())["data"])


@pytest.fixture
async def external_api() -> AsyncIterator[str]:
    """A loopback HTTP API for the handlers: fast answers, and a server error now and then."""
    calls = 0

    async def search(_: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return web.json_response({"ok": True}, status=500 if calls % 10 == 0 else 200)

    app = web.Application()
    app.router.add_get("/search", search)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/search"
    await runner.cleanup()


@pytest.fixture
def scrape_targets(services: ServiceSettings) -> Iterator[Path]:
    """This test's file_sd targets file (removed afterwards, so Prometheus drops them)."""
    path = services.prometheus_targets_dir / f"chart-live-{uuid.uuid4().hex[:8]}.json"
    yield path
    path.unlink(missing_ok=True)


def write_targets(path: Path, targets: list[tuple[int, dict[str, str]]]) -> None:
    entries = [{"targets": [f"127.0.0.1:{port}"], "labels": labels} for port, labels in targets]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries))
    tmp.replace(path)  # atomically: Prometheus never reads half a file


def blocked_pool(cluster: Cluster, namespace: str) -> None:
    """A pool whose ConfigMap the namespace's quota refuses: its reconciles fail."""
    cluster.kubectl("create", "namespace", namespace)
    quota = {"apiVersion": "v1", "kind": "ResourceQuota",
             "metadata": {"name": "no-more-configmaps", "namespace": namespace},
             # kube-root-ca.crt already takes the only one.
             "spec": {"hard": {"configmaps": "1"}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(quota))
    Pools(cluster, namespace).create("blocked")


async def load(client: TaskClient, url: str, seconds: float) -> int:
    """Tasks of every kind for `seconds`, in bursts that leave a backlog for a moment."""
    submitted = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        payloads = [{"url": url, "key": f"k{i % 7}", "sleep": 0.05} for i in range(24)]
        await client.submit_many(payloads)
        await client.submit_many([{}] * 2, handler="fail")
        await client.submit({}, handler="permanent")
        submitted += 27
        await asyncio.sleep(1.0)
    return submitted


def wait_for_data(services: ServiceSettings, expressions: list[Expression],
                  timeout: float) -> dict[str, dict[str, Any]]:
    """Poll until every expression that must have data has it; the last answers."""
    deadline = time.monotonic() + timeout
    while True:
        answers = {e.expr: prometheus_query(services, e.expr) for e in expressions}
        missing = [e for e in expressions
                   if e.must_have_data and not finite_samples(answers[e.expr])]
        if not missing or time.monotonic() > deadline:
            return answers
        time.sleep(2)


async def test_every_shipped_query_returns_data_from_the_real_components(
        cluster: Cluster, services: ServiceSettings, operator: OperatorProcess,
        metrics_api: MetricsApiServer, namespace: str, start_supervisor: StartSupervisor,
        external_api: str, scrape_targets: Path, tmp_path: Path) -> None:
    # The pool, in the cluster (for the operator and the metrics API) and as a real runtime.
    name = f"live-{uuid.uuid4().hex[:6]}"
    pools = Pools(cluster, namespace)
    pools.secret(f"{name}-redis", {"url": services.redis_url})
    manifest = pools.create(name, with_secret=False, handler=f"{HANDLERS}:work")
    # An autoscaled pool whose Redis nobody serves: the metrics API answers 503 for it and
    # its HPA reports FailedGetExternalMetric (the autoscaler and metrics API signals).
    pools.create(f"{name}-hpa", minReplicas=1, maxReplicas=2, autoscaling={"enabled": True})
    blocked_pool(cluster, f"{namespace}-quota")
    try:
        spec = AgentPoolSpec.model_validate(manifest["spec"])
        config = runtime_config(PoolContext(
            name=name, namespace=namespace, uid="", spec=spec,
            secrets=SecretValues(redis_url=services.redis_url))).model_copy(update={
                "handlers": {"fail": f"{HANDLERS}:fail", "permanent": f"{HANDLERS}:permanent"},
                "workers": 2, "concurrency": 4, "max_deliveries": 2,
                "retry_backoff_seconds": 0.2, "retry_backoff_max_seconds": 0.5,
                "heartbeat_interval_seconds": 0.5, "metrics_host": "127.0.0.1",
                "metrics_port": 0,
                # A budget key, so the Budgets row has its series (counted from 0).
                "budgets": (BudgetKeyConfig(name="llm", budget=f"{namespace}/llm",
                                            requests_per_second=100,
                                            tokens_per_minute=100_000),)})
        runtime = RuntimePool(tmp_path / "runtime.json", config)
        runtime.update()
        supervisor: RunningSupervisor = start_supervisor(
            runtime, database_url=services.pgbouncer_dsn)

        write_targets(scrape_targets, [
            (supervisor.port, {"job": f"{JOB}-workers", "namespace": namespace,
                               "agentpool": name, "pod": "pod0"}),
            (operator.health_port, {"job": f"{JOB}-operator", "namespace": "agentpool-system",
                                    "pod": "agentpool-operator-0"}),
            # Its gauges carry the pool's namespace and name themselves (honorLabels).
            (metrics_api.metrics_port, {"job": f"{JOB}-metrics-api"}),
        ])
        pools.wait_ready(name)
        async with await TaskClient.connect(services.redis_url, config) as client:
            await load(client, external_api, seconds=20)
        expressions = [*shipped_expressions(), *adapter_expressions(namespace, [name])]
        answers = wait_for_data(services, expressions, timeout=40)
    finally:
        cluster.kubectl("delete", "namespace", f"{namespace}-quota", "--wait=false",
                        check=False)

    invalid = {e.where: answers[e.expr].get("error") for e in expressions
               if answers[e.expr].get("status") != "success"}
    assert not invalid, invalid
    empty = [f"{e.where}: {e.expr}" for e in expressions
             if e.must_have_data and not finite_samples(answers[e.expr])]
    assert not empty, "no data:\n" + "\n".join(empty)

    scraped = scraped_names(services)
    unknown = {f"{e.where}: {sorted(metric_names(e.expr) - scraped - EXPORTER_ONLY)}"
               for e in expressions if metric_names(e.expr) - scraped - EXPORTER_ONLY}
    assert not unknown, unknown
    assert_pgbouncer_serves_the_exporter_columns(services)
    # The load reached every part of the runtime the dashboards show.
    assert supervisor.metric_reaching("agentpool_tasks_processed_total", 1, outcome="failure") > 0
    assert supervisor.metric_reaching("agentpool_cache_requests_total", 1, result="hit") > 0
    assert supervisor.metric_reaching("agentpool_external_request_duration_seconds_count",
                                      1, outcome="server_error") > 0


def assert_pgbouncer_serves_the_exporter_columns(services: ServiceSettings) -> None:
    """Every SHOW column (and SHOW LISTS item) the exporter's metrics in the dashboards and
    alerts are read from exists in the real PgBouncer, with a number for the pool the load
    used, so the exporter has something to export under each name."""
    rows = {what: pgbouncer_show(services, what)
            for what in {command for command, _ in PGBOUNCER_EXPORTER_COLUMNS.values()}}
    lists = {row["list"]: row["items"] for row in rows.get("LISTS", [])}
    for metric, (command, column) in PGBOUNCER_EXPORTER_COLUMNS.items():
        if command == "LISTS":
            assert lists.get(column, "").isdigit(), (metric, lists)
            continue
        key = "name" if command == "DATABASES" else "database"
        (row,) = [r for r in rows[command] if r[key] == services.database]
        assert row.get(column, "").isdigit(), (metric, command, row)
    # The load went through PgBouncer: it holds server connections for the database.
    assert int(lists["used_servers"]) > 0
