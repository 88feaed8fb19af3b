"""Budgeted HTTP calls against a fake provider that enforces its limits exactly: clients of one
budget key, as several pods hold them, use nearly all of the provider's limit and almost never
see a 429; a 429 holds every client; settled token counts free the rest of a reservation."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from agent_runtime.contract import BudgetKeyConfig, RuntimeConfig
from agent_runtime.sdk.budget.handle import BudgetedResponse, BudgetHandle, retry_after_seconds
from agent_runtime.sdk.budget.limiter import BudgetLimiter, BudgetTimeout
from agent_runtime.sdk.budget.limits import Limits
from agent_runtime.sdk.budget.waiting import WaitingBoard
from agent_runtime.sdk.http import HttpClient
from tests.fake_provider import FakeProvider, ProviderLimits
from tests.waiting import eventually_async


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


class Pod:
    """What one pod holds: its HTTP session and its client of the budget key."""

    def __init__(self, redis: Redis, key: BudgetKeyConfig, pool_prefix: str) -> None:
        self.http = HttpClient(RuntimeConfig(pool="budget-test", handler="tests:none"))
        limits = Limits(requests_per_second=key.requests_per_second,
                        requests_per_minute=key.requests_per_minute,
                        tokens_per_minute=key.tokens_per_minute,
                        concurrent_requests=key.concurrent_requests)
        self.budget = BudgetHandle(key, BudgetLimiter(redis, key.id, limits, lease_seconds=30),
                                   WaitingBoard(redis, pool_prefix), self.http)


def _key(*, requests_per_second: int | None = None, tokens_per_minute: int | None = None,
         concurrent_requests: int | None = None) -> BudgetKeyConfig:
    return BudgetKeyConfig(name="llm", budget=f"team/b-{uuid.uuid4().hex[:8]}",
                           requests_per_second=requests_per_second,
                           tokens_per_minute=tokens_per_minute,
                           concurrent_requests=concurrent_requests)


async def test_pods_sharing_a_key_use_the_providers_limit_without_429s(redis: Redis) -> None:
    provider = FakeProvider(ProviderLimits(requests_per_second=20, concurrent_requests=4),
                            latency_seconds=0.03)
    url = await provider.start()
    key = _key(requests_per_second=20, concurrent_requests=4)
    pods = [Pod(redis, key, "agentpool:{team/pool}") for _ in range(3)]
    stop = time.monotonic() + 4.0
    calls = 0

    async def caller(pod: Pod) -> None:
        nonlocal calls
        while (left := stop - time.monotonic()) > 0:
            try:
                answer = await pod.budget.call("POST", url, json={"tokens": 0}, max_wait=left)
            except BudgetTimeout:
                return
            assert answer.status == 200
            calls += 1

    try:
        await asyncio.gather(*(caller(pod) for pod in pods for _ in range(4)))
    finally:
        for pod in pods:
            await pod.http.close()
        await provider.stop()
    assert provider.most_in_any_window(1.0) <= 20
    assert provider.most_in_flight <= 4
    assert provider.throttled <= 0.01 * calls
    # 4 s of a 20/s limit (the first second at once): nearly all of it was used.
    assert calls >= 0.95 * 80


async def test_a_429_holds_every_client_for_its_retry_after(redis: Redis) -> None:
    # The budget claims more than the provider gives: the provider's answer must win.
    provider = FakeProvider(ProviderLimits(requests_per_second=1))
    url = await provider.start()
    key = _key(requests_per_second=50)
    told, other = (Pod(redis, key, "agentpool:{team/pool}") for _ in range(2))
    try:
        await told.budget.call("POST", url, json={})
        throttled_call = asyncio.create_task(told.budget.call("POST", url, json={}))
        await eventually_async(lambda: _cooling(told.budget.limiter), within=10, interval=0.01)
        # Another pod's call, made while the key cools down, waits it out instead of
        # earning a 429 of its own.
        started = time.monotonic()
        answer = await other.budget.call("POST", url, json={})
        waited = time.monotonic() - started
        retried = await throttled_call
    finally:
        for pod in (told, other):
            await pod.http.close()
        await provider.stop()
    assert retried.status == 200
    assert answer.status == 200
    assert waited >= 0.5
    # Nothing reached the provider while the first Retry-After (1 s) ran: neither the retry
    # nor the other pod's call.
    first_429 = provider.refused[0]
    arrivals = [*provider.accepted, *provider.refused]
    assert not [at for at in arrivals if first_429 + 0.05 < at < first_429 + 0.95]


async def _cooling(limiter: BudgetLimiter) -> bool:
    return (await limiter.usage()).cooldown_seconds > 0


async def test_settled_tokens_free_the_rest_of_a_reservation(redis: Redis) -> None:
    provider = FakeProvider(ProviderLimits(tokens_per_minute=600))
    url = await provider.start()
    pod = Pod(redis, _key(tokens_per_minute=600), "agentpool:{team/pool}")

    def used(answer: BudgetedResponse) -> int:
        return int(answer.json()["usage"]["total_tokens"])

    try:
        # Eight calls reserving 100 tokens each and using 50: without settling, only six fit
        # in a minute; settled, all eight run at once.
        answers = await asyncio.gather(*(
            pod.budget.call("POST", url, json={"tokens": 100, "used": 50}, tokens=100,
                            count_tokens=used, max_wait=20) for _ in range(8)))
    finally:
        await pod.http.close()
        await provider.stop()
    assert [a.tokens for a in answers] == [50] * 8
    assert provider.throttled == 0


async def test_a_task_waiting_on_its_budget_is_on_the_pools_board(redis: Redis) -> None:
    key = _key(concurrent_requests=1)
    pod = Pod(redis, key, f"agentpool:{{team/{uuid.uuid4().hex[:6]}}}")
    board = pod.budget._board.key

    async def second_call() -> None:
        async with pod.budget.permit():
            pass

    async with pod.budget.permit():
        waiter = asyncio.create_task(second_call())
        await eventually_async(lambda: _on_board(redis, board, 1), within=10, interval=0.05)
    await waiter
    assert await redis.zcard(board) == 0
    await pod.http.close()


async def _on_board(redis: Redis, board: str, count: int) -> bool:
    return bool(await redis.zcard(board) == count)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None
