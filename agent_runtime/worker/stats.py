"""Metric deltas collected inside a worker and shipped to the supervisor with each heartbeat.

Workers own no Prometheus registry (no multiprocess directory that grows with every recycled
PID): helpers such as `ctx.cache`, `ctx.http` (`agent_runtime.sdk`) and `worker.py` record into
a `WorkerStats`, and `worker.py` drains it into its heartbeat. The supervisor applies the deltas
to its single registry (`supervisor/pod_metrics.py`), so counters never go backwards when a
worker is replaced. A worker killed with SIGKILL loses at most one heartbeat interval of these
deltas."""

from __future__ import annotations

from collections import defaultdict

from agent_runtime.ipc.messages import MetricDelta

Labels = tuple[tuple[str, str], ...]


def freeze_labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


class WorkerStats:
    """Accumulates counter increments and histogram observations until the next flush."""

    # Bounds memory if the supervisor stops reading (observations beyond this are dropped).
    MAX_OBSERVATIONS = 50_000

    def __init__(self) -> None:
        self._counters: defaultdict[tuple[str, Labels], float] = defaultdict(float)
        self._observations: list[tuple[str, Labels, float]] = []

    def inc(self, name: str, labels: dict[str, str], value: float = 1.0) -> None:
        self._counters[(name, freeze_labels(labels))] += value

    def observe(self, name: str, labels: dict[str, str], value: float) -> None:
        if len(self._observations) < self.MAX_OBSERVATIONS:
            self._observations.append((name, freeze_labels(labels), value))

    def drain(self) -> list[MetricDelta]:
        """Everything recorded since the last drain, and reset."""
        rows = [MetricDelta("c", name, dict(labels), value)
                for (name, labels), value in self._counters.items()]
        rows.extend(MetricDelta("h", name, dict(labels), value)
                    for name, labels, value in self._observations)
        self._counters.clear()
        self._observations.clear()
        return rows
