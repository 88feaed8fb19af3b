"""When to look at a pool's pods for crash loops, and what the last look found.

The Deployment says how many pods are unavailable, not why; only the pods say that a container
is in CrashLoopBackOff. Listing them on every Deployment status change cost a LIST (of every
pod in the namespace, filtered by the API server) per change of every rollout: the most
expensive request the operator made when many pools started at once. And a crash loop, which
changes no Deployment status, was seen only at the next resync.

So the pods are looked at on a schedule of their own, kept per pool while its pods are
unavailable: first `first_look_seconds` after they were first seen unavailable (a healthy
rollout is done by then and costs no LIST), then again at doubling intervals up to
`longest_interval_seconds` (pods that cannot be scheduled cost a LIST every few minutes), but
every `first_look_seconds` while a crash loop is found, so that its end is seen soon. The
reconcile requeues the pool for the next look (`due_in`). What a look found is reported until
the next one: between looks a reconcile must not drop the problem from the status.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agentpool_operator.status import Problem
from agentpool_operator.store import PoolKey

FIRST_LOOK_SECONDS = 10.0
LONGEST_INTERVAL_SECONDS = 300.0


@dataclass
class _Schedule:
    due: float
    interval: float
    found: Problem | None = None


@dataclass
class PodChecks:
    clock: Callable[[], float] = time.monotonic
    first_look_seconds: float = FIRST_LOOK_SECONDS
    longest_interval_seconds: float = LONGEST_INTERVAL_SECONDS
    _pools: dict[PoolKey, _Schedule] = field(default_factory=dict)

    def all_available(self, key: PoolKey) -> None:
        """The pool's pods are all available: the next unavailability starts a new schedule."""
        self._pools.pop(key, None)

    forget = all_available

    def due_in(self, key: PoolKey) -> float:
        """Seconds until the pods of `key`, some of them unavailable, are to be looked at
        (<= 0: now). The first call for an unavailability starts its schedule."""
        now = self.clock()
        schedule = self._pools.get(key)
        if schedule is None:
            schedule = self._pools[key] = _Schedule(due=now + self.first_look_seconds,
                                                    interval=self.first_look_seconds)
        return schedule.due - now

    def looked(self, key: PoolKey, found: Problem | None) -> float:
        """Record what a look at the pods found; seconds until the next look."""
        schedule = self._pools.setdefault(key, _Schedule(due=0.0,
                                                          interval=self.first_look_seconds))
        schedule.found = found
        if found is not None:
            schedule.interval = self.first_look_seconds
        else:
            schedule.interval = min(schedule.interval * 2, self.longest_interval_seconds)
        schedule.due = self.clock() + schedule.interval
        return schedule.interval

    def last_found(self, key: PoolKey) -> Problem | None:
        schedule = self._pools.get(key)
        return schedule.found if schedule is not None else None
