"""The supervisor's memory policy: per-worker limits (USS) and the pod-level breaker.

Called by `supervisor.py` every half second with the live workers; acts through the
supervisor's own kill/retire/broadcast so every replacement is decided and counted in one
place. Per worker: above `worker_memory_recycle_ratio` of `max_worker_memory_bytes` the worker
is drained and replaced (its replacement warms up first), above the limit it is killed. Pod
level: see `breaker.py`; while the breaker stays open without memory coming down, the largest
worker is recycled every `RECYCLE_WHILE_OPEN_SECONDS`, since only a fresh process gives leaked
memory back.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from agent_runtime.config import RuntimeConfig
from agent_runtime.ipc.messages import Pause, Resume, SupervisorMessage
from agent_runtime.supervisor.breaker import BreakerAction, MemoryBreaker
from agent_runtime.supervisor.memory import read_container_memory, worker_uss
from agent_runtime.supervisor.pod_metrics import RuntimeMetrics
from agent_runtime.supervisor.worker_handle import WorkerHandle

log = logging.getLogger(__name__)

RECYCLE_WHILE_OPEN_SECONDS = 10.0


class Actions(Protocol):
    def kill(self, handle: WorkerHandle, reason: str, detail: str) -> None: ...
    def retire(self, handle: WorkerHandle, reason: str) -> None: ...
    def broadcast(self, message: SupervisorMessage) -> None: ...


class MemoryGuard:
    def __init__(self, config: RuntimeConfig, metrics: RuntimeMetrics, actions: Actions) -> None:
        self._config = config
        self._metrics = metrics
        self._actions = actions
        self.breaker = MemoryBreaker(config.memory_breaker_open_ratio,
                                     config.memory_breaker_close_ratio, config.memory_kill_ratio)
        self._opened_at = 0.0

    def check(self, live: list[WorkerHandle], current: set[int]) -> None:
        """`current`: ids of the handles that are their slot's current worker (for gauges)."""
        limit = self._config.max_worker_memory_bytes
        for handle in live:
            if handle.pid is None:
                continue
            handle.uss = worker_uss(handle.pid)
            if handle.uss is None:
                continue
            if id(handle) in current:
                self._metrics.worker_uss.labels(str(handle.slot)).set(handle.uss)
            if limit is None:
                continue
            if handle.uss > limit:
                self._actions.kill(handle, "memory", f"USS {handle.uss} bytes above {limit}")
            elif handle.uss > limit * self._config.worker_memory_recycle_ratio:
                self._actions.retire(handle, "memory")
        self._check_pod(live)

    def pod_memory(self, live: list[WorkerHandle]) -> tuple[int, int | None]:
        override = self._config.container_memory_limit_bytes
        container = read_container_memory()
        if container is not None and container.limit is not None:
            limit = min(container.limit, override) if override else container.limit
            return container.working_set, limit
        # No cgroup limit (a developer machine): count our workers against the override.
        return sum(h.uss or 0 for h in live), override

    def _check_pod(self, live: list[WorkerHandle]) -> None:
        used, limit = self.pod_memory(live)
        self._metrics.container_memory.set(used)
        self._metrics.container_limit.set(limit or 0)
        action = self.breaker.update(used, limit)
        self._metrics.breaker_open.set(1 if self.breaker.is_open else 0)
        if action is BreakerAction.OPEN:
            self._opened_at = time.monotonic()
            log.warning("memory breaker open: %d of %s bytes; pausing workers", used, limit)
            self._actions.broadcast(Pause())
        elif action is BreakerAction.CLOSE:
            log.info("memory breaker closed: %d of %s bytes; resuming workers", used, limit)
            self._actions.broadcast(Resume())
        elif action is BreakerAction.KILL_LARGEST:
            self._actions.broadcast(Pause())
            biggest = max(live, key=lambda h: h.uss or 0, default=None)
            if biggest is not None:
                self._actions.kill(biggest, "memory", f"pod memory {used} of {limit} bytes")
        elif (self.breaker.is_open
              and time.monotonic() - self._opened_at > RECYCLE_WHILE_OPEN_SECONDS):
            self._opened_at = time.monotonic()
            candidates = [h for h in live if h.retiring is None and h.kill_reason is None]
            largest = max(candidates, key=lambda h: h.uss or 0, default=None)
            if largest is not None:
                self._actions.retire(largest, "memory")
