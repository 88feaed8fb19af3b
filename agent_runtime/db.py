"""PostgreSQL access through PgBouncer (transaction pooling) with asyncpg.

Used by `worker.py` (write each finished task's result and events before acknowledging it), by
`supervisor.py` (migrations and partition upkeep) and by `client.py` (read results back).

Settings for transaction pooling (see the runtime notes, section 7):
* `statement_cache_size` from config, 0 by default: PgBouncer < 1.21 cannot keep asyncpg's named
  prepared statements on one server connection. With the cache off asyncpg re-sends Parse,
  which transaction pooling handles (asyncpg >= 0.29).
* `reset=None`-like behaviour: we pass an empty reset query; the default one (`RESET ALL`,
  `UNLISTEN *`, ...) costs a round trip per release and would run on an arbitrary backend.
* Multi-statement writes run in an explicit transaction, the unit PgBouncer pins to one server.
* JSON goes in as text cast to jsonb and comes out as text, so no per-connection type
  introspection or codec set-up is needed.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import asyncpg

from agent_runtime.config import RuntimeConfig
from agent_runtime.queue.envelope import TaskResult

# Errors after which a retry may succeed (PgBouncer or PostgreSQL restarting, network blips).
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ProtocolViolationError,  # PgBouncer: "server conn crashed?" and the like
)


async def _no_reset(_conn: Any) -> None:
    return None


async def create_pool(dsn: str, config: RuntimeConfig, *, max_size: int | None = None) -> Any:
    return await asyncpg.create_pool(
        dsn,
        min_size=min(config.db_pool_min_size, max_size or config.effective_db_pool_max_size),
        max_size=max_size or config.effective_db_pool_max_size,
        statement_cache_size=config.db_statement_cache_size,
        max_inactive_connection_lifetime=config.db_max_inactive_connection_lifetime_seconds,
        command_timeout=config.db_command_timeout_seconds,
        reset=_no_reset,
        server_settings={"application_name": f"agentpool-{config.pool}"},
    )


def _ts(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, tz=dt.UTC)


def _epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


UPSERT_RESULT = """
INSERT INTO agentpool_task_results
    (task_id, pool, handler, status, result, error, attempts, worker, enqueued_at, started_at,
     finished_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11)
ON CONFLICT (task_id) DO UPDATE SET
    status = EXCLUDED.status, result = EXCLUDED.result, error = EXCLUDED.error,
    attempts = EXCLUDED.attempts, worker = EXCLUDED.worker, started_at = EXCLUDED.started_at,
    finished_at = EXCLUDED.finished_at, handler = EXCLUDED.handler
"""

INSERT_EVENT = """
INSERT INTO agentpool_task_events (pool, task_id, event, detail, created_at)
VALUES ($1, $2, $3, $4::jsonb, $5)
"""


class ResultStore:
    """Task results and events in PostgreSQL."""

    def __init__(self, pool: Any, pool_name: str) -> None:
        self._pool = pool
        self._pool_name = pool_name

    async def record(self, result: TaskResult | None,
                     events: list[tuple[str, str, float, dict[str, Any]]]) -> None:
        """Write the final result (if any) and events (task id, event, time, detail) in one
        transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            if result is not None:
                await conn.execute(
                    UPSERT_RESULT, result.task_id, self._pool_name, result.handler,
                    result.status, json.dumps(result.result), result.error, result.attempts,
                    result.worker, _ts(result.enqueued_at), _ts(result.started_at),
                    _ts(result.finished_at) or dt.datetime.now(dt.UTC))
            if events:
                await conn.executemany(INSERT_EVENT, [
                    (self._pool_name, task_id, event, json.dumps(detail), _ts(at))
                    for task_id, event, at, detail in events])

    async def fetch(self, task_id: str) -> TaskResult | None:
        row = await self._pool.fetchrow(
            "SELECT task_id, handler, status, result::text AS result, error, attempts, worker, "
            "enqueued_at, started_at, finished_at FROM agentpool_task_results "
            "WHERE task_id = $1", task_id)
        if row is None:
            return None
        return TaskResult(
            task_id=row["task_id"], status=row["status"], handler=row["handler"],
            result=json.loads(row["result"]) if row["result"] is not None else None,
            error=row["error"], attempts=row["attempts"], worker=row["worker"],
            enqueued_at=_epoch(row["enqueued_at"]), started_at=_epoch(row["started_at"]),
            finished_at=_epoch(row["finished_at"]))

    async def events(self, task_id: str) -> list[tuple[str, float]]:
        rows = await self._pool.fetch(
            "SELECT event, created_at FROM agentpool_task_events WHERE pool = $1 AND "
            "task_id = $2 ORDER BY created_at", self._pool_name, task_id)
        return [(row["event"], row["created_at"].timestamp()) for row in rows]

    def pool_sizes(self) -> tuple[int, int, int]:
        """(open, idle, max) connections of this process's pool, for the supervisor's gauges."""
        return self._pool.get_size(), self._pool.get_idle_size(), self._pool.get_max_size()
