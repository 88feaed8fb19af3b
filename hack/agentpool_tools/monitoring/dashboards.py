"""The AgentPool Grafana dashboards, as code (grafana-foundation-sdk, classic JSON model).

Five dashboards: pool overview, database and PgBouncer, external APIs, cache, operator health.
Every panel queries through the `$datasource` variable and narrows runtime series with the
`$namespace` / `$agentpool` variables, the operator's with `$namespace` / `$job` (see
`promql.py` for the label conventions). `gen.py`
writes them into the chart (`charts/agentpool-operator/dashboards/`), whose template ships them
as ConfigMaps for the Grafana sidecar; a test regenerates and compares, and another evaluates
every query against a real Prometheus.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import StackingConfig, VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement, StackingMode
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableRefresh,
    VariableSort,
)

from agentpool_tools.monitoring import catalogue as m
from agentpool_tools.monitoring.promql import OPERATOR as OP
from agentpool_tools.monitoring.promql import POOL, RATE, quantile, ratio

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["agentpool"]
FULL_WIDTH = 24


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # or "stat"
    stacked: bool = False
    width: int = 12
    height: int = 8


def q(expr: str, legend: str) -> Query:
    return Query(expr, legend)


def _build_panel(panel: Panel, panel_id: int) -> Any:
    builder: Any
    if panel.kind == "stat":
        builder = stat.Panel()
    else:
        builder = (timeseries.Panel()
                   .fill_opacity(10 if not panel.stacked else 40)
                   .legend(VizLegendOptions().show_legend(True)
                           .display_mode(LegendDisplayMode.TABLE)
                           .placement(LegendPlacement.BOTTOM).calcs(["lastNotNull", "max"])))
        if panel.stacked:
            builder = builder.stacking(StackingConfig().mode(StackingMode.NORMAL))
    builder = (builder.id(panel_id).title(panel.title).description(panel.description)
               .unit(panel.unit).datasource(DATASOURCE).span(panel.width)
               .height(panel.height))
    for index, query in enumerate(panel.queries):
        builder = builder.with_target(
            prometheus.Dataquery().expr(query.expr).legend_format(query.legend)
            .ref_id(chr(ord("A") + index)).datasource(DATASOURCE))
    return builder


def _query_variable(name: str, label: str, query: str) -> Any:
    return (db.QueryVariable(name).label(label).datasource(DATASOURCE).query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*"))


def _variables(filters: str) -> list[Any]:
    """The data source, then the filters: "pool" (namespace, AgentPool) for the runtime's
    dashboards, "operator" (namespace, job) for the operator's."""
    variables: list[Any] = [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus")
    ]
    if filters == "pool":
        variables += [
            _query_variable("namespace", "Namespace", f"label_values({m.WORKERS_MAX}, namespace)"),
            _query_variable("agentpool", "AgentPool",
                            f'label_values({m.WORKERS_MAX}{{namespace=~"$namespace"}}, agentpool)'),
        ]
    elif filters == "operator":
        variables += [
            _query_variable("namespace", "Namespace",
                            f"label_values({m.OPERATOR_LEADER}, namespace)"),
            _query_variable("job", "Job",
                            f'label_values({m.OPERATOR_LEADER}{{namespace=~"$namespace"}}, job)'),
        ]
    return variables


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Panel, ...]], ...]
    filters: str = "pool"
    """Which variables narrow the queries: "pool" or "operator" (see `_variables`)."""

    @property
    def filename(self) -> str:
        return f"{self.uid}.json"

    def panels(self) -> Iterator[Panel]:
        for _, panels in self.rows:
            yield from panels

    def build(self) -> Any:
        builder = (db.Dashboard(self.title).uid(self.uid).description(self.description)
                   .tags(TAGS).refresh("30s").time("now-6h", "now").timezone("browser")
                   .tooltip(DashboardCursorSync.CROSSHAIR).editable()
                   .variables(_variables(self.filters)))
        panel_id = 1
        for title, panels in self.rows:
            builder = builder.with_row(db.Row(title).id(panel_id))
            panel_id += 1
            for panel in panels:
                builder = builder.with_panel(_build_panel(panel, panel_id))
                panel_id += 1
        return builder.build()

    def to_json(self) -> str:
        data = json.loads(JSONEncoder(sort_keys=True).encode(self.build()))
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _by_pool(expr: str) -> str:
    return f"sum by (namespace, agentpool) ({expr})"


_WORKERS = f"{{{POOL}}}"
_DB_USED = f'sum by (namespace, agentpool, pod) ({m.DB_CONNECTIONS}{{{POOL}, state="used"}})'
_DB_MAX = f"sum by (namespace, agentpool, pod) ({m.DB_CONNECTIONS_MAX}{_WORKERS})"

OVERVIEW = Dashboard(
    uid="agentpool-overview",
    title="AgentPool / Pool overview",
    description="Throughput, errors, latency, queue and workers of AgentPools.",
    rows=(
        ("Tasks", (
            Panel("Throughput", "Task executions finished per second, by outcome.", "ops", (
                q(f"sum by (outcome) (rate({m.TASKS_PROCESSED}{_WORKERS}[{RATE}]))",
                  "{{outcome}}"),
            ), stacked=True, width=8),
            Panel("Error rate",
                  "Share of task executions that failed or timed out, per pool.",
                  "percentunit", (
                      q(ratio(
                          _by_pool(f'rate({m.TASKS_PROCESSED}{{{POOL}, '
                                   f'outcome=~"failure|timeout"}}[{RATE}])'),
                          _by_pool(f"rate({m.TASKS_PROCESSED}{_WORKERS}[{RATE}])")),
                        "{{namespace}}/{{agentpool}}"),
                  ), width=8),
            Panel("Task latency p95 / p99", "Execution time of tasks (all outcomes).", "s", (
                q(quantile(0.95, m.TASK_DURATION, POOL, RATE, "namespace", "agentpool"),
                  "p95 {{namespace}}/{{agentpool}}"),
                q(quantile(0.99, m.TASK_DURATION, POOL, RATE, "namespace", "agentpool"),
                  "p99 {{namespace}}/{{agentpool}}"),
            ), width=8),
            Panel("Retries and dead letters", "Executions scheduled for retry, and tasks "
                  "moved to the dead-letter stream by reason.", "ops", (
                      q(f"sum (rate({m.TASK_RETRIES}{_WORKERS}[{RATE}]))", "retries"),
                      q(f"sum by (reason) (rate({m.TASKS_DEAD_LETTERED}{_WORKERS}[{RATE}]))",
                        "dead-lettered: {{reason}}"),
                  ), width=24),
        )),
        ("Queue", (
            Panel("Queue backlog", "Tasks a pool still has to finish (the autoscaler's "
                  "metric): waiting for a worker, and delivered but not yet acknowledged.",
                  "short", (
                      q(f"max by (namespace, agentpool) ({m.QUEUE_BACKLOG}{_WORKERS})",
                        "backlog {{namespace}}/{{agentpool}}"),
                      q(f"max by (namespace, agentpool) ({m.QUEUE_WAITING}{_WORKERS})",
                        "waiting {{namespace}}/{{agentpool}}"),
                      q(f"max by (namespace, agentpool) ({m.QUEUE_IN_FLIGHT}{_WORKERS})",
                        "in flight {{namespace}}/{{agentpool}}"),
                  ), width=8),
            Panel("Oldest task age", "How long the oldest task not yet taken by a worker "
                  "has waited (read from the queue itself, so it grows even when no worker "
                  "runs), and time since the pool last finished a task.", "s", (
                      q(f"max by (namespace, agentpool) ({m.QUEUE_OLDEST_WAITING}{_WORKERS})",
                        "oldest waiting {{namespace}}/{{agentpool}}"),
                      q(f"time() - max by (namespace, agentpool) ({m.LAST_SUCCESS}{_WORKERS})",
                        "since last success {{namespace}}/{{agentpool}}"),
                  ), width=8),
            Panel("Queue wait p95 / p99", "Time from submission to the start of execution.",
                  "s", (
                      q(quantile(0.95, m.TASK_QUEUE_DURATION, POOL, RATE,
                                 "namespace", "agentpool"), "p95 {{namespace}}/{{agentpool}}"),
                      q(quantile(0.99, m.TASK_QUEUE_DURATION, POOL, RATE,
                                 "namespace", "agentpool"), "p99 {{namespace}}/{{agentpool}}"),
                  ), width=8),
        )),
        ("Workers", (
            Panel("Workers idle / busy", "Worker processes by state, against the configured "
                  "number.", "short", (
                      q(f"sum by (state) ({m.WORKERS}{_WORKERS})", "{{state}}"),
                      q(f"sum ({m.WORKERS_MAX}{_WORKERS})", "configured"),
                  ), width=8),
            Panel("Worker restarts by reason", "Worker processes replaced inside the pods "
                  "(max_tasks is planned recycling).", "short", (
                      q(f"sum by (reason) (increase({m.WORKER_RESTARTS}{_WORKERS}[{RATE}]))",
                        "{{reason}}"),
                  ), stacked=True, width=8),
            Panel("Longest running task", "Age of the oldest task currently executing, per "
                  "pod.", "s", (
                      q(f"max by (pod) ({m.LONGEST_RUNNING_TASK}{_WORKERS})", "{{pod}}"),
                  ), width=8),
        )),
        ("Memory", (
            Panel("Memory per worker", "Unique memory (USS) of each worker process.",
                  "bytes", (
                      q(f"max by (pod, slot) ({m.WORKER_USS}{_WORKERS})", "{{pod}} #{{slot}}"),
                  ), width=12),
            Panel("Pod memory and limit", "The pod's cgroup working set, its limit and "
                  "whether the memory breaker holds new tasks back.", "bytes", (
                      q(f"max by (pod) ({m.CONTAINER_MEMORY}{_WORKERS})", "{{pod}} used"),
                      q(f"max by (pod) ({m.CONTAINER_MEMORY_LIMIT}{_WORKERS})",
                        "{{pod}} limit"),
                  ), width=8),
            Panel("Memory breaker open", "Pods whose workers take no new tasks because "
                  "memory is short.", "short", (
                      q(f"sum ({m.MEMORY_BREAKER_OPEN}{_WORKERS})", "pods"),
                  ), kind="stat", width=4),
        )),
        ("CPU", (
            Panel("CPU per worker", "CPU time (user + system) each worker slot uses, in cores.",
                  "short", (
                      q(f"sum by (pod, slot) (rate({m.WORKER_CPU}{_WORKERS}[{RATE}]))",
                        "{{pod}} #{{slot}}"),
                  ), width=12),
            Panel("CPU per pod", "CPU time of each pod's runtime processes (supervisor and "
                  "workers), in cores.", "short", (
                      q(f"sum by (pod) (rate({m.POD_CPU}{_WORKERS}[{RATE}]))", "{{pod}}"),
                  ), width=12),
        )),
    ),
)

# PgBouncer series of the pools chosen, without the admin console's own pool.
_PGB = f'{{{POOL}, database!="pgbouncer"}}'
_PGB_POD = "sum by (namespace, agentpool, pod)"

DATABASE = Dashboard(
    uid="agentpool-database",
    title="AgentPool / Database and PgBouncer",
    description="Database connection pools of the workers and of their PgBouncer sidecar "
                "(the PgBouncer row needs spec.monitoring.pgbouncerExporter).",
    rows=(
        ("Connection pools", (
            Panel("Pool utilisation", "Connections in use over the pool capacity, per pod "
                  "(all worker processes of the pod).", "percentunit", (
                      q(ratio(_DB_USED, _DB_MAX), "{{pod}}"),
                  ), width=12),
            Panel("Connections by state", "Used and idle connections against capacity.",
                  "short", (
                      q(f"sum by (state) ({m.DB_CONNECTIONS}{_WORKERS})", "{{state}}"),
                      q(f"sum ({m.DB_CONNECTIONS_MAX}{_WORKERS})", "capacity"),
                  ), width=12),
        )),
        ("Waits", (
            Panel("Pods at capacity", "Pods whose workers use every pooled connection: "
                  "further queries wait for a connection.", "short", (
                      q(f"sum by (namespace, agentpool) (\n"
                        f"  ({_DB_USED} >= bool {_DB_MAX})\n"
                        f"  * ({_DB_MAX} > bool 0)\n)",
                        "{{namespace}}/{{agentpool}}"),
                  ), width=12),
            Panel("Free connections", "Idle connections left per pod; zero means tasks "
                  "queue for a connection.", "short", (
                      q(f'min by (pod) ({m.DB_CONNECTIONS}{{{POOL}, state="idle"}})',
                        "{{pod}}"),
                  ), width=12),
        )),
        ("PgBouncer", (
            Panel("Clients waiting for a server connection", "Worker connections PgBouncer "
                  "holds because every server connection of the pool is busy, per pod. "
                  "Sustained waiting means defaultPoolSize (or the database) is the limit.",
                  "short", (
                      q(f"{_PGB_POD} ({m.PGBOUNCER_CLIENTS_WAITING}{_PGB})", "{{pod}}"),
                  ), width=12),
            Panel("Longest client wait", "Age of the oldest client still waiting for a "
                  "server connection, per pod (whole seconds).", "s", (
                      q(f"max by (namespace, agentpool, pod) "
                        f"({m.PGBOUNCER_CLIENT_MAXWAIT}{_PGB})", "{{pod}}"),
                  ), width=12),
            Panel("Server connections and pool size", "PgBouncer's connections to the "
                  "database: running a transaction (active), parked (idle), all open, and "
                  "the pool size it may open (defaultPoolSize), summed over the pods.",
                  "short", (
                      q(f"sum ({m.PGBOUNCER_SERVERS_ACTIVE}{_PGB})", "active"),
                      q(f"sum ({m.PGBOUNCER_SERVERS_IDLE}{_PGB})", "idle"),
                      q(f"sum ({m.PGBOUNCER_USED_SERVERS}{{{POOL}}})", "open"),
                      q(f"sum ({m.PGBOUNCER_POOL_SIZE}{_PGB})", "pool size"),
                  ), width=12),
            Panel("PgBouncer pool saturation", "Server connections in use over the pool "
                  "size, per pod: at 100 % further transactions wait.", "percentunit", (
                      q(ratio(f"{_PGB_POD} ({m.PGBOUNCER_SERVERS_ACTIVE}{_PGB})",
                              f"{_PGB_POD} ({m.PGBOUNCER_POOL_SIZE}{_PGB})"), "{{pod}}"),
                  ), width=12),
        )),
    ),
)

EXTERNAL_APIS = Dashboard(
    uid="agentpool-external-apis",
    title="AgentPool / External APIs",
    description="Calls from handlers to external APIs through the runtime's HTTP helper.",
    rows=(
        ("Latency", (
            Panel("Latency p95 by API", "Client-side latency of external API calls.", "s", (
                q(quantile(0.95, m.EXTERNAL_REQUEST_DURATION, POOL, RATE, "api"),
                  "p95 {{api}}"),
            ), width=12),
            Panel("Latency p99 by API and operation", "Slowest calls by operation.", "s", (
                q(quantile(0.99, m.EXTERNAL_REQUEST_DURATION, POOL, RATE, "api", "operation"),
                  "p99 {{api}} {{operation}}"),
            ), width=12),
        )),
        ("Errors", (
            Panel("Requests by outcome", "Calls per second by API and outcome.", "reqps", (
                q(f"sum by (api, outcome) "
                  f"(rate({m.EXTERNAL_REQUEST_DURATION}_count{_WORKERS}[{RATE}]))",
                  "{{api}} {{outcome}}"),
            ), stacked=True, width=12),
            Panel("Error ratio by API", "Share of calls that failed (connection errors, 4xx "
                  "and 5xx responses).", "percentunit", (
                      q(ratio(
                          f'sum by (api) (rate({m.EXTERNAL_REQUEST_DURATION}_count'
                          f'{{{POOL}, outcome!="success"}}[{RATE}]))',
                          f"sum by (api) (rate({m.EXTERNAL_REQUEST_DURATION}_count"
                          f"{_WORKERS}[{RATE}]))"),
                        "{{api}}"),
                  ), width=12),
        )),
        ("Budgets", (
            Panel("Budget permits by outcome", "Permits of each AgentBudget key per second: "
                  "granted at once, granted after waiting, or timed out.", "ops", (
                      q(f"sum by (budget, key, outcome) "
                        f"(rate({m.BUDGET_PERMITS}{_WORKERS}[{RATE}]))",
                        "{{budget}}/{{key}} {{outcome}}"),
                  ), stacked=True, width=8),
            Panel("Tokens per minute against the limit", "Tokens used under each key (the "
                  "settled counts, summed over pods), and the key's tokensPerMinute.", "short", (
                      q(f"60 * sum by (budget, key) (rate({m.BUDGET_TOKENS}{_WORKERS}[{RATE}]))",
                        "used {{budget}}/{{key}}"),
                      q(f'max by (budget, key) ({m.BUDGET_LIMIT}{{{POOL}, '
                        f'limit="tokens_per_minute"}})', "limit {{budget}}/{{key}}"),
                  ), width=8),
            Panel("Provider 429s and waiting tasks", "429 answers per second by key (the "
                  "budget allows more than the provider does), and tasks waiting for a permit "
                  "per pool (while above 0 the autoscaler holds).", "short", (
                      q(f"sum by (budget, key) (rate({m.BUDGET_THROTTLED}{_WORKERS}[{RATE}]))",
                        "429/s {{budget}}/{{key}}"),
                      q(f"max by (namespace, agentpool) ({m.QUEUE_BUDGET_WAITING}{_WORKERS})",
                        "waiting {{namespace}}/{{agentpool}}"),
                  ), width=8),
        )),
    ),
)

CACHE = Dashboard(
    uid="agentpool-cache",
    title="AgentPool / Cache",
    description="The runtime's two-level cache (in-process LRU over Redis).",
    rows=(
        ("Cache", (
            Panel("Hit ratio", "Share of lookups answered from the cache, per cache.",
                  "percentunit", (
                      q(ratio(
                          f'sum by (cache) (rate({m.CACHE_REQUESTS}{{{POOL}, result="hit"}}'
                          f"[{RATE}]))",
                          f"sum by (cache) (rate({m.CACHE_REQUESTS}{_WORKERS}[{RATE}]))"),
                        "{{cache}}"),
                  ), width=12),
            Panel("Lookups by result", "Cache lookups per second by cache and result.", "ops", (
                q(f"sum by (cache, result) (rate({m.CACHE_REQUESTS}{_WORKERS}[{RATE}]))",
                  "{{cache}} {{result}}"),
            ), stacked=True, width=12),
        )),
    ),
)

_API = 'namespace=~"$namespace"'
"""The metrics API's series: its pods run in the operator's namespace (another job)."""

OPERATOR = Dashboard(
    uid="agentpool-operator",
    title="AgentPool / Operator",
    description="Health of the AgentPool operator and its metrics API: leader, reconciles, "
                "errors, durations, API writes, pools' conditions, autoscalers.",
    filters="operator",
    rows=(
        ("Availability", (
            Panel("Operator replicas and leader", "Operator replicas scraped, and how many "
                  "lead (exactly one should).", "short", (
                      q(f"count by (namespace, job) ({m.OPERATOR_LEADER}{{{OP}}})",
                        "replicas {{namespace}}/{{job}}"),
                      q(f"sum by (namespace, job) ({m.OPERATOR_LEADER}{{{OP}}})",
                        "leading {{namespace}}/{{job}}"),
                  ), width=8),
            Panel("Metrics API requests by code", "External metrics requests per second by "
                  "HTTP status code (503: a pool's queue could not be read).", "reqps", (
                      q(f"sum by (code) (rate({m.METRICS_API_REQUESTS}{{{_API}}}[{RATE}]))",
                        "{{code}}"),
                  ), stacked=True, width=8),
            Panel("Metrics API replicas", "Metrics API replicas scraped.", "short", (
                q(f"count by (namespace, job) ({m.METRICS_API_REQUESTS}{{{_API}, "
                  f'code="200"}})', "{{namespace}}/{{job}}"),
            ), width=8),
        )),
        ("Reconciles", (
            Panel("Reconciles by result", "Reconciles per second by result.", "ops", (
                q(f"sum by (result) (rate({m.OPERATOR_RECONCILES}{{{OP}}}[{RATE}]))",
                  "{{result}}"),
            ), stacked=True, width=8),
            Panel("Reconcile error ratio", "Share of reconciles that failed.", "percentunit", (
                q(ratio(f'sum (rate({m.OPERATOR_RECONCILES}{{{OP}, result="error"}}[{RATE}]))',
                        f"sum (rate({m.OPERATOR_RECONCILES}{{{OP}}}[{RATE}]))"), "errors"),
            ), width=8),
            Panel("Reconcile duration", "p50 / p95 / p99 of one reconcile.", "s", (
                q(quantile(0.5, m.OPERATOR_RECONCILE_DURATION, OP, RATE), "p50"),
                q(quantile(0.95, m.OPERATOR_RECONCILE_DURATION, OP, RATE), "p95"),
                q(quantile(0.99, m.OPERATOR_RECONCILE_DURATION, OP, RATE), "p99"),
            ), width=8),
        )),
        ("Pools", (
            Panel("AgentPools by condition", "Pools by condition and status, as last "
                  "reported.", "short", (
                      q(f"sum by (condition, status) ({m.OPERATOR_POOLS}{{{OP}}})",
                        "{{condition}}={{status}}"),
                  ), width=8),
            Panel("Degraded pools by reason", "Pools whose Degraded condition is True, by "
                  "reason (0: none).", "short", (
                      q(f"sum by (reason) ({m.OPERATOR_POOL_CONDITION}{{job=~\"$job\", "
                        f'condition="Degraded"}})', "{{reason}}"),
                  ), stacked=True, width=8),
            Panel("Autoscalers able to scale", "Per autoscaled pool, whether its HPA can read "
                  "its metric and scale (1) or not (0, with the HPA's reason).", "short", (
                      q(f"min by (namespace, agentpool, reason) "
                        f"({m.OPERATOR_AUTOSCALER_CONDITION}{{job=~\"$job\", "
                        f'condition="ScalingActive"}})', "{{namespace}}/{{agentpool}} "
                        "{{reason}}"),
                  ), width=8),
        )),
        ("Kubernetes API", (
            Panel("API writes", "Write requests to the Kubernetes API by verb and kind; flat "
                  "in a steady state.", "reqps", (
                      q(f"sum by (verb, kind) (rate({m.OPERATOR_API_WRITES}{{{OP}}}[{RATE}]))",
                        "{{verb}} {{kind}}"),
                  ), stacked=True, width=12),
            Panel("Work queue depth and watch", "Pools waiting to be reconciled, and 1 while "
                  "the watch lags (liveness fails).", "short", (
                      q(f"max ({m.OPERATOR_WORKQUEUE_DEPTH}{{{OP}}})", "queued"),
                      q(f"max ({m.OPERATOR_WATCH_STALLED}{{{OP}}})", "watch stalled"),
                  ), width=12),
        )),
    ),
)

DASHBOARDS: tuple[Dashboard, ...] = (OVERVIEW, DATABASE, EXTERNAL_APIS, CACHE, OPERATOR)


def variable_queries(dashboard: Dashboard) -> Sequence[str]:
    """The `label_values(...)` queries of the dashboard's query variables."""
    return [str(v.build().query) for v in _variables(dashboard.filters)
            if v.build().query and str(v.build().query).startswith("label_values")]
