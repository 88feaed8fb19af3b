"""Leader election timing (`leader.py`) against an in-memory Lease and a fake clock: who may
take the lease when, what a renewal and a release write, and when a leader gives up."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field

import pytest

from agentpool_operator.errors import TransientError
from agentpool_operator.leader import (
    Attempt,
    LeaderElector,
    LeaseConflict,
    LeaseRecord,
    next_record,
    released,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> dt.datetime:
        return T0 + dt.timedelta(seconds=self.now)

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class Store:
    """One Lease with optimistic concurrency; `down` makes every call fail."""

    record: LeaseRecord | None = None
    version: int = 0
    down: bool = False
    writes: list[LeaseRecord] = field(default_factory=list)

    def _check(self) -> None:
        if self.down:
            raise TransientError("API server unavailable")

    async def read(self) -> tuple[LeaseRecord, str] | None:
        self._check()
        found = None if self.record is None else (self.record, str(self.version))
        await asyncio.sleep(0)  # a request's round trip: other candidates may read meanwhile
        return found

    async def create(self, record: LeaseRecord) -> str:
        self._check()
        if self.record is not None:
            raise LeaseConflict("exists")
        return self._write(record)

    async def update(self, record: LeaseRecord, resource_version: str) -> str:
        self._check()
        if resource_version != str(self.version):
            raise LeaseConflict("changed")
        return self._write(record)

    def _write(self, record: LeaseRecord) -> str:
        self.record, self.version = record, self.version + 1
        self.writes.append(record)
        return str(self.version)


def elector(store: Store, clock: Clock, identity: str) -> LeaderElector:
    return LeaderElector(store, identity, lease_duration=15, renew_deadline=10,
                         retry_period=2, clock=clock, wallclock=clock.wall, sleep=clock.sleep)


def test_records_keep_acquire_time_on_renewal_and_count_takeovers() -> None:
    first = next_record(None, "a", 15, T0)
    assert first == LeaseRecord("a", 15, T0, T0, 0)
    later = T0 + dt.timedelta(seconds=2)
    assert next_record(first, "a", 15, later) == LeaseRecord("a", 15, T0, later, 0)
    assert next_record(first, "b", 15, later) == LeaseRecord("b", 15, later, later, 1)
    gone = released(first, later)
    assert (gone.holder, gone.duration_seconds, gone.transitions) == ("", 1, 0)


async def test_the_first_candidate_takes_a_missing_lease_and_the_second_waits() -> None:
    store, clock = Store(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert await a.try_acquire_or_renew() is Attempt.LEADING
    assert await b.try_acquire_or_renew() is Attempt.HELD
    assert store.record is not None
    assert store.record.holder == "a"
    assert b.observed_once


async def test_a_standby_takes_over_only_after_the_lease_duration_without_change() -> None:
    store, clock = Store(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    await a.try_acquire_or_renew()
    assert await b.try_acquire_or_renew() is Attempt.HELD  # b sees the record now
    clock.now += 14.9
    assert await b.try_acquire_or_renew() is Attempt.HELD
    # A renewal restarts b's count: it measures from when it saw the record change.
    assert await a.try_acquire_or_renew() is Attempt.LEADING
    clock.now += 1
    assert await b.try_acquire_or_renew() is Attempt.HELD
    clock.now += 14.9
    assert await b.try_acquire_or_renew() is Attempt.HELD
    clock.now += 0.2
    assert await b.try_acquire_or_renew() is Attempt.LEADING
    assert store.record is not None
    assert (store.record.holder, store.record.transitions) == ("b", 1)
    # The old leader now finds another holder.
    assert await a.try_acquire_or_renew() is Attempt.HELD


async def test_a_candidate_uses_its_own_clock_not_the_holders_timestamps() -> None:
    """A renewTime far in the past (the holder's clock is behind) does not make a fresh
    lease look expired."""
    store, clock = Store(), Clock()
    store.record = LeaseRecord("a", 15, T0 - dt.timedelta(days=1), T0 - dt.timedelta(days=1))
    b = elector(store, clock, "b")
    assert await b.try_acquire_or_renew() is Attempt.HELD


async def test_of_two_candidates_for_an_expired_lease_one_wins() -> None:
    store, clock = Store(), Clock()
    store.record = LeaseRecord("", 1)
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    # Both read the same version; the second write conflicts.
    results = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
    assert sorted(r.value for r in results) == ["failed", "leading"]
    assert len(store.writes) == 1


async def test_a_released_lease_is_taken_at_the_next_try() -> None:
    store, clock = Store(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    await a.acquire()
    assert await b.try_acquire_or_renew() is Attempt.HELD
    await a.release()
    assert not a.leading
    assert store.record is not None
    assert store.record.holder == ""
    assert await b.try_acquire_or_renew() is Attempt.LEADING


async def test_the_leader_gives_up_when_it_cannot_renew_before_the_deadline() -> None:
    store, clock = Store(), Clock()
    a = elector(store, clock, "a")
    await a.acquire()
    renewed_at = clock.now
    store.down = True
    await a.keep()
    assert not a.leading
    # It stopped within the renew deadline (plus one retry period), before the lease
    # (15 s) could be taken by anyone else.
    assert 10 <= clock.now - renewed_at <= 12


async def test_the_leader_stops_at_once_when_another_holds_the_lease() -> None:
    store, clock = Store(), Clock()
    a = elector(store, clock, "a")
    await a.acquire()
    store.record = LeaseRecord("b", 15, clock.wall(), clock.wall(), 1)
    store.version += 1
    started = clock.now
    await a.keep()
    assert not a.leading
    assert clock.now - started == pytest.approx(2)


async def test_run_leads_until_lead_returns_then_releases() -> None:
    store, clock = Store(), Clock()
    a = elector(store, clock, "a")
    ran = []

    async def lead() -> None:
        ran.append(a.leading)

    assert await a.run(lead) is True
    assert ran == [True]
    assert store.record is not None
    assert store.record.holder == ""


async def test_run_calls_on_lost_and_cancels_lead_when_leadership_is_lost() -> None:
    store, clock = Store(), Clock()
    a = elector(store, clock, "a")
    lost: list[float] = []
    cancelled = asyncio.Event()

    async def lead() -> None:
        store.down = True  # the API server goes away while we lead
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    assert await a.run(lead, lambda: lost.append(clock.now)) is False
    assert lost
    assert cancelled.is_set()


def test_the_timings_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        LeaderElector(Store(), "a", lease_duration=10, renew_deadline=10, retry_period=2)
