"""Where the SDK's helpers count what they do: `ctx.cache` hits and misses, `ctx.http` latencies.

A protocol, so the helpers do not depend on who keeps the numbers: in a worker it is the
worker's `WorkerStats` (`agent_runtime.worker.stats`), which ships them to the supervisor's
registry with each heartbeat; a helper used outside a worker takes None and counts nothing.
"""

from __future__ import annotations

from typing import Protocol


class MetricsSink(Protocol):
    def inc(self, name: str, labels: dict[str, str], value: float = 1.0) -> None:
        """Add `value` to a counter series."""

    def observe(self, name: str, labels: dict[str, str], value: float) -> None:
        """Record one observation of a histogram series."""
