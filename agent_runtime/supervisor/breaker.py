"""The pod-level memory circuit breaker (pure decisions; `supervisor.py` acts on them).

On Kubernetes >= 1.28 with cgroup v2, one process crossing the container limit gets the whole
container OOM-killed (memory.oom.group=1): every warm worker and every in-flight task at once.
So the supervisor watches the container's working set against its limit and, in order:
stops workers from taking new tasks (open), takes them again once memory fell back (close,
with hysteresis so it does not flap), and past the kill threshold kills the largest worker
itself - losing one worker's tasks (which re-run) instead of the whole pod's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class BreakerAction(Enum):
    NONE = "none"
    OPEN = "open"  # pause all workers
    CLOSE = "close"  # resume all workers
    KILL_LARGEST = "kill_largest"  # and keep the breaker open


@dataclass
class MemoryBreaker:
    open_ratio: float
    close_ratio: float
    kill_ratio: float
    is_open: bool = False

    def update(self, working_set: int, limit: int | None) -> BreakerAction:
        if not limit:
            if self.is_open:
                self.is_open = False
                return BreakerAction.CLOSE
            return BreakerAction.NONE
        ratio = working_set / limit
        if ratio >= self.kill_ratio:
            self.is_open = True
            return BreakerAction.KILL_LARGEST
        if ratio >= self.open_ratio and not self.is_open:
            self.is_open = True
            return BreakerAction.OPEN
        if ratio <= self.close_ratio and self.is_open:
            self.is_open = False
            return BreakerAction.CLOSE
        return BreakerAction.NONE
