"""The runtime's tables over time, against the real PostgreSQL: migrations that upgrade a
database holding results without losing a row, the SDK's reads staying index scans on a few
hundred thousand rows, and retiring a monthly partition without blocking readers.

Each test works in a schema of its own (a direct connection with its search_path), so it can
start from an old schema or fill tables without touching what other tests share."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from agent_runtime.db.migrations import V1, ensure_schema
from agent_runtime.db.partitions import (
    EVENTS_TABLE,
    RESULTS_TABLE,
    Partition,
    add_months,
    create_partition_sql,
    maintain_partitions,
    partition_name,
    retire_partition,
)
from agent_runtime.db.results import FETCH_EVENTS, FETCH_RESULT, ResultStore
from agent_runtime.queue.envelope import TaskResult

pytestmark = [pytest.mark.services]


@dataclass
class Schema:
    """A fresh schema: `connect()` opens direct connections whose tables live in it."""

    dsn: str
    name: str
    opened: list[Any] = field(default_factory=list)

    async def connect(self) -> Any:
        conn = await asyncpg.connect(self.dsn, server_settings={"search_path": self.name})
        self.opened.append(conn)
        return conn


@pytest.fixture
async def schema(postgres_dsn: str) -> AsyncIterator[Schema]:
    created = Schema(postgres_dsn, f"t_{uuid.uuid4().hex[:12]}")
    admin = await asyncpg.connect(postgres_dsn)
    await admin.execute(f"CREATE SCHEMA {created.name}")
    yield created
    for conn in created.opened:
        conn.terminate()
    await admin.execute(f"DROP SCHEMA {created.name} CASCADE")
    await admin.close()


def _this_month() -> dt.date:
    return dt.datetime.now(dt.UTC).date().replace(day=1)


def _node_types(plan: Any) -> list[str]:
    found = [plan["Node Type"] + (f" on {plan['Relation Name']}" if "Relation Name" in plan
                                  else "")]
    for child in plan.get("Plans", []):
        found += _node_types(child)
    return found


async def _plan(conn: Any, query: str, *args: Any) -> list[str]:
    raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query}", *args)
    return _node_types(json.loads(raw)[0]["Plan"])


async def test_upgrade_partitions_existing_results_without_losing_rows(
        schema: Schema) -> None:
    conn = await schema.connect()
    # A database as the runtime left it before: migration 1 only, results in three months,
    # some without a submission time.
    await conn.execute(V1)
    await conn.execute("CREATE TABLE agentpool_schema_migrations (version integer PRIMARY "
                       "KEY, applied_at timestamptz NOT NULL DEFAULT now()); "
                       "INSERT INTO agentpool_schema_migrations VALUES (1)")
    rows = 200_000
    await conn.execute(f"""
        INSERT INTO agentpool_task_results (task_id, pool, handler, status, result, attempts,
            worker, enqueued_at, started_at, finished_at)
        SELECT 'old-' || i, 'p', 'default', 'succeeded', '{{"n": 1}}', 1, 'w',
               CASE WHEN i % 1000 = 0 THEN NULL ELSE ts END, ts, ts + interval '1 second'
        FROM generate_series(1, {rows}) i,
             LATERAL (SELECT now() - (i % 80) * interval '1 day' AS ts) t""")
    before = await conn.fetchval("SELECT md5(string_agg(task_id || status, ',' ORDER BY "
                                 "task_id)) FROM agentpool_task_results")

    started = time.monotonic()
    assert await ensure_schema(conn) == [2, 3]
    upgrade_seconds = time.monotonic() - started
    print(f"\nupgrade of {rows} results: {upgrade_seconds:.2f}s")

    assert await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = $1 AND "
                               "relnamespace = current_schema()::regnamespace",
                               RESULTS_TABLE) == "p"
    after = await conn.fetchval("SELECT md5(string_agg(task_id || status, ',' ORDER BY "
                                "task_id)) FROM agentpool_task_results")
    assert after == before  # every row, once
    assert await conn.fetchval("SELECT count(*) FROM agentpool_task_results") == rows
    # The old table is this month's partition (retention drops it with this month).
    legacy = partition_name(_this_month(), RESULTS_TABLE)
    assert await conn.fetchval("SELECT count(*) FROM " + legacy) == rows
    created, dropped = await maintain_partitions(conn, dt.datetime.now(dt.UTC).date(), 2,
                                                 {EVENTS_TABLE: 3, RESULTS_TABLE: 6})
    assert partition_name(add_months(_this_month(), 1), RESULTS_TABLE) in created
    assert dropped == []
    assert await ensure_schema(conn) == []

    # The runtime writes and reads through the new key, old rows and new alike.
    pool = await asyncpg.create_pool(schema.dsn, min_size=1, max_size=1,
                                     server_settings={"search_path": schema.name})
    store = ResultStore(pool, "p")
    old = await store.fetch("old-7")
    assert old is not None
    assert old.status == "succeeded"
    assert old.enqueued_at is not None
    retried = TaskResult(task_id="old-7", status="failed", handler="default", error="boom",
                         attempts=2, enqueued_at=old.enqueued_at, finished_at=time.time())
    await store.record(retried, [("old-7", "failed", time.time(), {})])
    again = await store.fetch("old-7")
    assert again is not None
    assert (again.status, again.attempts) == ("failed", 2)  # updated in place, not added
    assert await conn.fetchval("SELECT count(*) FROM agentpool_task_results WHERE "
                               "task_id = 'old-7'") == 1
    await pool.close()


async def test_sdk_reads_are_index_scans_on_hundreds_of_thousands_of_rows(
        schema: Schema) -> None:
    conn = await schema.connect()
    await ensure_schema(conn)
    this_month = _this_month()
    for back in range(4):  # the months the rows below fall in
        for table in (EVENTS_TABLE, RESULTS_TABLE):
            await conn.execute(create_partition_sql(add_months(this_month, -back), table))
    await maintain_partitions(conn, dt.datetime.now(dt.UTC).date(), 2,
                              {EVENTS_TABLE: 6, RESULTS_TABLE: 6})
    tasks = 300_000
    await conn.execute(f"""
        INSERT INTO agentpool_task_results (task_id, pool, handler, status, result, attempts,
            worker, enqueued_at, started_at, finished_at)
        SELECT md5(i::text), 'pool-' || (i % 20), 'default', 'succeeded', '{{"n": 1}}', 1,
               'w', ts, ts, ts + interval '1 second'
        FROM generate_series(1, {tasks}) i,
             LATERAL (SELECT now() - (i % 80) * interval '1 day' AS ts) t""")
    await conn.execute(f"""
        INSERT INTO agentpool_task_events (pool, task_id, event, detail, created_at)
        SELECT 'pool-' || (i % 20), md5(i::text), e.event, '{{}}', ts
        FROM generate_series(1, {tasks // 3}) i,
             LATERAL (SELECT now() - (i % 80) * interval '1 day' AS ts) t,
             (VALUES ('started'), ('retried'), ('succeeded')) e(event)""")
    await conn.execute("ANALYZE agentpool_task_results; ANALYZE agentpool_task_events")
    assert await conn.fetchval("SELECT count(*) FROM agentpool_task_results") == tasks
    assert await conn.fetchval("SELECT count(*) FROM agentpool_task_events") == tasks

    task = "c4ca4238a0b923820dcc509a6f75849b"  # md5('1'): pool-1
    reads = {
        "result by task": (FETCH_RESULT, (task,)),
        "events by task": (FETCH_EVENTS, ("pool-1", task)),
        "recent results of a pool": (
            "SELECT task_id, status FROM agentpool_task_results WHERE pool = $1 "
            "AND enqueued_at <= now() ORDER BY finished_at DESC LIMIT 50", ("pool-1",)),
    }
    for mode in ("force_custom_plan", "force_generic_plan"):  # prepared statements reuse both
        await conn.execute(f"SET plan_cache_mode = {mode}")
        for read, (query, args) in reads.items():
            nodes = await _plan(conn, query, *args)
            assert not [node for node in nodes if node.startswith("Seq Scan")], (
                mode, read, "\n".join(nodes))
            assert [node for node in nodes if node.startswith("Index")], (mode, read, nodes)
    store_rows = await conn.fetch(FETCH_EVENTS, "pool-1", task)
    assert [row["event"] for row in store_rows] == ["started", "retried", "succeeded"]


async def _old_events_partition(conn: Any) -> tuple[str, Partition]:
    await ensure_schema(conn)
    old = add_months(_this_month(), -6)
    await conn.execute(create_partition_sql(old, EVENTS_TABLE))
    await maintain_partitions(conn, dt.datetime.now(dt.UTC).date(), 1,
                              {EVENTS_TABLE: 12, RESULTS_TABLE: 12})
    await conn.execute(
        "INSERT INTO agentpool_task_events (pool, task_id, event, created_at) "
        "SELECT 'p', 't' || i, 'started', $1::timestamptz + i * interval '1 minute' "
        "FROM generate_series(1, 1000) i",
        dt.datetime.combine(old, dt.time(), tzinfo=dt.UTC) + dt.timedelta(days=2))
    name = partition_name(old, EVENTS_TABLE)
    return name, Partition(EVENTS_TABLE, name)


async def _new_reader_waits(schema: Schema) -> bool:
    """Whether a new read of the parent table waits for a lock (1 s at most)."""
    reader = await schema.connect()
    await reader.execute("SET lock_timeout = '1s'")
    try:
        await reader.fetchval("SELECT count(*) FROM agentpool_task_events WHERE pool = 'p'")
        await reader.execute("INSERT INTO agentpool_task_events (pool, task_id, event) "
                             "VALUES ('p', 'new', 'started')")
    except asyncpg.exceptions.LockNotAvailableError:
        return True
    finally:
        await reader.close()
    return False


async def _wait_until_waiting(observer: Any, pid: int) -> None:
    for _ in range(100):
        if await observer.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity "
                                   "WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.05)
    pytest.fail("the retirement never waited for the open read")


async def test_retiring_a_partition_does_not_block_readers(schema: Schema) -> None:
    setup = await schema.connect()
    name, partition = await _old_events_partition(setup)
    # A long read of the parent, open while the partition is retired.
    long_read = await schema.connect()
    transaction = long_read.transaction()
    await transaction.start()
    assert await long_read.fetchval("SELECT count(*) FROM agentpool_task_events") == 1000

    retirer = await schema.connect()
    retiring = asyncio.ensure_future(retire_partition(retirer, partition))
    await _wait_until_waiting(setup, retirer.get_server_pid())  # waits for the long read...
    assert not await _new_reader_waits(schema)  # ...and blocks no one else
    # The long read goes on too (and sees the new reader's insert: read committed).
    assert await long_read.fetchval("SELECT count(*) FROM agentpool_task_events") == 1001
    assert not retiring.done()
    await transaction.commit()
    assert await asyncio.wait_for(retiring, 30) is True
    assert await setup.fetchval("SELECT to_regclass($1)", name) is None
    assert await setup.fetchval("SELECT count(*) FROM agentpool_task_events") == 1  # new


async def test_a_plain_detach_would_block_readers(schema: Schema) -> None:
    """The contrast that makes the test above meaningful: the ACCESS EXCLUSIVE lock of a
    plain DETACH, queued behind the same open read, stops every new reader."""
    setup = await schema.connect()
    name, _ = await _old_events_partition(setup)
    long_read = await schema.connect()
    transaction = long_read.transaction()
    await transaction.start()
    await long_read.fetchval("SELECT count(*) FROM agentpool_task_events")
    detacher = await schema.connect()
    detaching = asyncio.ensure_future(detacher.execute(
        f"ALTER TABLE agentpool_task_events DETACH PARTITION {name}"))
    await _wait_until_waiting(setup, detacher.get_server_pid())
    assert await _new_reader_waits(schema)
    await transaction.commit()
    await asyncio.wait_for(detaching, 30)
