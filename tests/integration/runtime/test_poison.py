"""Entries no SDK would write (another producer's bytes, a payload too large or too deep, a
reply key of the wrong type): each is dead-lettered, or recorded, at first sight, with a reason
that says why, and costs the healthy tasks read with it nothing. Nothing here crashes a worker
or stops the supervisor's upkeep."""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_runtime.queue.envelope import TaskEnvelope
from agent_runtime.sdk.client import TaskClient
from tests.integration.runtime.handlers import executions_key
from tests.plugins.runtime import RunningSupervisor, RuntimePool, StartSupervisor
from tests.waiting import eventually_async

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client that writes and reads bytes, as any other producer might."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def add(raw_redis: Redis, fields: dict[Any, Any], stream: str) -> str:
    """XADD as another producer would; returns the entry id."""
    entry_id: Any = await raw_redis.xadd(stream, fields)
    return bytes(entry_id).decode()


def entry(task_id: str, payload: bytes = b"{}", **extra: bytes) -> dict[Any, Any]:
    return {b"id": task_id.encode(), b"handler": b"default", b"payload": payload,
            b"enqueued_at": repr(time.time()).encode(), **{k.encode(): v
                                                           for k, v in extra.items()}}


async def dead_letters_by_source(client: TaskClient, count: int,
                                 within: float = 30) -> dict[str, dict[str, str]]:
    """The dead-letter stream's entries keyed by the stream entry they came from, once there
    are `count` of them."""
    async def enough() -> dict[str, dict[str, str]]:
        rows = await client.dead_letters(1000)
        return {fields["source_entry"]: fields for _id, fields in rows} if len(rows) >= count \
            else {}

    return await eventually_async(enough, within=within)


def assert_no_worker_crashed(supervisor: RunningSupervisor) -> None:
    assert supervisor.metric("agentpool_worker_restarts_total", reason="crash") == 0
    assert "Traceback" not in supervisor.log(), supervisor.log()[-3000:]


async def test_an_undecodable_entry_costs_its_batch_mates_nothing_and_upkeep_goes_on(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        raw_redis: Redis, redis_client: Redis) -> None:
    # One worker, one read: the poison entry is read in the same batch as healthy tasks.
    runtime_pool.update(workers=1, concurrency=8)
    stream = runtime_pool.config.stream_key
    before = await task_client.submit_many([{"n": n, "sleep": 0.2} for n in range(3)])
    poison = await add(raw_redis, entry("poison", b'{"text": "caf\xe9"}'), stream)
    after = await task_client.submit_many([{"n": n, "sleep": 0.2} for n in range(3, 6)])
    supervisor = start_supervisor(runtime_pool)

    results = await task_client.wait_many(before + after, max_wait=30)

    assert [results[t].result["n"] for t in before + after] == list(range(6))
    dead = await dead_letters_by_source(task_client, 1)
    reason = dead[poison]["dead_reason"]
    assert reason.startswith("malformed task: field 'payload' is not valid UTF-8"), reason
    assert "\\xe9" in reason  # the offending byte, as text
    failed = await task_client.get("poison")
    assert failed is not None
    assert failed.status == "failed"
    # The dead-letter copy keeps the producer's bytes exactly.
    copies: Any = await raw_redis.xrange(runtime_pool.config.dead_letter_key)
    [(_id, copied)] = copies
    assert copied[b"payload"] == b'{"text": "caf\xe9"}'
    # The supervisor's upkeep still runs: a retry is promoted, and the pod stays ready.
    flaky = await task_client.submit({}, handler="flaky")
    assert (await task_client.result(flaky, max_wait=20)) == {"attempt": 2}
    assert supervisor.get("/readyz")[0] == 200
    assert_no_worker_crashed(supervisor)
    assert await redis_client.xlen(stream) == 0


async def test_bytes_anywhere_in_an_entry_are_dead_lettered_with_a_bytes_safe_reason(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        raw_redis: Redis) -> None:
    stream = runtime_pool.config.stream_key
    bad_id = await add(raw_redis, entry("bad-id") | {b"id": b"x\xff"}, stream)
    bad_name = await add(raw_redis, entry("bad-name") | {b"\xfe\xff": b"1"}, stream)
    bad_handler = await add(raw_redis, entry("bad-handler") | {b"handler": b"\xc3"}, stream)
    supervisor = start_supervisor(runtime_pool)

    dead = await dead_letters_by_source(task_client, 3)

    assert "field 'id' is not valid UTF-8" in dead[bad_id]["dead_reason"]
    assert "field name b'\\xfe\\xff' is not valid UTF-8" in dead[bad_name][
        "dead_reason"]
    assert "field 'handler' is not valid UTF-8" in dead[bad_handler]["dead_reason"]
    assert (await task_client.get("bad-handler")) is not None
    assert (await task_client.run({"n": 1}, max_wait=20))["n"] == 1
    assert_no_worker_crashed(supervisor)


async def test_a_reply_key_of_another_type_never_blocks_recording(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        redis_client: Redis) -> None:
    runtime_pool.update(workers=1, concurrency=8)
    stream = runtime_pool.config.stream_key
    broken_reply = task_client.keys.reply("not-a-list")
    await redis_client.set(broken_reply, "someone else's string")
    healthy = await task_client.submit_many([{"n": n} for n in range(4)])
    envelope = TaskEnvelope(task_id="odd-reply", handler="default", payload_json='{"n": 9}',
                            enqueued_at=time.time(), reply_to=broken_reply)
    fields: dict[Any, Any] = envelope.to_fields()
    await redis_client.xadd(stream, fields)
    elsewhere = f"someone-else:{runtime_pool.config.pool}:list"
    foreign = TaskEnvelope(task_id="foreign-reply", handler="default", payload_json="{}",
                           enqueued_at=time.time(), reply_to=elsewhere)
    foreign_fields: dict[Any, Any] = foreign.to_fields()
    foreign_entry = str(await redis_client.xadd(stream, foreign_fields))
    supervisor = start_supervisor(runtime_pool)

    results = await task_client.wait_many([*healthy, "odd-reply", "foreign-reply"], max_wait=30)

    assert [results[t].result["n"] for t in healthy] == [0, 1, 2, 3]
    # Its result is recorded and its entry acknowledged (not retried forever); the string is
    # left alone.
    assert results["odd-reply"].status == "succeeded"

    async def acknowledged() -> bool:
        return await redis_client.xlen(stream) == 0

    await eventually_async(acknowledged, within=10)
    assert await redis_client.get(broken_reply) == "someone else's string"
    # A reply list outside this pool's keys is refused before the task runs.
    assert results["foreign-reply"].status == "failed"
    dead = await dead_letters_by_source(task_client, 1)
    assert f"reply key {elsewhere!r} is not one of this pool's reply lists" in dead[
        foreign_entry]["dead_reason"]
    assert not await redis_client.exists(elsewhere)
    assert not await redis_client.hget(executions_key(runtime_pool.config.pool),
                                       "foreign-reply")
    assert_no_worker_crashed(supervisor)


async def test_the_worker_enforces_the_payload_limit_and_nesting_depth(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        raw_redis: Redis, redis_client: Redis) -> None:
    runtime_pool.update(max_payload_bytes=20_000)
    stream = runtime_pool.config.stream_key
    big = await add(raw_redis, entry("big", b'{"x": "' + b"y" * 30_000 + b'"}'), stream)
    deep = await add(raw_redis, entry("deep", b"[" * 5000 + b"]" * 5000), stream)
    long_id = await add(raw_redis, entry("i" * 5000), stream)
    supervisor = start_supervisor(runtime_pool)

    dead = await dead_letters_by_source(task_client, 3)

    assert dead[big]["dead_reason"] == (
        "malformed task: payload is 30009 bytes, above the pool's limit of 20000 bytes "
        "(written to the stream without the SDK's check)")
    assert "payload is nested too deeply" in dead[deep]["dead_reason"]
    assert "field 'id' is 5000 bytes" in dead[long_id]["dead_reason"]
    # A copy too large for the dead-letter stream keeps its first KiB only, and says so.
    assert len(dead[big]["payload"]) == 1024
    assert dead[big]["truncated"] == "payload"
    for task_id in ("big", "deep"):
        result = await task_client.get(task_id)
        assert result is not None
        assert result.status == "failed"
    assert not await redis_client.hgetall(executions_key(runtime_pool.config.pool))
    assert (await task_client.run({"n": 1}, max_wait=20))["n"] == 1
    assert_no_worker_crashed(supervisor)


def _without_some_required(rng: random.Random, base: dict[Any, Any]) -> dict[Any, Any]:
    for name in rng.sample([b"id", b"handler", b"payload", b"enqueued_at"], rng.randint(1, 3)):
        base.pop(name)
    return base


def _adversarial(rng: random.Random, n: int, limit: int, foreign_reply: str) -> dict[Any, Any]:
    """Entry number `n` of the fuzz: something no SDK writes."""
    base = entry(f"bad-{n}", b'{"n": %d}' % n)
    junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    field = rng.choice([b"id", b"handler", b"payload", b"enqueued_at", b"retries", b"error"])
    depth = rng.randrange(1500, limit // 2)
    kinds: list[Callable[[], dict[Any, Any]]] = [
        lambda: _without_some_required(rng, base),
        lambda: base | {field: b"\xff" + junk},  # not UTF-8
        lambda: base | {b"\xc3(" + junk: b"x"},  # a field name that is not UTF-8
        lambda: {junk: junk[::-1] + b"\x80"},  # nothing but binary
        lambda: base | {b"payload": b'{"x": "' + b"y" * (limit + rng.randrange(1, 5000))
                        + b'"}'},  # above the pool's payload limit
        lambda: base | {rng.choice([b"id", b"handler"]): b"k" * rng.randrange(1025, 100_000)},
        lambda: base | {b"payload": b"[" * depth + b"]" * depth},  # nested too deeply
        lambda: base | {b"payload": rng.choice([b"{oops", b"", b"\x00\x01", b"[1,", b"nul"])},
        lambda: base | {b"enqueued_at": rng.choice([b"soon", b"nan", b"inf", b"1e999", b"-"])},
        lambda: base | {b"retries": rng.choice([b"-3", b"x", b"1.5", b"\xff"])},
        lambda: base | {b"handler": b"no-such-handler"},
        lambda: base | {b"reply": foreign_reply.encode()},
        lambda: base | {b"retries": b"999999"},  # already past max deliveries
        lambda: base | {b"id": b"", b"extra": junk},
    ]
    return kinds[n % len(kinds)]()


async def test_fuzz_hostile_entries_interleaved_with_healthy_tasks(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        raw_redis: Redis, redis_client: Redis) -> None:
    seed = 20260513
    rng = random.Random(seed)
    limit = 4096
    runtime_pool.update(workers=2, concurrency=4, max_payload_bytes=limit, max_deliveries=3)
    pool = runtime_pool.config.pool
    stream = runtime_pool.config.stream_key
    broken_reply = task_client.keys.reply("a-string")
    await redis_client.set(broken_reply, "not a list")
    supervisor = start_supervisor(runtime_pool)
    healthy: list[str] = []
    bad: list[str] = []
    odd_reply: list[str] = []
    plan = ["healthy"] * 200 + ["bad"] * 84 + ["odd"] * 6
    rng.shuffle(plan)
    for step, what in enumerate(plan):
        if what == "healthy":
            healthy.append(await task_client.submit({"n": step}))
        elif what == "bad":
            fields = _adversarial(rng, len(bad), limit, f"elsewhere:{pool}")
            bad.append(await add(raw_redis, fields, stream))
        else:
            envelope = TaskEnvelope(task_id=f"odd-{step}", handler="default",
                                    payload_json=json.dumps({"n": step}),
                                    enqueued_at=time.time(), reply_to=broken_reply)
            odd_reply.append(envelope.task_id)
            await add(raw_redis, dict(envelope.to_fields()), stream)

    results = await task_client.wait_many(healthy + odd_reply, max_wait=60)

    print(f"\nfuzz (seed {seed}): {len(healthy)} healthy, {len(bad)} hostile, "
          f"{len(odd_reply)} with a reply key of another type")
    # Every healthy task completed exactly as without the others: once, with its own value.
    assert all(results[t].status == "succeeded" for t in healthy + odd_reply)
    executions = await redis_client.hgetall(executions_key(pool))
    assert {t: executions.get(t) for t in healthy + odd_reply} == dict.fromkeys(
        healthy + odd_reply, "1")
    # Every hostile entry was dead-lettered once, with a reason that is text.
    dead = await dead_letters_by_source(task_client, len(bad))
    assert sorted(dead) == sorted(bad)
    for entry_id in bad:
        reason = dead[entry_id]["dead_reason"]
        assert reason.encode("utf-8")  # raises on anything that is not valid text
        assert reason.startswith(("malformed task:", "unknown handler",
                                  "max deliveries (3) exceeded")), reason
    assert await redis_client.xlen(stream) == 0
    assert (await redis_client.xpending(stream, "workers"))["pending"] == 0
    assert_no_worker_crashed(supervisor)
    assert supervisor.metric("agentpool_worker_restarts_total") == 0
    assert supervisor.get("/readyz")[0] == 200
