"""The DB helper (`ctx.db`, `agent_runtime.db.database`) against the real PostgreSQL and
PgBouncer: a bounded wait for a connection, and calls that survive a PgBouncer restart or
server connections killed with pg_terminate_backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from agent_runtime.config import RuntimeConfig
from agent_runtime.db.database import Database, DatabaseUnavailable
from agent_runtime.db.pool import create_pool
from agent_runtime.sdk.client import TaskClient
from agentpool_dev.services import ServiceSettings, restart_pgbouncer
from tests.plugins.runtime import RuntimePool, StartSupervisor

pytestmark = [pytest.mark.services]
HANDLERS = "tests.integration.runtime.handlers"


def _config(runtime_pool: RuntimePool, **changes: float) -> RuntimeConfig:
    return runtime_pool.config.model_copy(update=changes)


@pytest.fixture
async def db(runtime_pool: RuntimePool, pgbouncer_dsn: str) -> AsyncIterator[Database]:
    database = await create_pool(pgbouncer_dsn,
                                 _config(runtime_pool, db_acquire_timeout_seconds=5.0),
                                 max_size=2)
    yield database
    await database.close()


async def _kill_server_connections(postgres_dsn: str, application: str) -> int:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        killed: int = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1", application)
    finally:
        await conn.close()
    return killed


async def test_acquire_gives_up_after_the_acquire_timeout(
        runtime_pool: RuntimePool, pgbouncer_dsn: str) -> None:
    db = await create_pool(pgbouncer_dsn, _config(runtime_pool, db_acquire_timeout_seconds=0.5),
                           max_size=1)
    try:
        async with db.acquire() as held:
            assert await held.fetchval("SELECT 1") == 1
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable,
                               match=r"within 0\.5s \(acquire timeout\): all 1"):
                await db.fetchval("SELECT 2")
            waited = time.monotonic() - started
        assert 0.4 <= waited < 2.0
        assert await db.fetchval("SELECT 3") == 3  # free again once released
    finally:
        await db.close()


async def test_calls_survive_killed_server_connections(
        db: Database, runtime_pool: RuntimePool, postgres_dsn: str) -> None:
    application = f"agentpool-{runtime_pool.config.pool}"
    for n in range(3):
        # Idle connections killed between calls: PgBouncer notices and opens new ones.
        assert await db.fetchval("SELECT $1::int", n) == n
        assert await _kill_server_connections(postgres_dsn, application) >= 1
        assert await db.fetchval("SELECT $1::int", n + 100) == n + 100
    # Killed in the middle of a call: the call fails on its connection and is run again.
    slow = asyncio.ensure_future(db.fetchval("SELECT pg_sleep(0.5)::text || $1::text", "x"))
    await asyncio.sleep(0.2)
    assert await _kill_server_connections(postgres_dsn, application) >= 1
    assert await slow == "x"
    assert db.reconnects == 1


async def test_calls_wait_through_a_pgbouncer_restart(
        db: Database, services: ServiceSettings) -> None:
    assert await db.fetchval("SELECT 1") == 1
    restart = asyncio.ensure_future(asyncio.to_thread(restart_pgbouncer, services))
    answers = []
    while not restart.done():  # calls before, during and after the restart window
        answers.append(await db.fetchval("SELECT 7"))
        await asyncio.sleep(0.02)
    await restart
    answers.append(await db.fetchval("SELECT 7"))
    assert set(answers) == {7}


@pytest.mark.slow
async def test_next_task_succeeds_after_pgbouncer_restart_and_killed_connections(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, redis_url: str,
        pgbouncer_dsn: str, postgres_dsn: str, services: ServiceSettings) -> None:
    runtime_pool.update(workers=1, concurrency=2,
                        handlers={**runtime_pool.config.handlers,
                                  "db_probe": f"{HANDLERS}:db_probe"})
    start_supervisor(runtime_pool, database_url=pgbouncer_dsn)
    client = await TaskClient.connect(redis_url, runtime_pool.config)

    async def probe(n: int, **extra: str) -> dict[str, int]:
        task_id = await client.submit({"n": n, **extra}, handler="db_probe")
        result = await client.wait(task_id, max_wait=30)
        assert result.status == "succeeded", result.error
        assert isinstance(result.result, dict)
        return result.result

    try:
        assert (await probe(1))["value"] == 2
        await asyncio.to_thread(restart_pgbouncer, services)
        after_restart = await probe(2)
        assert (after_restart["value"], after_restart["attempt"]) == (3, 1)  # not retried

        killed = await _kill_server_connections(postgres_dsn,
                                                f"agentpool-{runtime_pool.config.pool}")
        assert killed >= 1
        after_kill = await probe(3)
        assert (after_kill["value"], after_kill["attempt"]) == (4, 1)

        # Killed right before the handler's call: the helper's one retry absorbs it.
        in_task = [await probe(10 + n, kill_dsn=postgres_dsn) for n in range(5)]
        assert [r["value"] for r in in_task] == [11 + n for n in range(5)]
        assert {r["attempt"] for r in in_task} == {1}
    finally:
        await client.close()
