"""The Redis Streams queue primitives against the real Redis: leases, reclaiming, hand-over,
hand-back, delayed retries and trimming - the guarantees the worker and supervisor build on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_runtime.queue.consumer import TaskConsumer
from agent_runtime.queue.envelope import TaskEnvelope, TaskResult, execution_number
from agent_runtime.queue.maintenance import QueueMaintenance
from agent_runtime.sdk.client import TaskClient
from tests.plugins.runtime import RuntimePool

pytestmark = [pytest.mark.services]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def _queue(redis: Redis, pool: RuntimePool, consumer: str) -> TaskConsumer:
    return TaskConsumer(redis, redis, pool.config, consumer)


async def _add(redis: Redis, pool: RuntimePool, count: int) -> list[str]:
    ids = []
    for n in range(count):
        envelope = TaskEnvelope(task_id=f"task-{n}", handler="default", payload_json="{}",
                                enqueued_at=time.time())
        fields: dict[Any, Any] = dict(envelope.to_fields())
        ids.append(str(await redis.xadd(pool.config.stream_key, fields)))
    return ids


async def test_renewed_lease_keeps_a_long_task_from_being_stolen(
        runtime_pool: RuntimePool, redis: Redis) -> None:
    runtime_pool.update(lease_seconds=1)
    owner, thief = _queue(redis, runtime_pool, "owner"), _queue(redis, runtime_pool, "thief")
    maintenance = QueueMaintenance(redis, runtime_pool.config)
    await owner.ensure_group()
    await _add(redis, runtime_pool, 3)
    taken = await owner.read_new(10, 100)

    for _ in range(10):  # 3 s: three leases long
        await maintenance.renew_leases(["owner"])
        assert await thief.reclaim_idle(10) == []
        await asyncio.sleep(0.3)

    # The owner's pod stops renewing (it died): after the lease, another consumer takes it.
    await asyncio.sleep(1.2)
    stolen = await thief.reclaim_idle(10)
    assert sorted(d.entry_id for d in stolen) == sorted(d.entry_id for d in taken)
    assert {d.deliveries for d in stolen} == {2}


async def test_dead_workers_entries_move_to_its_replacement_counting_only_started_runs(
        runtime_pool: RuntimePool, redis: Redis) -> None:
    dead, heir = _queue(redis, runtime_pool, "dead"), _queue(redis, runtime_pool, "heir")
    maintenance = QueueMaintenance(redis, runtime_pool.config)
    await dead.ensure_group()
    await _add(redis, runtime_pool, 4)
    taken = await dead.read_new(3, 100)
    ran, waited = taken[0].entry_id, {d.entry_id for d in taken[1:]}

    # Only the first had started on the dead worker (its board said so).
    assert await maintenance.transfer("dead", "heir", started=[ran]) == 3
    adopted = {d.entry_id: d for d in await heir.adopt_own(set(), 10)}

    assert set(adopted) == {d.entry_id for d in taken}
    assert adopted[ran].deliveries == 2  # its next run is its second
    assert adopted[ran].suspect  # and it runs alone: it may be what killed the worker
    assert {adopted[e].deliveries for e in waited} == {1}  # never ran: nothing used up
    assert not any(adopted[e].suspect for e in waited)
    # Adopting again (the worker re-checks what it owns) is not another delivery.
    again = await heir.adopt_own({ran}, 10)
    assert {d.deliveries for d in again} == {1}
    consumers = await redis.xinfo_consumers(runtime_pool.config.stream_key, "workers")
    assert "dead" not in {c["name"] for c in consumers}
    # The fourth entry was never delivered and is still there for anyone.
    assert len(await heir.read_new(10, 100)) == 1


async def test_a_task_keeps_its_execution_count_across_hand_backs_and_retries(
        runtime_pool: RuntimePool, redis: Redis) -> None:
    first, second = _queue(redis, runtime_pool, "first"), _queue(redis, runtime_pool, "second")
    maintenance = QueueMaintenance(redis, runtime_pool.config)
    await first.ensure_group()
    await _add(redis, runtime_pool, 2)
    ran, queued = await first.read_new(2, 100)
    # `ran` died once with a worker (count 2) and its second run was interrupted by a drain;
    # `queued` was held but never started.
    await maintenance.transfer("first", "second", started=[ran.entry_id])
    assert await second.hand_back([ran.entry_id, queued.entry_id],
                                  started={ran.entry_id}) == 2

    back = {d.fields["id"]: d for d in await first.read_new(10, 100)}
    ran_again = back[ran.fields["id"]]
    assert TaskEnvelope.from_fields(ran_again.fields).retries == 2  # two runs so far
    assert ran_again.suspect  # one of them died with its worker
    assert TaskEnvelope.from_fields(back[queued.fields["id"]].fields).retries == 0
    assert not back[queued.fields["id"]].suspect
    # Its third run fails normally: the retry carries all three runs on.
    envelope = TaskEnvelope.from_fields(ran_again.fields)
    attempt = execution_number(envelope.retries, ran_again.deliveries)
    assert attempt == 3
    await first.retry(ran_again.entry_id, envelope, attempt, "boom", delay=0)
    assert await maintenance.promote_due() == 1
    [fourth] = await first.read_new(10, 100)
    assert execution_number(TaskEnvelope.from_fields(fourth.fields).retries,
                            fourth.deliveries) == 4


async def test_hand_back_makes_unfinished_work_available_at_once(
        runtime_pool: RuntimePool, redis: Redis) -> None:
    leaving, staying = _queue(redis, runtime_pool, "leaving"), _queue(redis, runtime_pool, "stay")
    await leaving.ensure_group()
    await _add(redis, runtime_pool, 2)
    taken = await leaving.read_new(2, 100)

    assert await leaving.hand_back([d.entry_id for d in taken], started=set()) == 2

    again = await staying.read_new(10, 100)
    assert sorted(d.fields["id"] for d in again) == ["task-0", "task-1"]
    summary = await redis.xpending(runtime_pool.config.stream_key, "workers")
    assert summary["pending"] == 2  # only the new deliveries; the originals are gone


async def test_retry_waits_in_the_delayed_set_then_comes_back(
        runtime_pool: RuntimePool, redis: Redis) -> None:
    queue = _queue(redis, runtime_pool, "w")
    maintenance = QueueMaintenance(redis, runtime_pool.config)
    await queue.ensure_group()
    await _add(redis, runtime_pool, 1)
    [delivery] = await queue.read_new(1, 100)
    envelope = TaskEnvelope.from_fields(delivery.fields)

    await queue.retry(delivery.entry_id, envelope, 1, "ValueError: flaky", delay=0.5)
    assert await maintenance.promote_due() == 0  # not due yet
    assert await queue.read_new(1, 100) == []
    await asyncio.sleep(0.6)
    assert await maintenance.promote_due() == 1

    [retried] = await queue.read_new(1, 100)
    again = TaskEnvelope.from_fields(retried.fields)
    assert (again.task_id, again.retries, again.error) == ("task-0", 1, "ValueError: flaky")


async def test_trimming_never_drops_pending_or_unread_entries(
        runtime_pool: RuntimePool, redis: Redis) -> None:
    queue = _queue(redis, runtime_pool, "w")
    maintenance = QueueMaintenance(redis, runtime_pool.config)
    await queue.ensure_group()
    ids = await _add(redis, runtime_pool, 10)
    await queue.read_new(5, 100)
    # Acknowledged without deletion (as a foreign consumer might): the only trimmable ones.
    await redis.xack(runtime_pool.config.stream_key, "workers", ids[0], ids[1])

    assert await maintenance.safe_trim() == 2

    rows: Any = await redis.xrange(runtime_pool.config.stream_key)
    left = [entry_id for entry_id, _ in rows]
    assert left == ids[2:]
    adopted = await queue.adopt_own(set(), 10)
    assert sorted(d.entry_id for d in adopted) == ids[2:5]
    assert [d.entry_id for d in await queue.read_new(10, 100)] == ids[5:]


async def test_completion_records_result_and_acknowledges_even_after_a_script_flush(
        redis: Redis, runtime_pool: RuntimePool) -> None:
    queue = _queue(redis, runtime_pool, "pod0-x-0.1")
    await queue.ensure_group()
    await _add(redis, runtime_pool, 3)
    deliveries = await queue.read_new(3, 100)
    results = [TaskResult(task_id=d.fields["id"], status="succeeded", handler="default",
                          result={"n": i}) for i, d in enumerate(deliveries)]
    reply = queue.keys.reply("client")
    envelope = TaskEnvelope(task_id="task-0", handler="default", payload_json="{}",
                            enqueued_at=time.time(), reply_to=reply)
    await queue.complete(deliveries[0].entry_id, envelope, results[0])
    await redis.script_flush()  # what a Redis restart does to loaded scripts
    # One batch: a task nobody waits for, then one whose client waits for its reply.
    waited = TaskEnvelope(task_id="task-2", handler="default", payload_json="{}",
                          enqueued_at=time.time(), reply_to=reply)
    await asyncio.gather(queue.complete(deliveries[1].entry_id, None, results[1]),
                         queue.complete(deliveries[2].entry_id, waited, results[2]))

    stored = [TaskResult.from_json(await redis.get(queue.keys.result(r.task_id)) or "")
              for r in results]
    assert [s.result for s in stored] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert await redis.lrange(reply, 0, -1) == ["task-0", "task-2"]  # the clients are told
    assert await redis.ttl(reply) > 0
    # Acknowledged and deleted: nothing pending, nothing left in the stream.
    assert (await redis.xpending(queue.keys.stream, queue.keys.group))["pending"] == 0
    assert await redis.xlen(queue.keys.stream) == 0


async def test_completions_carry_the_next_read_when_the_worker_asks_for_it(
        redis: Redis, runtime_pool: RuntimePool) -> None:
    queue = _queue(redis, runtime_pool, "pod0-x-0.1")
    await queue.ensure_group()
    ids = await _add(redis, runtime_pool, 5)
    first = await queue.read_new(2, 100)
    asked: list[int] = []
    delivered: list[list[str]] = []

    def plan(freed: int) -> int:
        asked.append(freed)
        return freed

    queue.read_with_completions(plan, lambda got: delivered.append([d.entry_id for d in got]))

    def done(n: int) -> TaskResult:
        return TaskResult(task_id=first[n].fields["id"], status="succeeded",
                          handler="default", result={"n": n})

    await asyncio.gather(*(queue.complete(first[n].entry_id, None, done(n)) for n in (0, 1)))

    # One batch of two completions asked for two entries, and the same round trip read
    # them: delivered before the completions' callers resumed.
    assert asked == [2]
    assert delivered == [ids[2:4]]
    stored = [await redis.get(queue.keys.result(done(n).task_id)) for n in (0, 1)]
    assert [TaskResult.from_json(s or "").result for s in stored] == [{"n": 0}, {"n": 1}]
    pending = await redis.xpending_range(queue.keys.stream, queue.keys.group, "-", "+", 10)
    assert [row["message_id"] for row in pending] == ids[2:4]  # read, now ours

    # A plan of 0 (the worker may not take more) reads nothing.
    queue.read_with_completions(lambda freed: 0, lambda got: delivered.append(["unexpected"]))
    await queue.complete(ids[2], None, TaskResult(task_id="task-2", status="succeeded",
                                                  handler="default"))
    assert delivered == [ids[2:4]]
    assert [d.entry_id for d in await queue.read_new(10, 100)] == ids[4:]


async def test_reads_skip_the_cancellation_check_only_while_no_cancellation_was_requested(
        runtime_pool: RuntimePool, redis: Redis, task_client: TaskClient) -> None:
    queue = _queue(redis, runtime_pool, "w")
    await queue.ensure_group()
    await _add(redis, runtime_pool, 1)
    [quiet] = await queue.read_new(1, 100)
    assert not quiet.may_be_cancelled  # no cancellation anywhere: start without a check

    await task_client.cancel("some-other-task")
    await _add(redis, runtime_pool, 1)
    [after] = await queue.read_new(1, 100)
    assert after.may_be_cancelled  # any cancellation since: this one is checked
    # Adopted or reclaimed entries come without that knowledge, so they are always checked.
    adopted = await queue.adopt_own(set(), 10)
    assert len(adopted) == 2
    assert all(d.may_be_cancelled for d in adopted)


async def _consumer_names(redis: Redis, pool: RuntimePool) -> dict[str, int]:
    rows = await redis.xinfo_consumers(pool.config.stream_key, "workers")
    return {str(row["name"]): int(row["pending"]) for row in rows}


async def test_consumers_of_gone_pods_are_removed_once_empty_and_live_ones_never(
        runtime_pool: RuntimePool, redis: Redis) -> None:
    runtime_pool.update(lease_seconds=1)
    live = QueueMaintenance(redis, runtime_pool.config, pod_id="live-aaa")
    gone = QueueMaintenance(redis, runtime_pool.config, pod_id="gone-bbb")
    await live.ensure_group()
    await _add(redis, runtime_pool, 3)
    # A live pod's idle consumer (its worker paused) and a busy one.
    await _queue(redis, runtime_pool, "live-aaa-0.1").read_new(1, 100)
    await redis.xgroup_createconsumer(runtime_pool.config.stream_key, "workers", "live-aaa-1.1")
    # A pod that stopped renewing: one consumer empty, one still holding an entry.
    await _queue(redis, runtime_pool, "gone-bbb-0.1").read_new(1, 100)
    await redis.xgroup_createconsumer(runtime_pool.config.stream_key, "workers", "gone-bbb-1.1")
    # Something that is not ours (no pod registered): only the long idle rule applies.
    await redis.xgroup_createconsumer(runtime_pool.config.stream_key, "workers", "other")
    await gone.renew_leases(["gone-bbb-0.1", "gone-bbb-1.1"])
    await asyncio.sleep(3.2)  # more than three leases without a renewal from gone-bbb
    await live.renew_leases(["live-aaa-0.1", "live-aaa-1.1"])

    assert await live.prune_consumers(idle_seconds=3600) == ["gone-bbb-1.1"]

    left = await _consumer_names(redis, runtime_pool)
    assert left == {"live-aaa-0.1": 1, "live-aaa-1.1": 0, "gone-bbb-0.1": 1, "other": 0}
    # Its entry is reclaimed elsewhere; then the gone pod's last consumer goes too.
    thief = _queue(redis, runtime_pool, "live-aaa-1.1")
    assert len(await thief.reclaim_idle(10)) == 1
    assert await live.prune_consumers(idle_seconds=3600) == ["gone-bbb-0.1"]
    assert set(await _consumer_names(redis, runtime_pool)) == {"live-aaa-0.1", "live-aaa-1.1",
                                                               "other"}
