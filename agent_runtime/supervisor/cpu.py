"""CPU time of the pod's runtime processes, as counters (`agentpool_worker_cpu_seconds_total`
per slot, `agentpool_pod_cpu_seconds_total` for the supervisor and every worker).

Sampled with the memory checks (every half second) from /proc via psutil: user + system time
of each worker, including the children it waited for (a handler's subprocesses). A slot's
counter carries on across its successive workers; what a worker used between its last sample
and its exit (at most half a second) is not counted. The container's own figure, whatever runs
in it, is cAdvisor's `container_cpu_usage_seconds_total`.
"""

from __future__ import annotations

import os

import psutil

from agent_runtime.supervisor.pod_metrics import RuntimeMetrics
from agent_runtime.supervisor.worker_handle import WorkerHandle


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its waited-for children; None if gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return float(times.user + times.system + times.children_user + times.children_system)


class CpuAccounting:
    def __init__(self, metrics: RuntimeMetrics, slots: int) -> None:
        self._metrics = metrics
        self._own = self._own_seconds()
        for slot in range(slots):
            metrics.worker_cpu.labels(str(slot))

    @staticmethod
    def _own_seconds() -> float:
        times = os.times()
        return times.user + times.system

    def sample(self, live: list[WorkerHandle]) -> None:
        own = self._own_seconds()
        total = max(own - self._own, 0.0)
        self._own = own
        for handle in live:
            if handle.pid is None:
                continue
            seconds = process_cpu_seconds(handle.pid)
            if seconds is None:
                continue
            used = max(seconds - handle.cpu_seconds, 0.0)
            handle.cpu_seconds = seconds
            self._metrics.worker_cpu.labels(str(handle.slot)).inc(used)
            total += used
        self._metrics.pod_cpu.inc(total)
