"""A budget key's saturation as the operator sees it, against real Redis: the runtime's limiter
(`agent_runtime.sdk.budget`) uses up a key, and the operator's reader (`budget_usage.py`,
through the contract's key names) reports it saturated, then not once the window has passed,
the lease is given back, the cool-down is over or no task waits any more. An unreachable
Redis is an error naming the server, never its password."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from agent_runtime.contract import key_prefix
from agent_runtime.sdk.budget.limiter import BudgetLimiter
from agent_runtime.sdk.budget.limits import Limits
from agent_runtime.sdk.budget.waiting import WaitingBoard
from agentpool_operator.api import AgentBudgetSpec
from agentpool_operator.budget_saturation import ServerReading, key_saturation
from agentpool_operator.budget_usage import BudgetUsageReader
from tests.waiting import eventually_async

pytestmark = [pytest.mark.services]

SPEC = AgentBudgetSpec.model_validate({"keys": [
    {"name": "llm", "requestsPerSecond": 5, "concurrentRequests": 2}]})
(KEY,) = SPEC.keys


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def reader() -> AsyncIterator[BudgetUsageReader]:
    usage = BudgetUsageReader(client_name="agentpool-operator-test")
    yield usage
    await usage.close()


@pytest.fixture
def budget() -> str:
    """`namespace/budget`, unique per test: its keys share nothing with other tests."""
    return f"test-{uuid.uuid4().hex[:8]}/llm-budget"


def limiter(redis: Redis, budget: str) -> BudgetLimiter:
    # As a pod builds it (`sdk.context`): the key's id is `namespace/budget/key`.
    return BudgetLimiter(redis, f"{budget}/llm",
                         Limits(requests_per_second=5, concurrent_requests=2))


async def why_saturated(reader: BudgetUsageReader, redis_url: str, budget: str) -> str | None:
    reading = await reader.read(redis_url, {"llm": f"{budget}/llm"})
    assert reading.error is None, reading.error
    found = key_saturation(KEY, reading.keys["llm"])
    return found[0] if found else None


async def unsaturated(reader: BudgetUsageReader, redis_url: str, budget: str) -> bool:
    return await why_saturated(reader, redis_url, budget) is None


async def test_a_key_at_its_requests_per_second_is_saturated_until_the_window_passes(
        redis: Redis, redis_url: str, reader: BudgetUsageReader, budget: str) -> None:
    limits = limiter(redis, budget)
    assert await why_saturated(reader, redis_url, budget) is None
    for _ in range(5):
        async with limits.permit():
            pass
    assert await why_saturated(reader, redis_url, budget) == "RequestsPerSecond"
    # The grants leave the one-second window (widened by the margin): no longer saturated.
    await eventually_async(lambda: unsaturated(reader, redis_url, budget), within=5,
                           interval=0.05)


async def test_held_leases_a_cool_down_and_a_waiting_task_saturate_the_key(
        redis: Redis, redis_url: str, reader: BudgetUsageReader, budget: str) -> None:
    limits = limiter(redis, budget)
    first, second = await limits.acquire(), await limits.acquire()
    assert await why_saturated(reader, redis_url, budget) == "ConcurrentRequests"
    await first.release()
    await second.release()
    # Two requests in the last second are below every limit now.
    assert await why_saturated(reader, redis_url, budget) is None

    await limits.cool_down(0.3)
    assert await why_saturated(reader, redis_url, budget) == "CoolDown"
    await eventually_async(lambda: unsaturated(reader, redis_url, budget), within=5,
                           interval=0.05)

    board = WaitingBoard(redis, key_prefix("pool", "test"), budget_keys=limits.keys)
    async with board.waiting():
        assert await why_saturated(reader, redis_url, budget) == "TasksWaiting"
    assert await why_saturated(reader, redis_url, budget) is None


async def test_an_unreachable_redis_is_an_error_without_its_password(
        reader: BudgetUsageReader) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    url = f"redis://:s3cret-pw@127.0.0.1:{port}/0"
    reading = await reader.read(url, {"llm": "team/budget/llm"})
    assert isinstance(reading, ServerReading)
    assert reading.error is not None
    assert f"127.0.0.1:{port}/0" in reading.error
    assert "s3cret" not in reading.error
    # The next look within the period reports the same outage without trying again.
    assert (await reader.read(url, {"llm": "team/budget/llm"})).error == reading.error
