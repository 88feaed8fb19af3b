"""Task results and events in PostgreSQL, written through PgBouncer (transaction pooling).

Used by the worker (write each finished task's result and events before acknowledging it) and
by the client (read results back, after their Redis copy expired).

* Multi-statement writes run in an explicit transaction, the unit PgBouncer pins to one server.
* JSON goes in as text cast to jsonb and comes out as text, so no per-connection type
  introspection or codec set-up is needed.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from agent_runtime.queue.envelope import TaskResult


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
