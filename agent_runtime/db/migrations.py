"""PostgreSQL schema of the runtime: migrations, applied by the supervisor at start-up.

Everything runs inside one explicit transaction with a transaction-scoped advisory lock,
because behind PgBouncer in transaction pooling a session-level lock (or any session state)
would land on an arbitrary server connection. A migration is SQL or an async step taking the
connection (for work that depends on what the database holds).

Tables:
    agentpool_schema_migrations  applied migration versions
    agentpool_task_results       one row per task and submission (latest outcome), the SDK
                                 reads it back by task id; RANGE-partitioned by month on
                                 enqueued_at (primary key (task_id, enqueued_at): every write
                                 of a task carries its submission time unchanged); index
                                 (pool, finished_at DESC) for "recent results of a pool"
    agentpool_task_events        append-only task history, RANGE-partitioned by month on
                                 created_at; indexes (task_id, created_at) for a task's events,
                                 (pool, created_at DESC) for "recent events of a pool", BRIN on
                                 created_at for time scans
Monthly partitions and their retention: `partitions.py`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agent_runtime.db.partitions import LOCK_KEY, RESULTS_TABLE, add_months, partition_name

Step = str | Callable[[Any], Awaitable[None]]

V1 = """
CREATE TABLE IF NOT EXISTS agentpool_task_results (
    task_id      text PRIMARY KEY,
    pool         text NOT NULL,
    handler      text NOT NULL,
    status       text NOT NULL CHECK (status IN ('succeeded', 'failed', 'cancelled')),
    result       jsonb,
    error        text,
    attempts     integer NOT NULL DEFAULT 0,
    worker       text NOT NULL DEFAULT '',
    enqueued_at  timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS agentpool_task_results_pool_finished
    ON agentpool_task_results (pool, finished_at DESC);
CREATE TABLE IF NOT EXISTS agentpool_task_events (
    pool        text NOT NULL,
    task_id     text NOT NULL,
    event       text NOT NULL,
    detail      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (created_at);
CREATE INDEX IF NOT EXISTS agentpool_task_events_pool_created
    ON agentpool_task_events (pool, created_at DESC);
CREATE INDEX IF NOT EXISTS agentpool_task_events_created_brin
    ON agentpool_task_events USING brin (created_at);
"""

LEGACY = "agentpool_task_results_legacy"
RESULTS_PARTITIONED = f"""
ALTER TABLE {RESULTS_TABLE} RENAME TO {LEGACY};
ALTER INDEX agentpool_task_results_pool_finished RENAME TO {LEGACY}_pool_finished;
ALTER TABLE {LEGACY} DROP CONSTRAINT agentpool_task_results_pkey;
UPDATE {LEGACY} SET enqueued_at = coalesce(enqueued_at, started_at, finished_at)
    WHERE enqueued_at IS NULL;
ALTER TABLE {LEGACY} ALTER COLUMN task_id SET NOT NULL,
    ALTER COLUMN enqueued_at SET NOT NULL;
CREATE TABLE {RESULTS_TABLE} (
    task_id      text NOT NULL,
    pool         text NOT NULL,
    handler      text NOT NULL,
    status       text NOT NULL CONSTRAINT agentpool_task_results_status_check
                     CHECK (status IN ('succeeded', 'failed', 'cancelled')),
    result       jsonb,
    error        text,
    attempts     integer NOT NULL DEFAULT 0,
    worker       text NOT NULL DEFAULT '',
    enqueued_at  timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, enqueued_at)
) PARTITION BY RANGE (enqueued_at);
CREATE INDEX agentpool_task_results_pool_finished
    ON {RESULTS_TABLE} (pool, finished_at DESC);
"""


async def partition_results(conn: Any) -> None:
    """Migration 2: `agentpool_task_results` becomes RANGE-partitioned by month on
    enqueued_at, without copying a row: the existing table is attached as the partition of
    every month up to its newest row's (named after that month, so retention drops it with
    that month), which builds the new primary key's index on it once."""
    kind = await conn.fetchval(
        "SELECT relkind::text FROM pg_class WHERE relname = $1 "
        "AND relnamespace = current_schema()::regnamespace", RESULTS_TABLE)
    if kind == "p":
        return
    await conn.execute(RESULTS_PARTITIONED)
    newest = await conn.fetchval(f"SELECT date_trunc('month', max(enqueued_at))::date "
                                 f"FROM {LEGACY}")
    if newest is None:
        await conn.execute(f"DROP TABLE {LEGACY}")
        return
    name = partition_name(newest, RESULTS_TABLE)
    await conn.execute(f"ALTER TABLE {LEGACY} RENAME TO {name}")
    await conn.execute(f"ALTER INDEX {LEGACY}_pool_finished RENAME TO {name}_pool_finished")
    await conn.execute(f"ALTER TABLE {RESULTS_TABLE} ATTACH PARTITION {name} FOR VALUES "
                       f"FROM (MINVALUE) TO ('{add_months(newest, 1).isoformat()}')")


EVENTS_BY_TASK = """
CREATE INDEX IF NOT EXISTS agentpool_task_events_task_created
    ON agentpool_task_events (task_id, created_at);
"""

MIGRATIONS: tuple[tuple[int, Step], ...] = (
    (1, V1),
    (2, partition_results),
    (3, EVENTS_BY_TASK),
)


async def ensure_schema(conn: Any) -> list[int]:
    """Apply pending migrations; safe to run from every pod at once. Returns applied versions."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute("CREATE TABLE IF NOT EXISTS agentpool_schema_migrations ("
                           "version integer PRIMARY KEY, applied_at timestamptz NOT NULL "
                           "DEFAULT now())")
        done = {row["version"] for row in
                await conn.fetch("SELECT version FROM agentpool_schema_migrations")}
        for version, step in MIGRATIONS:
            if version in done:
                continue
            if isinstance(step, str):
                await conn.execute(step)
            else:
                await step(conn)
            await conn.execute("INSERT INTO agentpool_schema_migrations (version) VALUES ($1)",
                               version)
            applied.append(version)
    return applied
