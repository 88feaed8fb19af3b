"""Monthly RANGE partitions of the runtime's tables: which exist, which to create, which to
retire, and retiring them without blocking readers.

Both `agentpool_task_events` (on `created_at`) and `agentpool_task_results` (on
`enqueued_at`, the submission time, which every write of one task carries unchanged) are
partitioned by month. The supervisor's upkeep (at start, then hourly) creates this month and
`ahead` months after it, and retires partitions older than the table's retention:

1. in a transaction holding the migrations' advisory lock: list and create partitions;
2. outside any transaction (the statement refuses to run in one):
   `ALTER TABLE parent DETACH PARTITION p CONCURRENTLY`, which takes SHARE UPDATE EXCLUSIVE
   on the parent (readers and writers go on; it waits for transactions that still see the
   partition) instead of the ACCESS EXCLUSIVE a plain DETACH takes, then `DROP TABLE p`
   (its lock is on the detached table alone). A detach that was interrupted leaves the
   partition "detach pending"; the next round finishes it with `DETACH ... FINALIZE`.

The SQL builders and the month arithmetic are pure (unit-tested without a database).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

EVENTS_TABLE = "agentpool_task_events"
RESULTS_TABLE = "agentpool_task_results"
LOCK_KEY = 0x41_47_50_4F  # "AGPO": serialises migrations and partition changes across pods
DETACH_TIMEOUT_SECONDS = 3600.0
"""A concurrent detach waits for every transaction that still sees the partition."""


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def add_months(month: dt.date, count: int) -> dt.date:
    index = month.year * 12 + month.month - 1 + count
    return dt.date(index // 12, index % 12 + 1, 1)


def partition_name(month: dt.date, table: str = EVENTS_TABLE) -> str:
    return f"{table}_y{month.year:04d}m{month.month:02d}"


def parse_partition_name(name: str, table: str = EVENTS_TABLE) -> dt.date | None:
    prefix = f"{table}_"
    if not name.startswith(prefix):
        return None
    suffix = name[len(prefix):]
    try:
        return dt.date(int(suffix[1:5]), int(suffix[6:8]), 1)
    except (ValueError, IndexError):
        return None


def create_partition_sql(month: dt.date, table: str = EVENTS_TABLE) -> str:
    nxt = add_months(month, 1)
    return (f"CREATE TABLE IF NOT EXISTS {partition_name(month, table)} PARTITION OF "
            f"{table} FOR VALUES FROM ('{month.isoformat()}') TO ('{nxt.isoformat()}')")


def detach_sql(table: str, partition: str, *, finalize: bool = False) -> str:
    mode = "FINALIZE" if finalize else "CONCURRENTLY"
    return f"ALTER TABLE {table} DETACH PARTITION {partition} {mode}"


def wanted_partitions(today: dt.date, ahead: int) -> list[dt.date]:
    """This month and `ahead` months after it."""
    first = month_start(today)
    return [add_months(first, i) for i in range(ahead + 1)]


def expired_partitions(names: list[str], today: dt.date, keep_months: int,
                       table: str = EVENTS_TABLE) -> list[str]:
    """Partitions entirely older than the `keep_months` most recent months (this one included)."""
    oldest_kept = add_months(month_start(today), -(keep_months - 1))
    expired = []
    for name in names:
        month = parse_partition_name(name, table)
        if month is not None and month < oldest_kept:
            expired.append(name)
    return sorted(expired)


@dataclass(frozen=True)
class Partition:
    table: str
    name: str
    detach_pending: bool = False


LIST_PARTITIONS = """
SELECT c.relname, i.inhdetachpending FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relname = $1 AND p.relnamespace = c.relnamespace
  AND p.relnamespace = current_schema()::regnamespace
"""


async def list_partitions(conn: Any, table: str) -> dict[str, bool]:
    """Partition name -> whether a concurrent detach of it is pending."""
    rows = await conn.fetch(LIST_PARTITIONS, table)
    return {row["relname"]: row["inhdetachpending"] for row in rows}


async def plan_partitions(conn: Any, today: dt.date, ahead: int,
                          retention: dict[str, int]) -> tuple[list[str], list[Partition]]:
    """Create the missing upcoming partitions of each table (`retention`: table -> months
    kept), in one transaction under the advisory lock. Returns (created, to retire)."""
    created: list[str] = []
    retire: list[Partition] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        for table, keep_months in retention.items():
            existing = await list_partitions(conn, table)
            for month in wanted_partitions(today, ahead):
                name = partition_name(month, table)
                if name not in existing:
                    await conn.execute(create_partition_sql(month, table))
                    created.append(name)
            retire += [Partition(table, name, existing[name]) for name in
                       expired_partitions(sorted(existing), today, keep_months, table)]
    return created, retire


async def retire_partition(conn: Any, partition: Partition) -> bool:
    """Detach (concurrently) and drop one partition; False when another pod got there first.
    `conn` must not be in a transaction."""
    try:
        await conn.execute(detach_sql(partition.table, partition.name,
                                      finalize=partition.detach_pending),
                           timeout=DETACH_TIMEOUT_SECONDS)
    except asyncpg.PostgresError as exc:
        # Another pod detached it (or is detaching it) meanwhile: leave it to that pod, or to
        # the next round's FINALIZE if that detach was interrupted.
        state = (await list_partitions(conn, partition.table)).get(partition.name)
        if state is None or state is True:
            log.info("partition %s: not detached here (%s: %s)", partition.name,
                     type(exc).__name__, exc)
            if state is None:
                await conn.execute(f"DROP TABLE IF EXISTS {partition.name}")
            return False
        raise
    await conn.execute(f"DROP TABLE IF EXISTS {partition.name}")
    return True


async def maintain_partitions(conn: Any, today: dt.date, ahead: int,
                              retention: dict[str, int]) -> tuple[list[str], list[str]]:
    """Create upcoming monthly partitions, retire expired ones. Returns (created, dropped)."""
    created, retire = await plan_partitions(conn, today, ahead, retention)
    dropped = [p.name for p in retire if await retire_partition(conn, p)]
    return created, dropped
