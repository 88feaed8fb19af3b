"""The metrics API server's own Prometheus series, served on its plain-HTTP `/metrics` port.

`gauges.py` sets the per-pool queue gauges on its period; they are what the chart's
prometheus-adapter rules (`adapter_rules.py`) and dashboards read. Labels `namespace` and
`agentpool` name the pool, so scrape this target with `honorLabels: true` (else Prometheus
renames `namespace` to `exported_namespace`). `server.py` counts requests by HTTP code.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

POOL_LABELS = ("namespace", "agentpool")


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.backlog = Gauge("agentpool_queue_backlog",
                             "Tasks a pool still has to finish: waiting plus in flight.",
                             POOL_LABELS, registry=r)
        self.waiting = Gauge("agentpool_queue_waiting_tasks",
                             "Tasks not yet delivered to a worker (including parked retries).",
                             POOL_LABELS, registry=r)
        self.in_flight = Gauge("agentpool_queue_in_flight_tasks",
                               "Tasks delivered to a worker and not yet acknowledged.",
                               POOL_LABELS, registry=r)
        self.oldest_waiting = Gauge(
            "agentpool_queue_oldest_waiting_task_age_seconds",
            "How long the oldest task not yet delivered to a worker has waited (0 when none; "
            "parked retries excluded).", POOL_LABELS, registry=r)
        self.budget_waiting = Gauge(
            "agentpool_queue_budget_waiting_tasks",
            "Tasks waiting for a budget permit: while above 0 the pool's autoscaling value is "
            "capped at what its live pods cover.", POOL_LABELS, registry=r)
        self.requests = Counter("agentpool_metrics_api_requests",
                                "External metrics API requests by HTTP status code.",
                                ["code"], registry=r)
        self.queue_errors = Counter("agentpool_metrics_api_queue_errors",
                                    "Failed reads of a pool's queue (Redis or its Secret).",
                                    registry=r)
        for code in ("200", "401", "403", "503"):
            self.requests.labels(code)
        self._pools: set[tuple[str, str]] = set()

    def observe_pool(self, namespace: str, pool: str, waiting: int, in_flight: int,
                     oldest_waiting_seconds: float = 0.0, budget_waiting: int = 0) -> None:
        self.backlog.labels(namespace, pool).set(waiting + in_flight)
        self.waiting.labels(namespace, pool).set(waiting)
        self.in_flight.labels(namespace, pool).set(in_flight)
        self.oldest_waiting.labels(namespace, pool).set(oldest_waiting_seconds)
        self.budget_waiting.labels(namespace, pool).set(budget_waiting)
        self._pools.add((namespace, pool))

    def keep_only(self, pools: set[tuple[str, str]]) -> None:
        """Drop the series of pools that are gone, so a deleted pool does not linger."""
        for key in self._pools - pools:
            for gauge in (self.backlog, self.waiting, self.in_flight, self.oldest_waiting,
                          self.budget_waiting):
                gauge.remove(*key)
        self._pools &= pools
