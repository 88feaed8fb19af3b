"""The AgentPool alerting rules, as data: one `Alert` per rule, with its runbook.

Each alert compares *signals* (PromQL measuring one quantity per alerting group) with
thresholds. Keeping the signals apart lets the tests evaluate each against a real Prometheus
scraping the real runtime and operator (each must return data), while `promtool test rules`
(tests/data/promtool/) proves both sides of every threshold and `for` duration. `rules_file()`
renders the plain Prometheus rules file that `gen.py` writes into the chart, where the
PrometheusRule template embeds it; `runbook_markdown()` renders each alert's runbook page
(`docs/runbooks/<alert>.md`), which its `runbook_url` annotation names (the
Prometheus-community convention).

Severity: `critical` where work is lost or the product itself stops serving (the operator or
the metrics API down or absent, tasks dead-lettered); `warning` for the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agentpool_tools.monitoring import catalogue as m
from agentpool_tools.monitoring.promql import POD_LABELS, POOL_LABELS, by

GROUP_NAME = "agentpool"
RUNBOOK_BASE_URL = "https://github.com/agentpool/agentpool/blob/main/docs/runbooks"
"""Where the runbooks (`docs/runbooks/` in the repository) are served; the chart's
`prometheusRule.runbookBaseUrl` replaces it (an internal mirror)."""
RUNBOOKS_DIR = "docs/runbooks"


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

    @property
    def runbook_url(self) -> str:
        return f"{RUNBOOK_BASE_URL}/{self.name}.md"

    def rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": self.runbook_url,
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

_RECONCILE_ERROR_RATIO = (
    f'sum by (namespace, job) (rate({m.OPERATOR_RECONCILES}{{result="error"}}[10m]))\n'
    f"  / sum by (namespace, job) (rate({m.OPERATOR_RECONCILES}[10m]))")
RECONCILE_ERROR_RATIO = 0.1

OPERATOR_RECONCILE_ERRORS = Alert(
    name="AgentPoolOperatorReconcileErrors",
    expr=above(_RECONCILE_ERROR_RATIO, RECONCILE_ERROR_RATIO),
    signals=(_RECONCILE_ERROR_RATIO,),
    for_="15m", severity="warning",
    summary="The AgentPool operator fails many of its reconciles.",
    description=("{{ $value | humanizePercentage }} of the reconciles of the AgentPool "
                 "operator {{ $labels.namespace }}/{{ $labels.job }} failed over the last 10 "
                 f"minutes, for 15 minutes (threshold {RECONCILE_ERROR_RATIO:.0%})."),
    runbook=(
        "Reconcile errors are retried with backoff; a pool that cannot converge on its own "
        "shows up as AgentPoolDegraded, so a high share of failures points at the operator or "
        "its environment. 1) The operator's JSON log names each failing request (`kubectl "
        "logs deploy/<release>-agentpool-operator`; only the leader reconciles: `kubectl get "
        "lease <release>-agentpool-operator -o jsonpath='{.spec.holderIdentity}'`). 2) 403 "
        "Forbidden: the operator's RBAC lacks a verb or resource (a namespaced install serves "
        "only operator.watchNamespaces). 3) 5xx, timeouts, throttling: the API server is "
        "overloaded or unreachable from the operator's pod. 4) 422 Invalid or an admission "
        "webhook denial on many pools: a policy rejects the children the operator renders; "
        "the pools' Degraded condition (ApplyFailed) quotes the message."
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


_DEAD_LETTERED = (f"sum by (namespace, agentpool, reason) "
                  f"(increase({m.TASKS_DEAD_LETTERED}[15m]))")

TASKS_DEAD_LETTERED = Alert(
    name="AgentPoolTasksDeadLettered",
    expr=above(_DEAD_LETTERED, 0),
    signals=(_DEAD_LETTERED,),
    for_="5m", severity="critical",
    summary="AgentPool tasks are being dead-lettered: their work is not done.",
    description=(f"{{{{ $value | humanize }}}} task(s) of {_pool()} went to the dead-letter "
                 "stream in the last 15 minutes ({{ $labels.reason }}): they will not run "
                 "again unless replayed."),
    runbook=(
        "A dead-lettered task is work the pool gave up on: its handler failed on every retry "
        "(retries_exhausted), raised a permanent error (permanent_error), had a payload or "
        "handler the workers cannot use (malformed, unknown_handler), or was delivered "
        "maxDeliveries times without finishing, e.g. because it kept killing its worker "
        "(max_deliveries). 1) Read the dead letters with their last "
        "error: the SDK's `TaskClient.dead_letters()`, or XREVRANGE on the pool's dead-letter "
        "stream (the `dead` key of its queue). 2) By reason: retries_exhausted - the handler or a "
        "dependency fails (AgentPoolTaskErrorRateHigh, the external APIs and database "
        "dashboards); permanent_error - the handler rejected the input; unknown_handler or "
        "malformed - producers submit tasks this pool's image cannot run (a rollout out of "
        "step with its producers); max_deliveries - the task crashes or hangs its worker, or "
        "its pod is OOM-killed (AgentPoolWorkersRestartingOften; the dead letter's last error "
        "names the signal). 3) Once the cause is fixed, replay the dead "
        "letters (submit their payloads again) and trim the stream."
    ),
)

_DEGRADED = (f"max by (namespace, agentpool, reason) "
             f'({m.OPERATOR_POOL_CONDITION}{{condition="Degraded"}})')

POOL_DEGRADED = Alert(
    name="AgentPoolDegraded",
    expr=above(_DEGRADED, 0),
    signals=(_DEGRADED,),
    for_="15m", severity="warning",
    summary="An AgentPool has been Degraded for 15 minutes.",
    description=(f"{_pool()} has been Degraded for 15 minutes: {{{{ $labels.reason }}}}."),
    runbook=(
        "The operator reports a pool it cannot bring to its desired state; the reason says "
        "why and `kubectl describe agentpool -n <namespace> <pool>` quotes the message. "
        "SecretMissing: create the Secret the spec references. InvalidDatabaseDSN: fix the DSN "
        "in the referenced Secret (the message names the offending part, never the password). "
        "InvalidSpec: the stored spec cannot be built (an object from an older, laxer CRD): "
        "edit the field the message names. ChildConflict: an object with a child's name "
        "exists and is not this pool's: rename or delete it. QueueConflict: an earlier pool "
        "in the namespace reads the same stream and consumer group: give this one its own. "
        "CrashLooping / PodCreationFailed: `kubectl describe pod` for the image, quota, "
        "PriorityClass or admission error. RolloutStuck: new pods do not become ready. "
        "ApplyFailed: the API server refused a child; the message quotes it."
    ),
)

_AUTOSCALER = (f"min by (namespace, agentpool, condition, reason) "
               f'({m.OPERATOR_AUTOSCALER_CONDITION}{{condition=~"AbleToScale|ScalingActive", '
               f'reason!="ScalingDisabled"}})')

AUTOSCALER_FAILING = Alert(
    name="AgentPoolAutoscalerFailing",
    expr=above(_AUTOSCALER, 1, "<"),
    signals=(_AUTOSCALER,),
    for_="10m", severity="warning",
    summary="An AgentPool's autoscaler cannot compute or apply a replica count.",
    description=(f"The HorizontalPodAutoscaler of {_pool()} has had {{{{ $labels.condition }}}}"
                 "=False ({{ $labels.reason }}) for 10 minutes: the pool keeps its current "
                 "size whatever its backlog."),
    runbook=(
        "The HPA controller cannot scale the pool; it keeps the current replica count, so a "
        "growing backlog is not met with more workers (and an idle pool is not shrunk). "
        "`kubectl describe hpa -n <namespace> <pool>` shows the event behind the reason. "
        "FailedGetExternalMetric: the external metric agentpool_queue_backlog is not served: "
        "is the APIService Available (`kubectl get apiservice "
        "v1beta1.external.metrics.k8s.io`), is the metrics API running "
        "(AgentPoolMetricsApiDown), can it read the pool's Redis (its log and "
        "AgentPoolMetricsApiErrors), and has the operator published the pool in the queue "
        "directory (it must serve the pool's namespace)? FailedGetScale / FailedUpdateScale: "
        "the controller cannot read or write the AgentPool's scale subresource (a deleted "
        "pool, or an admission policy)."
    ),
)

_BUDGET_WAITING = f"max {_POOL} ({m.QUEUE_BUDGET_WAITING})"

BUDGET_SATURATED = Alert(
    name="AgentPoolBudgetSaturated",
    expr=above(_BUDGET_WAITING, 0),
    signals=(_BUDGET_WAITING,),
    for_="15m", severity="warning",
    summary="An AgentPool's work has waited on its API budget for 15 minutes.",
    description=(f"{_pool()} has had tasks waiting for a budget permit for 15 minutes "
                 "({{ $value }} now): its pace is set by the budget of an external API, not by "
                 "its workers, and its autoscaler holds its size."),
    runbook=(
        "The pool's handlers wait for permits of an AgentBudget key (its requests per second "
        "or minute, tokens per minute or concurrent requests are used up), so the pool does "
        "not scale out: more pods would only wait too. 1) `kubectl get agentbudgets -A` "
        "shows which budget is Saturated and its `status.keys` which key and why (a limit, a "
        "cool-down after 429s, or tasks waiting); the Budgets row of the External APIs "
        "dashboard shows permits granted after waiting or timed out, tokens used against the "
        "limit, and 429s from the provider. 2) If the provider's real limit "
        "is higher, raise the key's limits in the AgentBudget (`kubectl get agentbudgets -A`); "
        "if it is not, the backlog is the true cost of the limit: ask the provider for more, "
        "spread the work over another key, or lower the work's priority. 3) Many 429s mean "
        "the budget allows more than the provider does: lower the budget to the provider's "
        "limit. 4) A budget shared by several pools is shared by all of them: `kubectl "
        "describe agentbudget` lists them."
    ),
)

_OPERATOR_SEEN = f"max by (namespace, job) (max_over_time({m.OPERATOR_LEADER}[1h]))"
_OPERATOR_LEADING = f"max by (namespace, job) ({m.OPERATOR_LEADER} == 1)"

OPERATOR_DOWN = Alert(
    name="AgentPoolOperatorDown",
    # An operator scraped within the hour has no replica leading now: every replica is gone
    # (its series went stale) or stands by.
    expr=f"{_OPERATOR_SEEN}\nunless on (namespace, job)\n{_OPERATOR_LEADING}",
    signals=(f"max by (namespace, job) ({m.OPERATOR_LEADER})",),
    for_="5m", severity="critical",
    summary="No replica of the AgentPool operator is reconciling.",
    description=("The AgentPool operator {{ $labels.namespace }}/{{ $labels.job }} has had no "
                 "leading replica for 5 minutes: pools are not reconciled, drift is not "
                 "repaired and the metrics API's queue directory is not updated."),
    runbook=(
        "No replica of this operator holds the leader Lease and reconciles: the pods are down, "
        "not scraped any more, or all stand by. 1) `kubectl get pods -n <namespace> -l "
        "app.kubernetes.io/component=operator`: CrashLoopBackOff or Pending? `kubectl "
        "describe pod` and `kubectl logs --previous` say why (image pull, OOM, RBAC at "
        "start). 2) Pods running but none leading: `kubectl get lease -n <namespace> "
        "<release>-agentpool-operator -o yaml` shows the holder and renew time; a replica that "
        "cannot create, read or update the Lease logs it (403: the chart's leader-election "
        "Role is missing). 3) Pods fine and leading but not scraped: the ServiceMonitor's "
        "labels do not match your Prometheus's selector (serviceMonitor.additionalLabels). "
        "Existing pools keep running meanwhile; new pools and spec changes wait."
    ),
)

OPERATOR_ABSENT = Alert(
    name="AgentPoolOperatorAbsent",
    expr=f"absent({m.OPERATOR_LEADER})",
    signals=(f"count ({m.OPERATOR_LEADER})",),
    for_="15m", severity="critical",
    summary="Prometheus scrapes no AgentPool operator.",
    description=("No AgentPool operator has been scraped for 15 minutes (no "
                 f"{m.OPERATOR_LEADER} series): it is not installed, not running, or not "
                 "monitored."),
    runbook=(
        "Prometheus has no series of any AgentPool operator. 1) Is it installed and running? "
        "`kubectl get deploy -A -l app.kubernetes.io/name=agentpool-operator`. 2) Is it "
        "scraped? The chart's ServiceMonitor exists only where the cluster serves the "
        "Prometheus Operator's CRDs at install time (NOTES says so; `helm upgrade` after "
        "installing them), and kube-prometheus-stack selects monitors by its release label "
        "(serviceMonitor.additionalLabels: {release: <its name>}). 3) On a Prometheus that "
        "monitors clusters without AgentPool, drop this rule (prometheusRule.enabled=false "
        "there)."
    ),
)

_API_SEEN = f"count by (namespace, job) (count_over_time({m.METRICS_API_REQUESTS}[1h]))"
_API_UP = f"count by (namespace, job) ({m.METRICS_API_REQUESTS})"

METRICS_API_DOWN = Alert(
    name="AgentPoolMetricsApiDown",
    # A metrics API scraped within the hour has no replica scraped now.
    expr=f"{_API_SEEN}\nunless on (namespace, job)\n{_API_UP}",
    signals=(_API_UP,),
    for_="5m", severity="critical",
    summary="The AgentPool metrics API has no running replica.",
    description=("The AgentPool metrics API {{ $labels.namespace }}/{{ $labels.job }} has had "
                 "no replica scraped for 5 minutes: autoscaled pools cannot get "
                 "agentpool_queue_backlog and stay at their size."),
    runbook=(
        "Every replica of the external metrics API server is gone, so every builtin-autoscaled "
        "pool's HPA reports FailedGetExternalMetric and keeps its size "
        "(AgentPoolAutoscalerFailing). 1) `kubectl get pods -n <namespace> -l "
        "app.kubernetes.io/component=metrics-api`; `kubectl describe pod` and `kubectl logs` "
        "for the cause (a missing serving certificate Secret keeps it from starting: see the "
        "chart README's certificates section). 2) `kubectl get apiservice "
        "v1beta1.external.metrics.k8s.io`: Available=False with FailedDiscoveryCheck names "
        "the TLS or network problem. 3) Running but not scraped: the ServiceMonitor's labels."
    ),
)

METRICS_API_ABSENT = Alert(
    name="AgentPoolMetricsApiAbsent",
    # Only where some pool autoscales with the builtin HPA, which needs it.
    expr=(f"absent({m.METRICS_API_REQUESTS})\nand on ()\n"
          f"count ({m.OPERATOR_AUTOSCALER_CONDITION}) > 0"),
    signals=(f"count ({m.METRICS_API_REQUESTS})", f"count ({m.OPERATOR_AUTOSCALER_CONDITION})"),
    for_="15m", severity="critical",
    summary="AgentPools autoscale, but no AgentPool metrics API is scraped.",
    description=("AgentPool HPAs exist, but no AgentPool metrics API has been scraped for 15 "
                 "minutes: their metric agentpool_queue_backlog has no server."),
    runbook=(
        "Pools with spec.autoscaling (provider builtin) have HPAs that read "
        "agentpool_queue_backlog from the external metrics API, but no metrics API is "
        "scraped. 1) Is it deployed? metricsApi.enabled=false in every release means no "
        "server (a second release points at the first one's: metricsApi.shared). 2) Is it "
        "running and scraped (AgentPoolMetricsApiDown covers one that was)? 3) If KEDA or "
        "prometheus-adapter serves external metrics instead, the prometheus-adapter rules "
        "still read the metrics API's gauges: keep it enabled with "
        "metricsApi.apiService.create=false."
    ),
)

_API_ERROR_RATIO = (
    f'sum by (namespace, job) (rate({m.METRICS_API_REQUESTS}{{code=~"5.."}}[5m]))\n'
    f"  / sum by (namespace, job) (rate({m.METRICS_API_REQUESTS}[5m]))")
METRICS_API_ERROR_RATIO = 0.05

METRICS_API_ERRORS = Alert(
    name="AgentPoolMetricsApiErrors",
    expr=above(_API_ERROR_RATIO, METRICS_API_ERROR_RATIO),
    signals=(_API_ERROR_RATIO,),
    for_="10m", severity="warning",
    summary="The AgentPool metrics API fails many requests.",
    description=("{{ $value | humanizePercentage }} of the external metrics requests to "
                 "{{ $labels.namespace }}/{{ $labels.job }} failed with a server error for 10 "
                 f"minutes (threshold {METRICS_API_ERROR_RATIO:.0%})."),
    runbook=(
        "The metrics API answers 503 for a pool whose queue it cannot read (Redis unreachable "
        "or refusing, a Redis URL it cannot use, the queue directory unreadable); that pool's "
        "HPA keeps its size. 1) The server's log names the pool and the reason, never the "
        "credentials. 2) Redis: reachable from the metrics API's pods (NetworkPolicy: "
        "networkPolicy.metricsApi.redisEgress), same URL as the pool's Secret. 3) The queue "
        "directory: `kubectl get secret -n <namespace> <release>-agentpool-operator-metrics-"
        "api-queues` exists and the operator publishes it (its log)."
    ),
)

ALERTS: tuple[Alert, ...] = (
    QUEUE_BACKLOG_HIGH,
    OLDEST_TASK_TOO_OLD,
    TASK_ERROR_RATE_HIGH,
    TASKS_DEAD_LETTERED,
    WORKERS_RESTARTING,
    MEMORY_LEAK_SUSPECTED,
    MEMORY_GROWING_OVER_A_DAY,
    MEMORY_NEAR_LIMIT,
    MEMORY_BREAKER_OPEN,
    DB_POOL_SATURATED,
    PGBOUNCER_CLIENTS_WAITING,
    POOL_NOT_READY,
    POOL_DEGRADED,
    AUTOSCALER_FAILING,
    BUDGET_SATURATED,
    OPERATOR_DOWN,
    OPERATOR_ABSENT,
    OPERATOR_RECONCILE_ERRORS,
    OPERATOR_WATCH_STALLED,
    METRICS_API_DOWN,
    METRICS_API_ABSENT,
    METRICS_API_ERRORS,
)


def rules_file() -> dict[str, Any]:
    """The plain Prometheus rules file (what promtool reads and the PrometheusRule embeds)."""
    return {"groups": [{"name": GROUP_NAME, "rules": [alert.rule() for alert in ALERTS]}]}


def _placeholders(template: str) -> str:
    """Prometheus template text for a page: `{{ $labels.pod }}` -> `<pod>`."""
    text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", r"<\1>", template)
    return re.sub(r"\{\{\s*\$value[^}]*\}\}", "<value>", text)


def _steps(text: str) -> str:
    """A runbook's "1) ... 2) ..." as a Markdown list after its opening sentences."""
    parts = re.split(r"(?:^|\s)(\d+)\) ", text)
    intro, items = parts[0].strip(), parts[1:]
    lines = [intro] if intro else []
    if items:
        if intro:
            lines.append("")
        lines += [f"{number}. {body.strip()}" for number, body in zip(items[::2], items[1::2],
                                                                       strict=True)]
    return "\n".join(lines)


def runbook_markdown(alert: Alert) -> str:
    """The alert's runbook page (`docs/runbooks/<alert>.md`)."""
    return (
        f"# {alert.name}\n\n"
        "<!-- Generated by `python -m agentpool_tools.monitoring` from "
        "hack/agentpool_tools/monitoring/alerts.py. Do not edit. -->\n\n"
        f"**Severity:** {alert.severity}. **Fires after:** {alert.for_}.\n\n"
        f"{alert.summary}\n\n"
        "## Meaning\n\n"
        f"{_placeholders(alert.description)}\n\n"
        "## The rule\n\n"
        f"```promql\n{alert.expr}\n```\n\n"
        "## What to do\n\n"
        f"{_steps(alert.runbook)}\n"
    )


def runbook_index() -> str:
    """`docs/runbooks/README.md`: every alert, its severity and its page."""
    rows = "".join(f"| [{a.name}]({a.name}.md) | {a.severity} | {a.summary} |\n"
                   for a in ALERTS)
    return (
        "# AgentPool alert runbooks\n\n"
        "<!-- Generated by `python -m agentpool_tools.monitoring`. Do not edit. -->\n\n"
        "Each alert of the chart's PrometheusRule (`charts/agentpool-operator/rules/`) links "
        "its page here in its `runbook_url` annotation.\n\n"
        "| alert | severity | summary |\n| --- | --- | --- |\n" + rows
    )
