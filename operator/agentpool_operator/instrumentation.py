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
ConditionDetails = Mapping[tuple[str, str], Mapping[str, tuple[str, str]]]
"""Per pool: condition type -> (status, reason)."""


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


class _PerPoolCollector(Collector):
    """One series per pool and condition: 1 while it is True, 0 while False, labelled with its
    reason. `namespace` and `agentpool` name the pool (scrape with honorLabels)."""

    def __init__(self, name: str, documentation: str,
                 source: Callable[[], ConditionDetails]) -> None:
        self._name = name
        self._documentation = documentation
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._documentation,
                                   labels=["namespace", "agentpool", "condition", "reason"])
        for (namespace, pool), conditions in sorted(self._source().items()):
            for type_, (status, reason) in sorted(conditions.items()):
                family.add_metric([namespace, pool, type_, reason],
                                  1.0 if status == "True" else 0.0)
        yield family


class OperatorMetrics:
    """Counters and histograms the reconciler and the API adapter update."""

    def __init__(self, pool_conditions: Callable[[], PoolConditions],
                 pool_details: Callable[[], ConditionDetails] = dict,
                 autoscalers: Callable[[], ConditionDetails] = dict) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "agentpool_operator_reconciles_total",
            "Reconciles of AgentPools by result (success, error, invalid, waiting).",
            ["result"], registry=self.registry,
        )
        self.resyncs = Counter(
            "agentpool_operator_resyncs_total",
            "Periodic resyncs completed (each lists the pools and queues every one).",
            registry=self.registry,
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
        self.certificate_checks = Counter(
            "agentpool_operator_certificate_checks_total",
            "Checks of the metrics API's certificates (operator-kept) by result: ok (nothing "
            "to do), written (issued, renewed or repaired), failed.", ["result"],
            registry=self.registry,
        )
        for result in ("ok", "written", "failed"):
            self.certificate_checks.labels(result)
        self.leader = Gauge(
            "agentpool_operator_leader",
            "1 while this replica holds the leader lease and reconciles (always 1 without "
            "leader election); 0 while it stands by.", registry=self.registry,
        )
        self.registry.register(_PoolsCollector(pool_conditions))
        self.registry.register(_PerPoolCollector(
            "agentpool_operator_pool_condition",
            "Each AgentPool's Ready, Progressing and Degraded conditions as last reported by "
            "this operator: 1 True, 0 False, with the condition's reason.", pool_details))
        self.registry.register(_PerPoolCollector(
            "agentpool_operator_autoscaler_condition",
            "The conditions of each AgentPool's HorizontalPodAutoscaler (AbleToScale, "
            "ScalingActive, ScalingLimited) as the HPA controller reports them: 1 True, "
            "0 False. ScalingActive 0 with FailedGetExternalMetric: it cannot compute "
            "replicas and keeps the pool's size.", autoscalers))

    def count_write(self, verb: str, kind: str) -> None:
        self.api_writes.labels(verb=verb, kind=kind).inc()
