"""The AgentPool alerting rules, as data: one `Alert` per rule, with its runbook.

Each alert compares *signals* (PromQL measuring one quantity per alerting group) with
thresholds. Keeping the signals apart lets the tests evaluate each against a real Prometheus
scraping the real runtime and operator (each must return data), while `promtool test rules`
(tests/data/promtool/) proves both sides of every threshold and `for` duration. `rules_file()`
renders the plain Prometheus rules file that `gen.py` writes into the chart, where the
PrometheusRule template embeds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentpool_tools.monitoring import catalogue as m
from agentpool_tools.monitoring.promql import POD_LABELS, POOL_LABELS, by

GROUP_NAME = "agentpool"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    """The full condition; returns one series per firing group (pool, pod or reason)."""
    signals: tuple[str, ...]
    """The measured quantities inside `expr`, without thresholds: the tests evaluate each
    against a Prometheus scraping the real runtime and operator, and each must return data."""
    for_: str
    severity: str
    summary: str
    description: str
    """Prometheus template text: may use {{ $labels.x }} and {{ $value }}."""
    runbook: str

    def rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook": self.runbook,
            },
        }


def above(signal: str, threshold: float | str, op: str = ">") -> str:
    bound = threshold if isinstance(threshold, str) else _number(threshold)
    return f"{signal}\n  {op} {bound}"


def both(left: str, right: str, on: tuple[str, ...]) -> str:
    return f"(\n  {left}\n)\nand on ({', '.join(on)})\n(\n  {right}\n)"


def either(left: str, right: str) -> str:
    return f"(\n  {left}\n)\nor\n(\n  {right}\n)"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _pool(labels: str = "{{ $labels.namespace }}/{{ $labels.agentpool }}") -> str:
    return f"AgentPool {labels}"


_POOL = by(*POOL_LABELS)
_POD = by(*POD_LABELS)

BACKLOG_THRESHOLD = 100
OLDEST_TASK_SECONDS = 600
ERROR_RATIO = 0.05
RESTARTS_PER_15M = 5
LEAK_GROWTH_PER_HOUR = 0.10
LEAK_GROWTH_PER_DAY = 0.20
MEMORY_QUOTA_RATIO = 0.80
LOAD_GROWTH_TOLERANCE = 1.10
DB_POOL_SATURATION = 0.9
PGBOUNCER_WAIT_SECONDS = 1

_BACKLOG = f"max {_POOL} ({m.QUEUE_BACKLOG})"

QUEUE_BACKLOG_HIGH = Alert(
    name="AgentPoolQueueBacklogHigh",
    expr=above(_BACKLOG, BACKLOG_THRESHOLD),
    signals=(_BACKLOG,),
    for_="5m", severity="warning",
    summary="AgentPool queue backlog is high.",
    description=(f"{_pool()} has {{{{ $value }}}} tasks queued or running (more than "
                 f"{BACKLOG_THRESHOLD} for 5 minutes)."),
    runbook=(
        "The pool takes work slower than it arrives. 1) `kubectl get agentpool -n <namespace> "
        "<pool>`: is it Ready, and at maxReplicas? If autoscaling is off or the pool is at "
        "maxReplicas, raise spec.maxReplicas (or spec.replicas). 2) Check the pool overview "
        "dashboard: a falling throughput with a rising error rate or task latency points at a "
        "slow dependency (database, external APIs dashboards), not at capacity. 3) Workers busy "
        "but throughput flat: tasks may hang until taskTimeoutSeconds; look at the longest "
        "running task and timeouts. 4) Is the HPA scaling? `kubectl describe hpa <pool>` shows "
        "whether the external metric agentpool_queue_backlog is available."
    ),
)

_OLDEST_WAITING = f"max {_POOL} ({m.QUEUE_OLDEST_WAITING})"
_SINCE_SUCCESS = f"time() - max {_POOL} ({m.LAST_SUCCESS})"

OLDEST_TASK_TOO_OLD = Alert(
    name="AgentPoolOldestTaskTooOld",
    # A task has waited too long for a worker, or tasks are held and none has finished for
    # as long (every worker stuck: nothing waits, yet nothing moves).
    expr=either(above(_OLDEST_WAITING, OLDEST_TASK_SECONDS),
                both(above(_SINCE_SUCCESS, OLDEST_TASK_SECONDS), above(_BACKLOG, 0),
                     POOL_LABELS)),
    signals=(_OLDEST_WAITING, _SINCE_SUCCESS, _BACKLOG),
    for_="5m", severity="warning",
    summary="AgentPool tasks wait too long before they run.",
    description=(f"Tasks of {_pool()} wait more than {OLDEST_TASK_SECONDS // 60} minutes "
                 "before a worker starts them, or none has finished for that long while the "
                 "queue holds work (value: {{ $value | humanizeDuration }})."),
    runbook=(
        "Tasks are not being picked up in time. 1) If the backlog is high too, follow "
        "AgentPoolQueueBacklogHigh. 2) If the backlog is small, the pool may have no ready "
        "worker: `kubectl get pods -l agentpool.dev/pool=<pool>` and the workers idle/busy "
        "panel; a memory breaker that stays open (AgentPoolMemoryBreakerOpen) stops workers "
        "from taking tasks. 3) Nothing finishes: every worker may be stuck in a hanging task "
        "(longest running task panel) until taskTimeoutSeconds. 4) Check that the pods read "
        "the stream the producers write to (spec.queue.stream and consumerGroup). 5) Retries "
        "parked for their backoff are not counted: only tasks no worker has taken."
    ),
)

_ERROR_RATIO = (
    f"sum {_POOL} (rate({m.TASKS_PROCESSED}{{outcome=~\"failure|timeout\"}}[5m]))\n"
    f"  / sum {_POOL} (rate({m.TASKS_PROCESSED}[5m]))"
)

TASK_ERROR_RATE_HIGH = Alert(
    name="AgentPoolTaskErrorRateHigh",
    expr=above(_ERROR_RATIO, ERROR_RATIO),
    signals=(_ERROR_RATIO,),
    for_="10m", severity="warning",
    summary="AgentPool tasks are failing.",
    description=(f"{{{{ $value | humanizePercentage }}}} of the task executions of {_pool()} "
                 f"failed or timed out over the last 5 minutes (threshold "
                 f"{ERROR_RATIO:.0%})."),
    runbook=(
        "1) Find the failing handler and the error: the pool overview dashboard splits "
        "outcomes; `kubectl logs -l agentpool.dev/pool=<pool> -c runtime` shows the exceptions "
        "(JSON logs, field `task_id`). 2) Timeouts: compare task latency p99 with "
        "spec.workers.taskTimeoutSeconds; slow external APIs or a saturated database "
        "(AgentPoolDatabasePoolSaturated) are the usual causes. 3) A recent rollout (new image "
        "or handler) that coincides with the rise: roll back the AgentPool's image. 4) Failed "
        "tasks are retried and then dead-lettered: inspect the dead-letter stream before "
        "replaying."
    ),
)

_RESTARTS = (f"sum by (namespace, agentpool, reason) "
             f"(increase({m.WORKER_RESTARTS}{{reason!=\"max_tasks\"}}[15m]))")

WORKERS_RESTARTING = Alert(
    name="AgentPoolWorkersRestartingOften",
    expr=above(_RESTARTS, RESTARTS_PER_15M),
    signals=(_RESTARTS,),
    for_="5m", severity="warning",
    summary="AgentPool worker processes restart often.",
    description=(f"Worker processes of {_pool()} were replaced {{{{ $value | humanize }}}} times "
                 f"in 15 minutes because of {{{{ $labels.reason }}}}."),
    runbook=(
        "The supervisor replaces a worker process when it crashes, hangs (heartbeat, timeout), "
        "exceeds its memory limit or fails to boot; planned recycling (max_tasks) is not "
        "counted. By reason: crash/boot_error - read the worker's traceback in the pod log; "
        "memory - raise spec.workers.maxMemoryPerWorker or fix the leak (see "
        "AgentPoolWorkerMemoryLeakSuspected); heartbeat/timeout - a handler blocks the event "
        "loop or exceeds taskTimeoutSeconds (use async I/O, or a sync handler); "
        "startup_timeout - warm-up (imports, model loading) is slower than allowed."
    ),
)

_MEMORY_GROWTH = (f"sum {_POD} (deriv({m.WORKER_USS}[1h])) * 3600\n"
                  f"  / sum {_POD} (avg_over_time({m.WORKER_USS}[1h]))")
_LOAD_RECENT = f"sum {_POD} (rate({m.TASKS_RECEIVED}[30m]))"
_LOAD_HOUR = f"sum {_POD} (rate({m.TASKS_RECEIVED}[1h]))"

MEMORY_LEAK_SUSPECTED = Alert(
    name="AgentPoolWorkerMemoryLeakSuspected",
    # Memory grows over the hour while the last half hour's task rate is not above the hour's.
    expr=both(above(_MEMORY_GROWTH, LEAK_GROWTH_PER_HOUR),
              above(_LOAD_RECENT, f"{_number(LOAD_GROWTH_TOLERANCE)} * {_LOAD_HOUR}", "<="),
              POD_LABELS),
    signals=(_MEMORY_GROWTH, _LOAD_RECENT, _LOAD_HOUR),
    for_="30m", severity="warning",
    summary="AgentPool worker memory grows while the load does not.",
    description=(f"Worker memory in pod {{{{ $labels.pod }}}} of {_pool()} grows by "
                 f"{{{{ $value | humanizePercentage }}}} per hour while the task rate is flat "
                 f"or falling: a memory leak is likely."),
    runbook=(
        "Worker memory (USS, summed over the pod's worker processes) has grown steadily for "
        "the last hour while the rate of tasks received did not grow. 1) Look at memory per "
        "worker on the pool overview dashboard: a sawtooth that resets on max_tasks recycling "
        "is a leak contained by recycling; a line that only rises ends in memory restarts. "
        "2) Mitigate: set spec.workers.maxTasksPerWorker so workers are recycled before they "
        "reach maxMemoryPerWorker. 3) Fix: module-level caches, growing lists or unclosed "
        "clients in the handler are the usual causes; compare heap snapshots of an old and a "
        "fresh worker."
    ),
)

# The seed's definition: about 20 % more memory over a day without more load. Slow leaks
# that the hourly alert above never sees (a 20 % day is under 1 % an hour).
_MEMORY_GROWTH_DAY = (f"sum {_POD} (deriv({m.WORKER_USS}[24h])) * 86400\n"
                      f"  / sum {_POD} (avg_over_time({m.WORKER_USS}[24h]))")
_LOAD_QUARTER_DAY = f"sum {_POD} (rate({m.TASKS_RECEIVED}[6h]))"
_LOAD_DAY = f"sum {_POD} (rate({m.TASKS_RECEIVED}[24h]))"
_A_DAY_AGO = f"sum {_POD} (avg_over_time({m.WORKER_USS}[1h] offset 23h))"

MEMORY_GROWING_OVER_A_DAY = Alert(
    name="AgentPoolWorkerMemoryGrowingOverADay",
    # Only pods that had workers a day ago: with less data the 24 h window would extrapolate
    # a young pod's warm-up into a daily trend.
    expr=both(both(above(_MEMORY_GROWTH_DAY, LEAK_GROWTH_PER_DAY),
                   above(_LOAD_QUARTER_DAY, f"{_number(LOAD_GROWTH_TOLERANCE)} * {_LOAD_DAY}",
                         "<="),
                   POD_LABELS),
              _A_DAY_AGO, POD_LABELS),
    signals=(_MEMORY_GROWTH_DAY, _LOAD_QUARTER_DAY, _LOAD_DAY),
    for_="1h", severity="warning",
    summary="AgentPool worker memory grew over the last day while the load did not.",
    description=(f"Worker memory in pod {{{{ $labels.pod }}}} of {_pool()} grows by "
                 f"{{{{ $value | humanizePercentage }}}} per day (threshold "
                 f"{LEAK_GROWTH_PER_DAY:.0%}) while the task rate of the last 6 hours is not "
                 "above the day's: a slow memory leak is likely."),
    runbook=(
        "Worker memory (USS, summed over the pod's worker processes) has grown by about a "
        "fifth or more over 24 hours at a load that did not grow: a leak too slow for "
        "AgentPoolWorkerMemoryLeakSuspected. 1) `kubectl describe agentpool <pool>`: "
        "WorkerMemoryReport events name the handler the growth came with, per recycled worker. "
        "2) To see the source lines, set spec.workers.tracemallocFrames (1 is enough; it slows "
        "allocation-heavy code, so only while you look) and let workers be recycled for their "
        "memory (spec.workers.maxMemoryPerWorker). 3) Meanwhile contain it with "
        "spec.workers.maxTasksPerWorker."
    ),
)

_MEMORY_USED = f"max {_POD} ({m.CONTAINER_MEMORY})"
_MEMORY_LIMIT = f"max {_POD} ({m.CONTAINER_MEMORY_LIMIT})"
_MEMORY_QUOTA = f"{_MEMORY_USED}\n  / {_MEMORY_LIMIT}"

MEMORY_NEAR_LIMIT = Alert(
    name="AgentPoolPodMemoryNearLimit",
    # A pod without a known limit reports 0: it is never near it.
    expr=both(above(_MEMORY_QUOTA, MEMORY_QUOTA_RATIO), above(_MEMORY_LIMIT, 0), POD_LABELS),
    signals=(_MEMORY_USED, _MEMORY_LIMIT),
    for_="15m", severity="warning",
    summary="AgentPool pod uses most of its memory limit.",
    description=(f"Pod {{{{ $labels.pod }}}} of {_pool()} uses {{{{ $value | "
                 f"humanizePercentage }}}} of its memory limit (threshold "
                 f"{MEMORY_QUOTA_RATIO:.0%}) for 15 minutes."),
    runbook=(
        "The pod's cgroup working set is above 80 % of its memory limit. Above 90 % the memory "
        "breaker stops intake (AgentPoolMemoryBreakerOpen), above 95 % the largest worker is "
        "killed, then the kernel kills the container. 1) Memory per worker on the pool "
        "overview dashboard: one worker growing is a leak (see "
        "AgentPoolWorkerMemoryGrowingOverADay and the pool's WorkerMemoryReport events); all "
        "of them high is the workload. 2) Raise spec.resources.limits.memory, or lower "
        "spec.workers.perPod or spec.workers.maxMemoryPerWorker."
    ),
)

_BREAKER = f"max {_POD} ({m.MEMORY_BREAKER_OPEN})"

MEMORY_BREAKER_OPEN = Alert(
    name="AgentPoolMemoryBreakerOpen",
    expr=above(_BREAKER, 0),
    signals=(_BREAKER,),
    for_="10m", severity="warning",
    summary="AgentPool pod stopped taking tasks because memory is short.",
    description=(f"The memory circuit breaker of pod {{{{ $labels.pod }}}} in {_pool()} has been "
                 "open for 10 minutes: its workers take no new tasks."),
    runbook=(
        "The pod's memory working set is near its limit, so the supervisor pauses task intake "
        "until memory is freed. Raise spec.resources.limits.memory, lower spec.workers.perPod "
        "or maxMemoryPerWorker, or look for a leak (AgentPoolWorkerMemoryLeakSuspected)."
    ),
)

_DB_UTILISATION = (f'sum {_POD} ({m.DB_CONNECTIONS}{{state="used"}})\n'
                   f"  / sum {_POD} ({m.DB_CONNECTIONS_MAX})")

DB_POOL_SATURATED = Alert(
    name="AgentPoolDatabasePoolSaturated",
    expr=above(_DB_UTILISATION, DB_POOL_SATURATION),
    signals=(_DB_UTILISATION,),
    for_="10m", severity="warning",
    summary="AgentPool database connection pools are saturated.",
    description=(f"Pod {{{{ $labels.pod }}}} of {_pool()} uses {{{{ $value | "
                 f"humanizePercentage }}}} of its database connections (threshold "
                 f"{DB_POOL_SATURATION:.0%}) for 10 minutes; tasks wait for connections."),
    runbook=(
        "Workers wait for a database connection. 1) The database dashboard shows whether "
        "every pod is saturated (the database or PgBouncer is the bottleneck) or a few (long "
        "transactions in some tasks). 2) Raise spec.database.pgbouncer.defaultPoolSize within "
        "spec.database.connectionBudget, or lower spec.workers.concurrency. 3) Look for "
        "long-running queries (`pg_stat_activity`) and transactions held across external API "
        "calls: transaction pooling only returns a connection at commit."
    ),
)

_PGB = 'database!="pgbouncer"'  # not the admin console's own pool
_PGB_WAITING = f"sum {_POD} ({m.PGBOUNCER_CLIENTS_WAITING}{{{_PGB}}})"
_PGB_MAXWAIT = f"max {_POD} ({m.PGBOUNCER_CLIENT_MAXWAIT}{{{_PGB}}})"

PGBOUNCER_CLIENTS_WAITING = Alert(
    name="AgentPoolPgBouncerClientsWaiting",
    # Waiting at every evaluation for 5 minutes, and the oldest waiter has waited longer than
    # a blip: transaction pooling queues briefly under any burst, which is its job.
    expr=both(above(_PGB_WAITING, 0), above(_PGB_MAXWAIT, PGBOUNCER_WAIT_SECONDS, ">="),
              POD_LABELS),
    signals=(_PGB_WAITING, _PGB_MAXWAIT),
    for_="5m", severity="warning",
    summary="AgentPool workers wait for PgBouncer server connections.",
    description=(f"{{{{ $value }}}} client connection(s) of pod {{{{ $labels.pod }}}} in "
                 f"{_pool()} have been waiting for a PgBouncer server connection for 5 "
                 "minutes: the pod's PgBouncer pool is too small for its workers, or the "
                 "database is slow."),
    runbook=(
        "Every server connection of the pod's PgBouncer pool is busy, so workers' queries "
        "queue inside PgBouncer. 1) The database dashboard's PgBouncer row: saturation at "
        "100 % with short transactions means the pool is too small; raise "
        "spec.database.pgbouncer.defaultPoolSize (maxReplicas x defaultPoolSize must fit "
        "spec.database.connectionBudget) or lower spec.workers.concurrency. 2) Saturated but "
        "few transactions: long transactions hold the connections; look for slow queries "
        "(`pg_stat_activity`) and transactions held across external API calls. 3) Active "
        "connections below the pool size while clients wait: the database refuses or is slow "
        "to accept connections (max_connections, authentication); check the pgbouncer "
        "container's log."
    ),
)

_NOT_READY = (f"sum by (namespace, job, status) "
              f'({m.OPERATOR_POOLS}{{condition="Ready", status!="True"}})')

POOL_NOT_READY = Alert(
    name="AgentPoolNotReady",
    expr=above(_NOT_READY, 0),
    # With every pool Ready the filtered series is empty; the unfiltered one must have data.
    signals=(f'sum by (namespace, job, status) ({m.OPERATOR_POOLS}{{condition="Ready"}})',),
    for_="10m", severity="warning",
    summary="AgentPools are not Ready.",
    description=("{{ $value }} AgentPool(s) reconciled by the operator in "
                 "{{ $labels.namespace }} have been Ready={{ $labels.status }} for 10 minutes."),
    runbook=(
        "`kubectl get agentpools -A -o wide` lists the pools; the REASON column says why. "
        "`kubectl describe agentpool <pool>` shows the Degraded condition and the events. "
        "SecretMissing / InvalidDatabaseDSN: create or fix the referenced Secret. "
        "CrashLooping / PodCreationFailed: `kubectl describe pod` for the image, quota or "
        "admission error. RolloutStuck: the new pods do not become ready; check the runtime's "
        "/readyz detail (Redis reachable, schema present). ApplyFailed: the operator's log "
        "names the rejected object."
    ),
)

_RECONCILE_ERRORS = (f"sum by (namespace, job) "
                     f"(increase({m.OPERATOR_RECONCILES}{{result=\"error\"}}[10m]))")

OPERATOR_RECONCILE_ERRORS = Alert(
    name="AgentPoolOperatorReconcileErrors",
    expr=above(_RECONCILE_ERRORS, 0),
    signals=(_RECONCILE_ERRORS,),
    for_="15m", severity="warning",
    summary="The AgentPool operator keeps failing to reconcile.",
    description=("The AgentPool operator in {{ $labels.namespace }} has failed reconciles "
                 "for 15 minutes ({{ $value | humanize }} in the last 10 minutes)."),
    runbook=(
        "Reconcile errors are retried with backoff, so a persistent rate means a pool cannot "
        "converge. 1) The operator's JSON log names each failing request (`kubectl logs "
        "deploy/<release>-agentpool-operator`). 2) 403 Forbidden: the operator's RBAC lacks a "
        "verb or resource (a namespaced install watches only operator.watchNamespaces). 3) 422 "
        "Invalid or an admission webhook denial: a policy rejects the pool's children; the "
        "AgentPool's Degraded condition (ApplyFailed) quotes the message. 4) Quota exceeded: "
        "raise the namespace's ResourceQuota or lower the pool's size."
    ),
)

_STALLED = f"max by (namespace, job) ({m.OPERATOR_WATCH_STALLED})"

OPERATOR_WATCH_STALLED = Alert(
    name="AgentPoolOperatorWatchStalled",
    expr=above(_STALLED, 0),
    signals=(_STALLED,),
    for_="5m", severity="warning",
    summary="The AgentPool operator's watch has stalled.",
    description=("The AgentPool operator in {{ $labels.namespace }} has not seen changes the "
                 "API server reports for 5 minutes."),
    runbook=(
        "The operator compares its watch with a periodic list; a lagging watch fails /healthz "
        "so the kubelet restarts the operator. If this persists, the restart did not help: "
        "check the API server's health, the network path from the operator's pod, and the "
        "operator's log for watch errors."
    ),
)

ALERTS: tuple[Alert, ...] = (
    QUEUE_BACKLOG_HIGH,
    OLDEST_TASK_TOO_OLD,
    TASK_ERROR_RATE_HIGH,
    WORKERS_RESTARTING,
    MEMORY_LEAK_SUSPECTED,
    MEMORY_GROWING_OVER_A_DAY,
    MEMORY_NEAR_LIMIT,
    MEMORY_BREAKER_OPEN,
    DB_POOL_SATURATED,
    PGBOUNCER_CLIENTS_WAITING,
    POOL_NOT_READY,
    OPERATOR_RECONCILE_ERRORS,
    OPERATOR_WATCH_STALLED,
)


def rules_file() -> dict[str, Any]:
    """The plain Prometheus rules file (what promtool reads and the PrometheusRule embeds)."""
    return {"groups": [{"name": GROUP_NAME, "rules": [alert.rule() for alert in ALERTS]}]}
