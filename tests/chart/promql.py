"""PromQL helpers for the chart tests: every expression the monitoring code ships, and the
metric names an expression reads (parsed with promql-parser, not guessed with a regex)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import promql_parser
from agentpool_tools.monitoring.alerts import ALERTS
from agentpool_tools.monitoring.catalogue import PGBOUNCER_EXPORTER_COLUMNS
from agentpool_tools.monitoring.dashboards import DASHBOARDS, variable_queries
from agentpool_tools.monitoring.promql import concrete
from prometheus_client import CollectorRegistry

from agentpool_operator.metrics_api import adapter_rules

# PgBouncer's metrics (pgbouncer_exporter's names) are served by the runtime of pods with a
# PgBouncer sidecar (agent_runtime/supervisor/pgbouncer_metrics.py). The runtime the live test
# loads runs without one, so expressions reading them must be valid but cannot have data there;
# the real-pod test (tests/e2e/test_real_pods.py) scrapes them from a real pod, and
# tests/integration/test_pgbouncer_stats_config.py reads them from a real PgBouncer.
EXPORTER_ONLY = frozenset(PGBOUNCER_EXPORTER_COLUMNS)


def needs_data(expr: str) -> bool:
    """Whether the live test can demand data: the expression reads no exporter metric."""
    return not (metric_names(expr) & EXPORTER_ONLY)


@dataclass(frozen=True)
class Expression:
    where: str
    """Which dashboard panel or alert it belongs to, for failure messages."""
    expr: str
    """What Prometheus receives (Grafana variables substituted)."""
    must_have_data: bool


def adapter_expressions(namespace: str | None, pools: list[str]) -> Iterator[Expression]:
    """The prometheus-adapter rule for the HPA metric: its series query, and its metrics query
    as the adapter renders it for an HPA selecting `pools`."""
    for rule in adapter_rules.EXTERNAL_RULES:
        yield Expression("prometheus-adapter seriesQuery", rule["seriesQuery"], True)
    yield Expression("prometheus-adapter metricsQuery",
                     adapter_rules.example_query(namespace, pools), True)


def shipped_expressions() -> Iterator[Expression]:
    """Every dashboard query, every alert expression and every alert signal, and the HPA
    metric's prometheus-adapter rule."""
    for dashboard in DASHBOARDS:
        for panel in dashboard.panels():
            for query in panel.queries:
                expr = concrete(query.expr)
                yield Expression(f"{dashboard.uid} / {panel.title}", expr, needs_data(expr))
        for variable in variable_queries(dashboard):
            # label_values(<selector>, label): Grafana asks for the selector's series.
            selector = variable.removeprefix("label_values(").rsplit(",", 1)[0]
            yield Expression(f"{dashboard.uid} / variable {variable}", concrete(selector), True)
    for alert in ALERTS:
        # A full alert expression is empty unless it fires: it must only be valid.
        yield Expression(f"alert {alert.name}", alert.expr, False)
        for signal in alert.signals:
            yield Expression(f"alert {alert.name} signal", signal, needs_data(signal))
    yield from adapter_expressions(None, [".+"])


def metric_names(expr: str) -> set[str]:
    """The metric names the expression selects."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        kind = type(node).__name__
        if kind == "VectorSelector":
            if node.name:
                names.add(node.name)
            return
        if kind == "MatrixSelector":
            walk(node.vector_selector)
            return
        for attribute in ("lhs", "rhs", "expr", "param"):
            child = getattr(node, attribute, None)
            if child is not None and not isinstance(child, str | int | float):
                walk(child)
        for arg in getattr(node, "args", None) or []:
            walk(arg)

    walk(promql_parser.parse(expr))
    return names


_SUFFIXES = {"counter": ("_total", "_created"),
             "histogram": ("_bucket", "_sum", "_count", "_created"),
             "summary": ("_sum", "_count", "_created"),
             "gauge": ("",), "unknown": ("",), "info": ("_info",)}


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry can expose, whether or not a sample exists yet."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names
