"""The pod's main process: keeps the warm workers, watches them, serves the pod's endpoints.

    supervisor.py         `Supervisor`: spawning, messages, kill/retire decisions, drain
    slots.py              the pod's `workers` slots: each one's worker, generation, backoff
    launcher.py           starts workers from a fork server that preloaded the handlers
    worker_handle.py      what the supervisor knows of one worker process
    memory_guard.py       per-worker memory limits and the pod's breaker, acted on
    breaker.py            the pod-level memory circuit breaker (pure decisions)
    memory.py             USS and cgroup readings
    upkeep.py             chores: lease renewal, queue upkeep, database upkeep
    reaper.py             reaps orphans when the supervisor is PID 1
    health.py             `/metrics`, `/healthz`, `/readyz`
    pod_metrics.py        the pod's single Prometheus registry
    pgbouncer_metrics.py  PgBouncer's pool metrics, read at scrape time
    pgwire.py             a minimal client for PgBouncer's admin console

Builds on the queue, the database and the link to its workers (`agent_runtime.ipc`); of the
worker it imports only the process entry point it starts (`worker.process`).
"""
