"""PostgreSQL schema of the runtime: migrations, monthly event partitions, retention.

Run by the supervisor at start-up and hourly (`ensure_schema`, `maintain_partitions`); the SQL
builders are pure so they are unit-tested without a database. Everything runs inside explicit
transactions with a transaction-scoped advisory lock, because behind PgBouncer in transaction
pooling a session-level lock (or any session state) would land on an arbitrary server connection.

Tables:
    agentpool_schema_migrations  applied migration versions
    agentpool_task_results       one row per task (latest outcome), the SDK reads it back
    agentpool_task_events        append-only task history, RANGE-partitioned by month on
                                 created_at; composite index (pool, created_at DESC) for
                                 "recent events of a pool", BRIN on created_at for time scans
"""

from __future__ import annotations

import datetime as dt
from typing import Any

LOCK_KEY = 0x41_47_50_4F  # "AGPO": serialises migrations across pods

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
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
"""),
)

PARTITION_PREFIX = "agentpool_task_events_"


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def add_months(month: dt.date, count: int) -> dt.date:
    index = month.year * 12 + month.month - 1 + count
    return dt.date(index // 12, index % 12 + 1, 1)


def partition_name(month: dt.date) -> str:
    return f"{PARTITION_PREFIX}y{month.year:04d}m{month.month:02d}"


def parse_partition_name(name: str) -> dt.date | None:
    if not name.startswith(PARTITION_PREFIX):
        return None
    suffix = name[len(PARTITION_PREFIX):]
    try:
        return dt.date(int(suffix[1:5]), int(suffix[6:8]), 1)
    except (ValueError, IndexError):
        return None


def create_partition_sql(month: dt.date) -> str:
    nxt = add_months(month, 1)
    return (f"CREATE TABLE IF NOT EXISTS {partition_name(month)} PARTITION OF "
            f"agentpool_task_events FOR VALUES FROM ('{month.isoformat()}') "
            f"TO ('{nxt.isoformat()}')")


def wanted_partitions(today: dt.date, ahead: int) -> list[dt.date]:
    """This month and `ahead` months after it."""
    first = month_start(today)
    return [add_months(first, i) for i in range(ahead + 1)]


def expired_partitions(names: list[str], today: dt.date, keep_months: int) -> list[str]:
    """Partitions entirely older than the `keep_months` most recent months (this one included)."""
    oldest_kept = add_months(month_start(today), -(keep_months - 1))
    expired = []
    for name in names:
        month = parse_partition_name(name)
        if month is not None and month < oldest_kept:
            expired.append(name)
    return sorted(expired)


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
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO agentpool_schema_migrations (version) VALUES ($1)",
                               version)
            applied.append(version)
    return applied


async def maintain_partitions(conn: Any, today: dt.date, ahead: int,
                              keep_months: int) -> tuple[list[str], list[str]]:
    """Create upcoming monthly partitions and drop expired ones. Returns (created, dropped)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'agentpool_task_events'")
        existing = {row["relname"] for row in rows}
        created = []
        for month in wanted_partitions(today, ahead):
            if partition_name(month) not in existing:
                await conn.execute(create_partition_sql(month))
                created.append(partition_name(month))
        dropped = expired_partitions(sorted(existing), today, keep_months)
        for name in dropped:
            # DETACH first so the drop never blocks queries on the parent for long.
            await conn.execute(f"ALTER TABLE agentpool_task_events DETACH PARTITION {name}")
            await conn.execute(f"DROP TABLE {name}")
    return created, dropped
