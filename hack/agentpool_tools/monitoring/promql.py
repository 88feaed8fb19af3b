"""PromQL building blocks shared by the dashboards and the alerts (pure strings).

Series labels follow the chart's scrape configuration: every runtime series carries
`namespace`, `agentpool` (the pod label `agentpool.dev/pool`, relabelled by the chart's
PodMonitor) and `pod`; the operator's series carry the labels of its own scrape target. The
dashboards narrow series with the Grafana variables `$namespace` and `$agentpool`; the alerts
group by the same labels, so an alert names the pool it is about.

`concrete()` turns a dashboard query into one Prometheus itself accepts (Grafana substitutes
its variables before sending a query), which is how the tests evaluate every panel for real.
"""

from __future__ import annotations

import re

POOL_LABELS = ("namespace", "agentpool")
"""Labels that identify one AgentPool in every runtime series."""
POD_LABELS = (*POOL_LABELS, "pod")

POOL = 'namespace=~"$namespace", agentpool=~"$agentpool"'
"""The dashboards' selector for the pools chosen in the variables."""
OPERATOR = 'namespace=~"$namespace", job=~"$job"'
"""The operator dashboard's selector for the operator's own series: the operators chosen in
its variables (its pods' namespace and scrape job, i.e. the release)."""
RATE = "$__rate_interval"

# What Grafana would substitute, for evaluating dashboard queries directly in Prometheus.
_GRAFANA_DEFAULTS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "$namespace": ".*",
    "$agentpool": ".*",
    "$job": ".*",
}
_VARIABLE = re.compile(r"\$\{?(__)?[A-Za-z_]+\}?")


def by(*labels: str) -> str:
    return f"by ({', '.join(labels)})"


def ratio(numerator: str, denominator: str) -> str:
    """numerator / denominator, each on its own line (dashboards and rules stay readable)."""
    return f"(\n  {numerator}\n)\n/\n(\n  {denominator}\n)"


def quantile(q: float, metric: str, selector: str, window: str, *labels: str) -> str:
    """The q-quantile of a classic histogram over `window`, aggregated by `labels`."""
    grouping = by(*labels, "le")
    matchers = f"{{{selector}}}" if selector else ""
    return (f"histogram_quantile({q}, sum {grouping} "
            f"(rate({metric}_bucket{matchers}[{window}])))")


def concrete(expr: str, overrides: dict[str, str] | None = None) -> str:
    """`expr` with the Grafana variables replaced by what Grafana would send (all pools)."""
    values = {**_GRAFANA_DEFAULTS, **(overrides or {})}
    # Longest names first, so `$__rate_interval` wins over a hypothetical `$__rate`.
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    leftover = _VARIABLE.search(expr)
    if leftover:
        raise ValueError(f"unknown Grafana variable {leftover.group(0)} in {expr!r}")
    return expr
