"""What becomes of tasks that cannot succeed: malformed entries, unknown handlers, failing
handlers (retried with backoff, then dead-lettered) and permanent errors (dead-lettered at once);
and what the SDK promises about cancellation, idempotency keys and payload size."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from agent_runtime.errors import PayloadTooLargeError, TaskCancelledError
from agent_runtime.sdk.client import TaskClient
from tests.integration.runtime.handlers import executions_key
from tests.plugins.runtime import RuntimePool, StartSupervisor
from tests.waiting import eventually_async

pytestmark = [pytest.mark.services, pytest.mark.slow]


async def test_malformed_entries_and_unknown_handlers_are_dead_lettered_with_the_reason(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    supervisor = start_supervisor(runtime_pool)
    stream = runtime_pool.config.stream_key
    # What a buggy producer could write straight to the stream.
    await redis_client.xadd(stream, {"id": "no-payload", "handler": "default",
                                     "enqueued_at": "1"})
    await redis_client.xadd(stream, {"id": "bad-json", "handler": "default", "payload": "{oops",
                                     "enqueued_at": "1"})
    await redis_client.xadd(stream, {"garbage": "x"})
    unknown = await task_client.submit({"a": 1}, handler="nope")

    results = await task_client.wait_many(["no-payload", "bad-json", unknown], max_wait=30)

    assert results["no-payload"].status == "failed"
    assert "missing field(s) payload" in (results["no-payload"].error or "")
    assert "payload is not JSON" in (results["bad-json"].error or "")
    assert "unknown handler 'nope'" in (results[unknown].error or "")

    async def all_dead() -> list[tuple[str, dict[str, str]]]:
        rows = await task_client.dead_letters()
        return rows if len(rows) == 4 else []

    dead = await eventually_async(all_dead, within=10)
    reasons = {fields.get("id", "<none>"): fields["dead_reason"] for _id, fields in dead}
    assert "malformed" in reasons["<none>"]
    assert "unknown handler" in reasons[unknown]
    # Nothing is left pending, so nothing will be retried forever.
    assert await redis_client.xlen(stream) == 0
    assert supervisor.metric_reaching("agentpool_tasks_dead_lettered_total",
                                      3, reason="malformed") == 3
    assert supervisor.metric_reaching("agentpool_tasks_dead_lettered_total",
                                      1, reason="unknown_handler") == 1


async def test_failing_handler_is_retried_with_backoff_then_dead_lettered(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    runtime_pool.update(max_deliveries=3, retry_backoff_seconds=0.4, retry_backoff_max_seconds=2)
    supervisor = start_supervisor(runtime_pool)
    started = time.monotonic()
    failing = await task_client.submit({"n": 1}, handler="fail")
    permanent = await task_client.submit({"n": 2}, handler="permanent")

    results = await task_client.wait_many([failing, permanent], max_wait=30)

    executions = await redis_client.hgetall(executions_key(runtime_pool.config.pool))
    assert results[failing].status == "failed"
    assert results[failing].error == "RuntimeError: boom 1"
    assert results[failing].attempts == 3
    assert executions[failing] == "3"
    # Backoff of at least base/2 then base: 0.2 s + 0.4 s before the third run.
    assert time.monotonic() - started >= 0.6
    assert results[permanent].status == "failed"
    assert executions[permanent] == "1"
    assert supervisor.metric_reaching("agentpool_task_retries_total", 2, task_type="fail") == 2
    assert supervisor.metric_reaching("agentpool_tasks_dead_lettered_total",
                                      1, reason="retries_exhausted") == 1
    assert supervisor.metric_reaching("agentpool_tasks_dead_lettered_total",
                                      1, reason="permanent_error") == 1
    assert supervisor.metric_reaching("agentpool_tasks_processed_total", 3, task_type="fail",
                                      outcome="failure") == 3


async def test_a_result_json_cannot_hold_fails_its_task_and_a_large_one_is_stored_whole(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor,
        task_client: TaskClient) -> None:
    runtime_pool.update(max_deliveries=1)
    start_supervisor(runtime_pool)
    bad = await task_client.submit({}, handler="unstorable")
    big = await task_client.submit({"big": 100_000}, handler="unstorable")

    results = await task_client.wait_many([bad, big], max_wait=30)

    assert results[bad].status == "failed"
    assert "TypeError: Object of type set is not JSON serializable" in (results[bad].error or "")
    assert results[big].status == "succeeded"
    assert results[big].result == {"text": "é" * 100_000, "n": 1}
    assert (results[big].task_id, results[big].handler, results[big].attempts) == (
        big, "unstorable", 1)


async def test_cancel_a_running_and_a_queued_task(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    runtime_pool.update(workers=1, concurrency=1)
    start_supervisor(runtime_pool)
    running = await task_client.submit({"seconds": 30}, handler="sleepy")
    queued = await task_client.submit({"n": 1})

    async def started() -> bool:
        return bool(await redis_client.hget(executions_key(runtime_pool.config.pool), running))

    await eventually_async(started, within=20)
    await task_client.cancel(queued)
    await task_client.cancel(running)

    results = await task_client.wait_many([running, queued], max_wait=10)
    assert results[running].status == "cancelled"
    assert results[queued].status == "cancelled"
    # The queued task never ran.
    assert not await redis_client.hget(executions_key(runtime_pool.config.pool), queued)
    with pytest.raises(TaskCancelledError):
        await task_client.result(running, max_wait=1)


async def test_idempotency_key_returns_the_first_task(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor,
        task_client: TaskClient, redis_client: Redis) -> None:
    start_supervisor(runtime_pool)
    first = await task_client.submit({"n": 1}, idempotency_key="order-42")
    second = await task_client.submit({"n": 2}, idempotency_key="order-42")
    assert second == first
    assert (await task_client.result(first, max_wait=20))["n"] == 1
    executions = await redis_client.hgetall(executions_key(runtime_pool.config.pool))
    assert executions == {first: "1"}


async def test_payload_limit_is_enforced_before_queueing(
        runtime_pool: RuntimePool, task_client: TaskClient, redis_client: Redis) -> None:
    limit = runtime_pool.config.max_payload_bytes
    with pytest.raises(PayloadTooLargeError, match=f"above the pool's limit of {limit} bytes"):
        await task_client.submit({"blob": "x" * limit})
    assert await redis_client.exists(runtime_pool.config.stream_key) == 0
    # Exactly the limit (compact JSON) is accepted.
    fits = {"blob": "x" * (limit - len('{"blob":""}'))}
    await task_client.submit(fits)
    assert await redis_client.xlen(runtime_pool.config.stream_key) == 1


async def test_every_task_is_counted_once_as_received_and_once_as_processed(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor,
        task_client: TaskClient) -> None:
    # Quick tasks start and end within one frame to the supervisor (their start is folded into
    # their end); slow ones outlast the frame's wait, so their start goes on its own.
    supervisor = start_supervisor(runtime_pool)
    quick = await task_client.submit_many([{"n": n} for n in range(40)])
    slow = await task_client.submit_many([{"n": n, "sleep": 0.4} for n in range(4)])
    results = await task_client.wait_many(quick + slow, max_wait=30)
    assert {r.status for r in results.values()} == {"succeeded"}

    for name in ("agentpool_tasks_received_total", "agentpool_tasks_processed_total",
                 "agentpool_task_queue_duration_seconds_count",
                 "agentpool_task_duration_seconds_count"):
        assert supervisor.metric_reaching(name, 44, task_type="default") == 44, name
    await asyncio.sleep(1)  # counted once: nothing more arrives later
    assert supervisor.metric("agentpool_tasks_received_total", task_type="default") == 44
