"""The SDK client is safe to share: any number of concurrent waits, submits and cancels on one
`TaskClient`, each wait returning its own tasks' results as soon as they are recorded.

The tasks are completed by the real queue code (`TaskConsumer.complete`, the script workers use)
in random order, so the test controls when each result appears and can time every wait.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_runtime.queue.consumer import Delivery, TaskConsumer
from agent_runtime.queue.envelope import TaskEnvelope, TaskResult
from agent_runtime.sdk.client import RECHECK_SECONDS, TaskClient
from tests.plugins.runtime import RuntimePool

pytestmark = [pytest.mark.services]

WAITS = 300


async def _complete_in_random_order(queue: TaskConsumer, count: int, rng: random.Random,
                                    recorded: dict[str, float]) -> None:
    """Stand in for workers: read every task, record results a few at a time."""
    deliveries: list[Delivery] = []
    while len(deliveries) < count:
        deliveries += await queue.read_new(count - len(deliveries), 100)
    rng.shuffle(deliveries)
    while deliveries:
        size = rng.randint(1, 8)
        batch, deliveries = deliveries[:size], deliveries[size:]
        await asyncio.sleep(rng.uniform(0, 0.02))
        completions = []
        for delivery in batch:
            envelope = TaskEnvelope.from_fields(delivery.fields)
            result = TaskResult(task_id=envelope.task_id, status="succeeded",
                                handler="default", result=envelope.payload, attempts=1)
            completions.append(queue.complete(delivery.entry_id, envelope, result))
        await asyncio.gather(*completions)
        now = time.monotonic()
        for delivery in batch:
            recorded[delivery.fields["id"]] = now


async def test_hundreds_of_concurrent_waits_on_one_client(
        runtime_pool: RuntimePool, task_client: TaskClient, redis_client: Redis) -> None:
    rng = random.Random(5)
    queue = TaskConsumer(redis_client, redis_client, runtime_pool.config, "stand-in-worker")
    await queue.ensure_group()
    ids = [await task_client.submit({"n": n}) for n in range(WAITS)]
    returned: dict[str, float] = {}
    recorded: dict[str, float] = {}

    async def wait(task_id: str) -> TaskResult:
        result = await task_client.wait(task_id, max_wait=30)
        returned[task_id] = time.monotonic()
        return result

    async def busy_meanwhile() -> None:
        # Submits and cancels on the same client while it waits.
        for n in range(20):
            await task_client.cancel(await task_client.submit({"other": n}))

    waits = [asyncio.create_task(wait(t)) for t in ids]
    await asyncio.sleep(0.1)  # every wait is waiting before the first result
    await asyncio.gather(_complete_in_random_order(queue, WAITS, rng, recorded),
                         busy_meanwhile())
    results = await asyncio.gather(*waits)

    assert [r.result["n"] for r in results] == list(range(WAITS))
    lags = sorted(returned[t] - recorded[t] for t in ids)
    print(f"\n{WAITS} concurrent waits: return after the result was recorded: median "
          f"{lags[len(lags) // 2] * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms")
    # Woken by the reply, not by the periodic re-read of results.
    assert lags[-1] < RECHECK_SECONDS / 2


async def test_concurrent_wait_many_calls_share_tasks_and_each_get_their_own(
        runtime_pool: RuntimePool, task_client: TaskClient, redis_client: Redis) -> None:
    queue = TaskConsumer(redis_client, redis_client, runtime_pool.config, "stand-in-worker")
    await queue.ensure_group()
    ids = [await task_client.submit({"n": n}) for n in range(40)]
    groups = [ids[:20], ids[10:30], ids[25:], ids[::3], ids]

    waits = [asyncio.create_task(task_client.wait_many(group, max_wait=30)) for group in groups]
    await asyncio.sleep(0.1)
    await _complete_in_random_order(queue, len(ids), random.Random(9), {})
    outcomes = await asyncio.gather(*waits)

    for group, outcome in zip(groups, outcomes, strict=True):
        assert list(outcome) == group
        assert [outcome[t].result["n"] for t in group] == [ids.index(t) for t in group]
    # A wait for a finished task returns at once, without a reply to wake it.
    started = time.monotonic()
    assert (await task_client.wait(ids[0], max_wait=5)).result == {"n": 0}
    assert time.monotonic() - started < RECHECK_SECONDS / 2


async def test_rounds_of_five_concurrent_waits_each_get_their_own_result_at_once(
        runtime_pool: RuntimePool, task_client: TaskClient, redis_client: Redis) -> None:
    # The report: in rounds of five concurrent waits, 206 of 500 raised KeyError (one wait
    # took the others' replies as its own) and others waited a second too long.
    queue = TaskConsumer(redis_client, redis_client, runtime_pool.config, "stand-in-worker")
    await queue.ensure_group()
    rng = random.Random(11)
    slowest = 0.0
    for _round in range(20):
        ids = [await task_client.submit({"n": n}) for n in range(5)]
        waits = [asyncio.create_task(task_client.wait(t, max_wait=10)) for t in ids]
        await asyncio.sleep(0.02)  # all five are waiting
        recorded: dict[str, float] = {}
        await _complete_in_random_order(queue, 5, rng, recorded)
        results = await asyncio.gather(*waits)
        slowest = max(slowest, time.monotonic() - max(recorded.values()))
        assert [r.task_id for r in results] == ids
    assert slowest < RECHECK_SECONDS / 2


async def test_concurrent_single_submits_share_round_trips_and_each_gets_its_task(
    runtime_pool: RuntimePool, task_client: TaskClient, redis_client: Redis,
) -> None:
    # Three hundred callers each submitting one task, all at once: their XADDs go out
    # together (one pipeline per event-loop iteration), yet each caller gets its own task id
    # and every payload is queued exactly once.
    ids = await asyncio.gather(*(task_client.submit({"n": i}) for i in range(300)))
    assert len(set(ids)) == 300
    entries: Any = await redis_client.xrange(runtime_pool.config.stream_key)
    assert len(entries) == 300
    queued = {TaskEnvelope.from_fields(fields).task_id for _, fields in entries}
    assert queued == set(ids)

    # A stream key holding another type fails every caller of that batch with Redis's error,
    # not with a silent loss.
    await redis_client.delete(runtime_pool.config.stream_key)
    await redis_client.set(runtime_pool.config.stream_key, "not a stream")
    outcomes = await asyncio.gather(*(task_client.submit({"n": i}) for i in range(5)),
                                    return_exceptions=True)
    assert all("WRONGTYPE" in str(o) for o in outcomes), outcomes
