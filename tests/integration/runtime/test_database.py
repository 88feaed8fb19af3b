"""Results and task events in PostgreSQL, through PgBouncer in transaction pooling: schema
and partitions, results the SDK reads back, and recovery when PgBouncer restarts."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from agent_runtime.db.migrations import (
    add_months,
    create_partition_sql,
    ensure_schema,
    maintain_partitions,
    partition_name,
)
from agent_runtime.sdk.client import TaskClient
from agentpool_dev.services import ServiceSettings, restart_pgbouncer
from tests.plugins.runtime import RuntimePool, StartSupervisor

pytestmark = [pytest.mark.services]


@pytest.fixture
async def bouncer(pgbouncer_dsn: str) -> AsyncIterator[Any]:
    """A connection through PgBouncer with the settings the runtime uses there."""
    conn = await asyncpg.connect(pgbouncer_dsn, statement_cache_size=0)
    yield conn
    await conn.close()


async def test_schema_partitions_and_indexes_through_pgbouncer(bouncer: Any) -> None:
    await ensure_schema(bouncer)
    assert await ensure_schema(bouncer) == []  # idempotent, safe from every pod
    today = dt.datetime.now(dt.UTC).date()
    old = dt.date(2001, 1, 1)
    await bouncer.execute(create_partition_sql(old))  # a partition long past retention

    created, dropped = await maintain_partitions(bouncer, today, ahead=2, keep_months=3)

    this_month = today.replace(day=1)
    assert partition_name(old) in dropped
    partitions = {row["relname"] for row in await bouncer.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'agentpool_task_events'")}
    for month in (this_month, add_months(this_month, 1), add_months(this_month, 2)):
        assert partition_name(month) in partitions
    assert partition_name(old) not in partitions
    assert set(created) <= partitions
    kind = await bouncer.fetchval(
        "SELECT relkind::text FROM pg_class WHERE relname = 'agentpool_task_events'")
    assert kind == "p"  # declaratively partitioned
    indexes = {row["indexdef"] for row in await bouncer.fetch(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'agentpool_task_events'")}
    assert any("(pool, created_at DESC)" in index for index in indexes)
    assert any("USING brin (created_at)" in index for index in indexes)


async def _rows(postgres_dsn: str, task_ids: list[str]) -> dict[str, tuple[str, int]]:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        rows = await conn.fetch(
            "SELECT r.task_id, r.status, (SELECT count(*) FROM agentpool_task_events e "
            "WHERE e.task_id = r.task_id) AS events FROM agentpool_task_results r "
            "WHERE r.task_id = any($1::text[])", task_ids)
    finally:
        await conn.close()
    return {row["task_id"]: (row["status"], row["events"]) for row in rows}


@pytest.mark.slow
async def test_results_are_in_postgres_and_survive_a_pgbouncer_restart(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, redis_url: str,
        pgbouncer_dsn: str, postgres_dsn: str, services: ServiceSettings,
        redis_client: Redis) -> None:
    supervisor = start_supervisor(runtime_pool, database_url=pgbouncer_dsn)
    client = await TaskClient.connect(redis_url, runtime_pool.config, pgbouncer_dsn)
    try:
        before = await client.submit_many([{"n": n} for n in range(20)])
        await client.wait_many(before, max_wait=30)
        rows = await _rows(postgres_dsn, before)
        assert set(rows.values()) == {("succeeded", 2)}  # started + succeeded events

        # These finish while PgBouncer is down: recording waits for it instead of failing.
        during = await client.submit_many([{"n": n, "sleep": 0.3} for n in range(20, 28)])
        await asyncio.to_thread(restart_pgbouncer, services)
        after = await client.submit_many([{"n": n} for n in range(40, 60)])
        results = await client.wait_many(during + after, max_wait=60)

        assert all(r.status == "succeeded" for r in results.values())
        assert set((await _rows(postgres_dsn, during + after)).values()) == {("succeeded", 2)}
        assert supervisor.metric("agentpool_db_pool_connections_max") > 0
        # Redis results expire; the SDK then reads the result back from PostgreSQL.
        await redis_client.delete(client.keys.result(before[0]))
        from_db = await client.get(before[0])
        assert from_db is not None
        assert (from_db.status, from_db.result["n"]) == ("succeeded", 0)
    finally:
        await client.close()
