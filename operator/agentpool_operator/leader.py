"""Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics.

Run by `__main__.py` when `--leader-elect` is set (the chart sets it), so several replicas of
the operator can run and exactly one of them reconciles. Each replica is a candidate: it
reads the Lease every `retry_period`; the lease is free when it names no holder or when the
record has not changed for `lease_duration` as this replica observed it (its own monotonic
clock, never the holder's timestamps: clocks may disagree). A candidate takes a free lease
with an update that carries the resourceVersion it read, so of two candidates only one wins.
The leader renews every `retry_period`; when it cannot renew for `renew_deadline` (shorter
than `lease_duration`), or finds another holder, it has lost and must stop writing at once:
`__main__.py` then exits, as client-go's components do, and the kubelet restarts it as a
candidate. A leader that stops on purpose (SIGTERM, a rolling update) releases the lease, so
a standby takes over within one `retry_period` rather than after `lease_duration`.

Why no two replicas ever write at once: a candidate only takes a lease unchanged for
`lease_duration` since it last saw it change, and the leader stops by `renew_deadline` after
its last successful renewal, which is earlier.

The decisions are pure (`LeaseRecord`, `next_record`); the API calls go through a
`LeaseStore` (`k8s.KubeLeases`), so the timing is unit-tested with a fake store and clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Protocol

from agentpool_operator.errors import OperatorError

log = logging.getLogger(__name__)

JITTER = 1.2
"""client-go's JitterFactor: a candidate waits retry_period x (1 + up to 1.2) between tries,
so candidates started together do not hammer the Lease in step."""


@dataclass(frozen=True)
class LeaseRecord:
    """The election fields of a Lease's spec."""

    holder: str
    """holderIdentity; "" when released."""
    duration_seconds: int
    acquired: dt.datetime | None = None
    renewed: dt.datetime | None = None
    transitions: int = 0


class LeaseConflict(OperatorError):
    """Another writer changed (or created) the Lease since it was read."""


class LeaseStore(Protocol):
    """The Lease's API calls. Errors: `LeaseConflict`, else the operator's own errors."""

    async def read(self) -> tuple[LeaseRecord, str] | None:
        """The record and its resourceVersion; None when the Lease does not exist."""

    async def create(self, record: LeaseRecord) -> str:
        """Create the Lease; its resourceVersion."""

    async def update(self, record: LeaseRecord, resource_version: str) -> str:
        """Replace the Lease's record if it still has `resource_version`; the new one."""


class Attempt(enum.Enum):
    LEADING = "leading"
    """We hold the lease (just taken or renewed)."""
    HELD = "held"
    """Another replica holds a lease that has not expired."""
    FAILED = "failed"
    """The API server refused or did not answer, or another writer came first."""


def next_record(current: LeaseRecord | None, identity: str, duration_seconds: int,
                now: dt.datetime) -> LeaseRecord:
    """The record that makes `identity` the holder: a renewal keeps the acquire time and the
    transition count, a takeover counts a transition."""
    if current is not None and current.holder == identity:
        return replace(current, duration_seconds=duration_seconds, renewed=now)
    transitions = 0 if current is None else current.transitions + 1
    return LeaseRecord(holder=identity, duration_seconds=duration_seconds, acquired=now,
                       renewed=now, transitions=transitions)


def released(current: LeaseRecord, now: dt.datetime) -> LeaseRecord:
    """What a leader that stops on purpose writes: no holder, so a standby takes over at its
    next try (client-go's ReleaseOnCancel)."""
    return replace(current, holder="", duration_seconds=1, acquired=now, renewed=now)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaderElector:
    """One replica's view of the election; `run` leads while it holds the lease."""

    def __init__(self, store: LeaseStore, identity: str, *, lease_duration: float = 15.0,
                 renew_deadline: float = 10.0, retry_period: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], dt.datetime] = _utcnow,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        self.identity = identity
        self._store = store
        self._lease_duration = lease_duration
        self._renew_deadline = renew_deadline
        self._retry_period = retry_period
        self._clock = clock
        self._wallclock = wallclock
        self._sleep = sleep
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._version = ""
        self.leading = False
        self.observed_once = False
        """The Lease (or its absence) was read at least once: the API server answers."""

    @property
    def _duration_seconds(self) -> int:
        return max(1, round(self._lease_duration))

    def _observe(self, record: LeaseRecord, version: str) -> None:
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()
        self._version = version
        self.observed_once = True

    async def try_acquire_or_renew(self) -> Attempt:
        """One attempt: read the Lease, and take or renew it if it is ours to take."""
        try:
            found = await self._store.read()
            now = self._wallclock()
            if found is None:
                record = next_record(None, self.identity, self._duration_seconds, now)
                self._observe(record, await self._store.create(record))
                return Attempt.LEADING
            current, version = found
            self._observe(current, version)
            expires = self._observed_at + current.duration_seconds
            if current.holder and current.holder != self.identity and expires > self._clock():
                return Attempt.HELD
            record = next_record(current, self.identity, self._duration_seconds, now)
            self._observe(record, await self._store.update(record, version))
            return Attempt.LEADING
        except OperatorError as error:
            log.debug("lease attempt failed: %s", error)
            return Attempt.FAILED

    async def acquire(self) -> None:
        """Wait until this replica holds the lease."""
        while await self.try_acquire_or_renew() is not Attempt.LEADING:
            await self._sleep(self._retry_period * (1 + random.random() * JITTER))
        self.leading = True
        holder = self._observed
        log.info("became the leader", extra={"identity": self.identity,
                                             "transitions": holder.transitions if holder else 0})

    async def keep(self) -> None:
        """Renew every `retry_period` while leading; return when leadership is lost (not
        renewed for `renew_deadline`, or taken by another holder)."""
        renewed_at = self._clock()
        while True:
            await self._sleep(self._retry_period)
            budget = self._renew_deadline - (self._clock() - renewed_at)
            try:
                attempt = await asyncio.wait_for(self.try_acquire_or_renew(),
                                                 max(budget, 0.001))
            except TimeoutError:
                attempt = Attempt.FAILED
            if attempt is Attempt.LEADING:
                renewed_at = self._clock()
                continue
            if attempt is Attempt.HELD or self._clock() - renewed_at >= self._renew_deadline:
                self.leading = False
                log.error("lost the leader lease", extra={
                    "identity": self.identity, "reason": attempt.value,
                    "holder": self._observed.holder if self._observed else ""})
                return

    async def release(self) -> None:
        """Give the lease up (a leader stopping on purpose); errors are only logged: the
        lease then expires after `lease_duration`."""
        if not self.leading or self._observed is None:
            return
        self.leading = False
        try:
            await self._store.update(released(self._observed, self._wallclock()),
                                     self._version)
            log.info("released the leader lease", extra={"identity": self.identity})
        except OperatorError as error:
            log.warning("could not release the leader lease: %s", error)

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]],
                  on_lost: Callable[[], None] = lambda: None) -> bool:
        """Become the leader, then run `lead()` while holding the lease. True when `lead`
        returned (the lease is released). When leadership is lost, `on_lost()` is called at
        once (the operator exits there: nothing may write any more), then `lead` is
        cancelled and the answer is False."""
        await self.acquire()
        leading = asyncio.create_task(lead(), name="lead")
        keeping = asyncio.create_task(self.keep(), name="keep-lease")
        try:
            await asyncio.wait({leading, keeping}, return_when=asyncio.FIRST_COMPLETED)
            lost = keeping.done() and not leading.done()
            if lost:
                on_lost()
        finally:
            for task in (keeping, leading):
                if not task.done():
                    task.cancel()
            await asyncio.gather(keeping, leading, return_exceptions=True)
        if lost:
            return False
        await self.release()
        leading.result()  # re-raises what `lead` raised
        return True
