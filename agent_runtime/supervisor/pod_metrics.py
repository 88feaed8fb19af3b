"""The pod's single Prometheus registry, owned by the supervisor.

Workers report task events and metric deltas over their pipe (`agent_runtime.ipc`,
`worker/stats.py`); the supervisor turns them into the series below, which `health.py` serves on
`/metrics`. Names follow the project's catalogue (docs: monitoring notes, section 1.5):
`agentpool_` prefix, base units, `_total` counters, closed label sets. The pool name is not a
label here: it comes from the pod's target labels at scrape time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.openmetrics import exposition as openmetrics

from agent_runtime.contract import BudgetKeyConfig
from agent_runtime.ipc.messages import EXEMPLAR_LABEL, MetricDelta

TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
EXTERNAL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)

OUTCOMES = ("success", "failure", "timeout", "cancelled")
WORKER_STATES = ("starting", "idle", "busy", "draining", "unhealthy")
RESTART_REASONS = ("crash", "timeout", "heartbeat", "memory", "max_tasks", "unhealthy",
                   "boot_error", "startup_timeout")
DEAD_LETTER_REASONS = ("malformed", "unknown_handler", "max_deliveries", "permanent_error",
                       "retries_exhausted")


class TaskSeries:
    """One handler's task series, labelled once (see `RuntimeMetrics._series`)."""

    def __init__(self, metrics: RuntimeMetrics, task_type: str) -> None:
        self._metrics = metrics
        self._task_type = task_type
        self.received = metrics.received.labels(task_type)
        self.retries = metrics.retries.labels(task_type)
        self.queue_duration = metrics.queue_duration.labels(task_type)
        self._by_outcome: dict[str, tuple[Any, Any]] = {}

    def by_outcome(self, outcome: str) -> tuple[Any, Any]:
        """The (processed counter, duration histogram) children of one outcome."""
        children = self._by_outcome.get(outcome)
        if children is None:
            metrics, task_type = self._metrics, self._task_type
            children = self._by_outcome[outcome] = (
                metrics.processed.labels(task_type, outcome),
                metrics.task_duration.labels(task_type, outcome))
        return children

BUDGET_OUTCOMES = ("granted", "waited", "timed_out")
BUDGET_LIMITS = ("requests_per_second", "requests_per_minute", "tokens_per_minute",
                 "concurrent_requests")


class RuntimeMetrics:
    def __init__(self, task_types: Iterable[str],
                 budgets: Iterable[BudgetKeyConfig] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._task_series: dict[str, TaskSeries] = {}
        r = self.registry
        self.received = Counter("agentpool_tasks_received", "Tasks a worker started executing.",
                                ["task_type"], registry=r)
        self.processed = Counter("agentpool_tasks_processed",
                                 "Task executions finished, by outcome.",
                                 ["task_type", "outcome"], registry=r)
        self.retries = Counter("agentpool_task_retries", "Task executions scheduled for retry.",
                               ["task_type"], registry=r)
        self.dead_lettered = Counter("agentpool_tasks_dead_lettered",
                                     "Tasks moved to the dead-letter stream, by reason.",
                                     ["task_type", "reason"], registry=r)
        self.queue_duration = Histogram("agentpool_task_queue_duration_seconds",
                                        "Time from submission to the start of execution.",
                                        ["task_type"], buckets=TASK_BUCKETS, registry=r)
        self.task_duration = Histogram("agentpool_task_duration_seconds",
                                       "Execution time of tasks.", ["task_type", "outcome"],
                                       buckets=TASK_BUCKETS, registry=r)
        self.workers = Gauge("agentpool_workers", "Worker processes by state.", ["state"],
                             registry=r)
        self.workers_max = Gauge("agentpool_workers_max", "Configured worker processes.",
                                 registry=r)
        self.restarts = Counter("agentpool_worker_restarts",
                                "Worker processes replaced inside the pod, by reason.",
                                ["reason"], registry=r)
        self.longest_running = Gauge("agentpool_worker_longest_running_task_seconds",
                                     "Age of the oldest running task.", registry=r)
        self.last_success = Gauge("agentpool_task_last_success_timestamp_seconds",
                                  "Unix time of the last successful task.", registry=r)
        # The supervisor's own process_* series (CPU, resident memory, open files).
        ProcessCollector(registry=r)
        self.worker_cpu = Counter("agentpool_worker_cpu_seconds",
                                  "CPU time (user + system) of each worker slot's processes, "
                                  "the slot's successive workers together.", ["slot"],
                                  registry=r)
        self.pod_cpu = Counter("agentpool_pod_cpu_seconds",
                               "CPU time (user + system) of the pod's runtime processes: the "
                               "supervisor and every worker.", registry=r)
        self.worker_uss = Gauge("agentpool_worker_uss_bytes",
                                "Unique memory (USS) of each worker slot's process.", ["slot"],
                                registry=r)
        self.container_memory = Gauge("agentpool_container_memory_working_set_bytes",
                                      "The pod's cgroup memory working set.", registry=r)
        self.container_limit = Gauge("agentpool_container_memory_limit_bytes",
                                     "The pod's memory limit used by the circuit breaker.",
                                     registry=r)
        self.breaker_open = Gauge("agentpool_memory_breaker_open",
                                  "1 while workers take no new tasks because memory is short.",
                                  registry=r)
        self.db_connections = Gauge("agentpool_db_pool_connections",
                                    "asyncpg pool connections summed over workers.", ["state"],
                                    registry=r)
        self.db_connections_max = Gauge("agentpool_db_pool_connections_max",
                                        "asyncpg pool capacity summed over workers.", registry=r)
        self.external = Histogram("agentpool_external_request_duration_seconds",
                                  "Latency of calls to external APIs.",
                                  ["api", "operation", "outcome"], buckets=EXTERNAL_BUCKETS,
                                  registry=r)
        self.cache = Counter("agentpool_cache_requests", "Cache lookups by result: hit, miss, "
                             "coalesced (a miss that joined another task's load).",
                             ["cache", "result"], registry=r)
        self.cache_loads = Counter("agentpool_cache_loads", "Cache loader calls by outcome.",
                                   ["cache", "outcome"], registry=r)
        self.cache_load_duration = Histogram("agentpool_cache_load_duration_seconds",
                                             "Latency of cache loader calls.", ["cache"],
                                             buckets=EXTERNAL_BUCKETS, registry=r)
        self.cache_writes = Counter("agentpool_cache_writes", "Cache write-through writes by "
                                    "outcome.", ["cache", "outcome"], registry=r)
        # Budgets: per budget key, what this pod's tasks asked for and got. Summed over pods,
        # the permits and tokens show how much of the key's limit the fleet uses.
        budget = ["budget", "key"]
        self.budget_permits = Counter("agentpool_budget_permits",
                                      "Budget permits: granted at once, granted after waiting, "
                                      "or timed out.", [*budget, "outcome"], registry=r)
        self.budget_wait = Histogram("agentpool_budget_wait_seconds",
                                     "Time tasks waited for a budget permit (waits only).",
                                     budget, buckets=EXTERNAL_BUCKETS, registry=r)
        self.budget_tokens = Counter("agentpool_budget_tokens",
                                     "Tokens used under a budget key (settled counts).", budget,
                                     registry=r)
        self.budget_throttled = Counter("agentpool_budget_throttled",
                                        "429 answers received from the provider.", budget,
                                        registry=r)
        self.budget_limit = Gauge("agentpool_budget_limit",
                                  "A budget key's limit, per kind (requests_per_second, "
                                  "requests_per_minute, tokens_per_minute, "
                                  "concurrent_requests).", [*budget, "limit"], registry=r)
        # Worker-side deltas may only touch these (closed list, nothing from the queue).
        self._from_workers: dict[str, Any] = {
            "agentpool_external_request_duration_seconds": self.external,
            "agentpool_cache_requests_total": self.cache,
            "agentpool_cache_loads_total": self.cache_loads,
            "agentpool_cache_load_duration_seconds": self.cache_load_duration,
            "agentpool_cache_writes_total": self.cache_writes,
            "agentpool_budget_permits_total": self.budget_permits,
            "agentpool_budget_wait_seconds": self.budget_wait,
            "agentpool_budget_tokens_total": self.budget_tokens,
            "agentpool_budget_throttled_total": self.budget_throttled,
        }
        self._preinitialise(task_types)
        self._declare_budgets(budgets)

    def _preinitialise(self, task_types: Iterable[str]) -> None:
        # Series exist at 0 from the start, so rate() and alerts see the first increment.
        for task_type in task_types:
            self.received.labels(task_type)
            self.retries.labels(task_type)
            self.queue_duration.labels(task_type)
            for outcome in OUTCOMES:
                self.processed.labels(task_type, outcome)
        for state in WORKER_STATES:
            self.workers.labels(state)
        for reason in RESTART_REASONS:
            self.restarts.labels(reason)
        for state in ("idle", "used"):
            self.db_connections.labels(state)

    def _declare_budgets(self, budgets: Iterable[BudgetKeyConfig]) -> None:
        for key in budgets:
            labels = (key.budget, key.name)
            for outcome in BUDGET_OUTCOMES:
                self.budget_permits.labels(*labels, outcome)
            self.budget_tokens.labels(*labels)
            self.budget_throttled.labels(*labels)
            for limit in BUDGET_LIMITS:
                value = getattr(key, limit)
                if value is not None:
                    self.budget_limit.labels(*labels, limit).set(value)

    def task_started(self, task_type: str, queue_wait: float, trace: str = "") -> None:
        series = self._series(task_type)
        series.received.inc()
        series.queue_duration.observe(max(queue_wait, 0.0), exemplar(trace))

    def task_finished(self, task_type: str, outcome: str, duration: float, retried: bool,
                      dead_reason: str | None, finished_at: float, trace: str = "") -> None:
        series = self._series(task_type)
        processed, durations = series.by_outcome(outcome)
        processed.inc()
        durations.observe(max(duration, 0.0), exemplar(trace))
        if retried:
            series.retries.inc()
        if dead_reason:
            self.dead_lettered.labels(task_type, dead_reason).inc()
        if outcome == "success":
            self.last_success.set(finished_at)

    def _series(self, task_type: str) -> TaskSeries:
        # `labels()` validates and hashes its arguments on every call: a quarter of the
        # supervisor's CPU under load went there. Handlers are few and fixed per pod.
        series = self._task_series.get(task_type)
        if series is None:
            series = self._task_series[task_type] = TaskSeries(self, task_type)
        return series

    def apply_worker_stats(self, deltas: Iterable[MetricDelta]) -> None:
        for delta in deltas:
            try:
                metric = self._from_workers[delta.name]
                if delta.kind == "c":
                    metric.labels(**delta.labels).inc(delta.value)
                elif delta.kind == "h":
                    labels = dict(delta.labels)
                    trace = labels.pop(EXEMPLAR_LABEL, "")
                    metric.labels(**labels).observe(delta.value, exemplar(trace))
            except (KeyError, ValueError, TypeError):
                continue  # a delta for another series or labels must not break the supervisor

    def set_worker_states(self, counts: Mapping[str, int]) -> None:
        for state in WORKER_STATES:
            self.workers.labels(state).set(counts.get(state, 0))

    def render(self, open_metrics: bool = False) -> bytes:
        """Prometheus text, or OpenMetrics (the only format that carries exemplars) without
        its closing `# EOF` line (`health.py` adds it after the series read elsewhere)."""
        if not open_metrics:
            return bytes(generate_latest(self.registry))
        text = openmetrics.generate_latest(self.registry)  # type: ignore[no-untyped-call]
        return bytes(text).removesuffix(b"# EOF\n")


def exemplar(trace: str) -> dict[str, str] | None:
    """The exemplar of an observation made in a traced task: its trace id. prometheus_client
    keeps the latest per bucket, so a slow bucket links to a trace that landed in it."""
    return {"trace_id": trace} if trace else None
