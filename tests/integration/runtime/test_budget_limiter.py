"""The budget limiter against real Redis: several clients (as in several pods) share one key's
limits exactly, waiters are woken by releases, dead workers' permits come back, and a Redis
that lost its grants does not hand out a second window's worth."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from agent_runtime.sdk.budget.limiter import (
    BudgetLimiter,
    BudgetTimeout,
    Permit,
    ReservationTooLarge,
)
from agent_runtime.sdk.budget.limits import Limits


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def budget_id() -> str:
    return f"test/budget/{uuid.uuid4().hex[:8]}"


def _most_in_any_window(grants_ms: list[int], window_ms: int) -> int:
    grants_ms = sorted(grants_ms)
    most, start = 0, 0
    for end, at in enumerate(grants_ms):
        while grants_ms[start] <= at - window_ms:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_clients_of_one_key_share_its_requests_per_second(redis: Redis,
                                                               budget_id: str) -> None:
    limits = Limits(requests_per_second=25)
    # Three clients, as three pods would hold, each with four callers wanting all they can get.
    clients = [BudgetLimiter(redis, budget_id, limits, margin=0.0) for _ in range(3)]
    grants: list[int] = []
    stop = time.monotonic() + 3.0

    async def caller(limiter: BudgetLimiter) -> None:
        while (left := stop - time.monotonic()) > 0:
            try:
                permit = await limiter.acquire(max_wait=left)
            except BudgetTimeout:
                return
            grants.append(permit.granted_ms)

    await asyncio.gather(*(caller(limiter) for limiter in clients for _ in range(4)))
    # Never more than the limit within any second of Redis's clock...
    assert _most_in_any_window(grants, 1000) <= 25
    # ...and the callers, always waiting, got nearly all of it (3 s at 25/s, the first second
    # a full window at once).
    assert len(grants) >= 0.95 * 75


async def test_a_release_wakes_a_waiter_at_once(redis: Redis, budget_id: str) -> None:
    limiter = BudgetLimiter(redis, budget_id, Limits(concurrent_requests=2),
                            lease_seconds=60)
    in_flight = 0
    most = 0

    async def call() -> None:
        nonlocal in_flight, most
        async with limiter.permit():
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.2)
            in_flight -= 1

    started = time.monotonic()
    await asyncio.gather(*(call() for _ in range(6)))
    assert most == 2
    # Three rounds of 0.2 s: the waiters were woken by releases, not by the 60 s leases ending.
    assert time.monotonic() - started < 10
    assert (await limiter.usage()).in_flight == 0


async def test_a_dead_workers_permit_comes_back_when_its_lease_ends(redis: Redis,
                                                                  budget_id: str) -> None:
    limits = Limits(concurrent_requests=1)
    dead = BudgetLimiter(redis, budget_id, limits, lease_seconds=1.0)
    await dead.acquire()  # never released: its worker was killed
    alive = BudgetLimiter(redis, budget_id, limits, lease_seconds=30)
    assert isinstance(await alive.try_acquire(), tuple)
    permit = await alive.acquire(max_wait=10)
    assert permit.waited_for == "concurrent_requests"
    assert 0.5 < permit.waited_seconds < 10


async def test_tokens_are_reserved_then_settled(redis: Redis, budget_id: str) -> None:
    limiter = BudgetLimiter(redis, budget_id, Limits(tokens_per_minute=1000))
    first = await limiter.acquire(tokens=400)
    await limiter.acquire(tokens=400)
    refused = await limiter.try_acquire(tokens=400)
    assert isinstance(refused, tuple)
    assert refused[1] == "tokens_per_minute"
    assert refused[0] > 50  # the reservations leave the window in about a minute
    await first.settle(100)  # the call used less than its estimate
    assert isinstance(await limiter.try_acquire(tokens=400), Permit)
    assert (await limiter.usage()).tokens_last_minute == 900


async def test_a_reservation_larger_than_the_minute_fails_at_once(redis: Redis,
                                                                  budget_id: str) -> None:
    limiter = BudgetLimiter(redis, budget_id, Limits(tokens_per_minute=1000))
    with pytest.raises(ReservationTooLarge, match="exceeds the 1000 tokens per minute"):
        await limiter.acquire(tokens=1001, max_wait=60)


async def test_a_providers_retry_after_holds_every_client(redis: Redis,
                                                          budget_id: str) -> None:
    limits = Limits(requests_per_second=100)
    told = BudgetLimiter(redis, budget_id, limits)
    other = BudgetLimiter(redis, budget_id, limits)
    await told.cool_down(0.5)
    permit = await other.acquire(max_wait=10)
    assert permit.waited_for == "cooldown"
    assert permit.waited_seconds >= 0.4


async def test_waiting_longer_than_allowed_says_on_what(redis: Redis, budget_id: str) -> None:
    limiter = BudgetLimiter(redis, budget_id, Limits(requests_per_minute=1))
    await limiter.acquire()
    with pytest.raises(BudgetTimeout, match="waiting on requests_per_minute"):
        await limiter.acquire(max_wait=0.2)


async def test_grants_lost_by_redis_hold_the_key_for_a_window(redis: Redis,
                                                              budget_id: str) -> None:
    limiter = BudgetLimiter(redis, budget_id, Limits(requests_per_second=5))
    for _ in range(5):
        await limiter.acquire()
    # Redis restarted without them: its log is empty, but the provider still counts them.
    await redis.delete(*limiter.keys.all)
    refused = await limiter.try_acquire()
    assert isinstance(refused, tuple)
    assert refused[1] == "recovering"
    permit = await limiter.acquire(max_wait=5)
    assert permit.waited_seconds >= 0.5
