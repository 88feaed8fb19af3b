"""The operator's own Prometheus metrics, in one registry served on /metrics.

Names follow Prometheus conventions (`agentpool_operator_` prefix, base units, `_total`
counters). `pools` is computed at scrape time from the conditions the reconciler last wrote, so
it never drifts from reality when pools are deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PoolConditions = Mapping[tuple[str, str], Mapping[str, str]]


class _PoolsCollector(Collector):
    def __init__(self, source: Callable[[], PoolConditions]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "agentpool_operator_pools",
            "AgentPools by condition type and status, as last reported by this operator.",
            labels=["condition", "status"],
        )
        counts: dict[tuple[str, str], int] = {}
        for conditions in self._source().values():
            for type_, status in conditions.items():
                counts[(type_, status)] = counts.get((type_, status), 0) + 1
        for (type_, status), count in sorted(counts.items()):
            family.add_metric([type_, status], count)
        yield family


class OperatorMetrics:
    """Counters and histograms the reconciler and the API adapter update."""

    def __init__(self, pool_conditions: Callable[[], PoolConditions]) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "agentpool_operator_reconciles_total",
            "Reconciles of AgentPools by result (success, error, invalid, waiting).",
            ["result"], registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "agentpool_operator_reconcile_duration_seconds",
            "Time one reconcile of one AgentPool took.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.api_writes = Counter(
            "agentpool_operator_api_writes_total",
            "Write requests sent to the Kubernetes API by verb and kind; flat in steady state.",
            ["verb", "kind"], registry=self.registry,
        )
        self.queue_depth = Gauge(
            "agentpool_operator_workqueue_depth",
            "AgentPools waiting to be reconciled.", registry=self.registry,
        )
        self.watch_stalled = Gauge(
            "agentpool_operator_watch_stalled",
            "1 while the AgentPool watch lags behind the API server (liveness fails).",
            registry=self.registry,
        )
        self.leader = Gauge(
            "agentpool_operator_leader",
            "1 while this replica holds the leader lease and reconciles (always 1 without "
            "leader election); 0 while it stands by.", registry=self.registry,
        )
        self.registry.register(_PoolsCollector(pool_conditions))

    def count_write(self, verb: str, kind: str) -> None:
        self.api_writes.labels(verb=verb, kind=kind).inc()
