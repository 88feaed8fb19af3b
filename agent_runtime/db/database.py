"""The DB helper of a process (`ctx.db`, the result store, the client, upkeep): an asyncpg pool
whose connections are waited for at most `db_acquire_timeout_seconds`, and whose one-shot calls
survive a connection that PgBouncer or PostgreSQL dropped.

* `acquire()` waits for a free connection and, while PgBouncer restarts (connection refused,
  "cannot connect now"), keeps trying until the acquire timeout, then raises
  `DatabaseUnavailable` instead of hanging or failing at the first refusal. asyncpg itself
  replaces a pooled connection it saw close (an idle connection PgBouncer closed on restart)
  when it is acquired, so such a connection is never handed to a task.
* `execute`, `executemany`, `fetch`, `fetchrow` and `fetchval` retry once, on a fresh
  connection, when the call failed because its connection died under it (a server connection
  killed with `pg_terminate_backend` right before the call makes PgBouncer close the client:
  asyncpg cannot know until it writes). A statement that reached the server just before the
  connection died may so run twice: the same at-least-once rule tasks already follow. Timeouts
  are never retried. Work inside `acquire()` (transactions) is not retried: the caller's code
  cannot be replayed safely by the helper.

Everything else (`get_size`, `close`, ...) is the asyncpg pool's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Generator
from typing import Any

import asyncpg

from agent_runtime.errors import AgentPoolError

log = logging.getLogger(__name__)

# `timeout` parameters below mirror asyncpg's own methods (ASYNC109 allowed for that reason).

# The connection is gone or cannot be made yet: worth another connection, never a timeout.
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,  # class 08, "closed in the middle of operation"
    asyncpg.exceptions.AdminShutdownError,  # 57P01: pg_terminate_backend, server shutdown
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: the server is starting up
    asyncpg.exceptions.ConnectionDoesNotExistError,
    ConnectionError,  # refused, reset, broken pipe
)
CONNECT_BACKOFF_SECONDS = (0.05, 0.1, 0.2, 0.5, 1.0)


class DatabaseUnavailable(AgentPoolError, TimeoutError):
    """No database connection within the pool's acquire timeout (all in use, or the database
    or PgBouncer unreachable); the task is retried like after any other transient error."""


def connection_lost(exc: BaseException, conn: Any | None = None) -> bool:
    """Whether `exc` means the connection died (not the statement failed), so another
    connection may succeed. A timeout never qualifies."""
    if isinstance(exc, TimeoutError):
        return False
    if isinstance(exc, CONNECTION_LOST):
        return True
    # asyncpg sometimes reports a connection killed while idle as a protocol-state error;
    # the connection is closed afterwards either way.
    return conn is not None and bool(conn.is_closed())


class _Acquire:
    """What `Database.acquire()` returns: awaitable (`conn = await db.acquire()`, then
    `await db.release(conn)`) and an async context manager, like asyncpg's."""

    def __init__(self, db: Database, timeout: float | None) -> None:
        self._db = db
        self._timeout = timeout
        self._conn: Any = None

    def __await__(self) -> Generator[Any, None, Any]:
        return self._db.connection(self._timeout).__await__()

    async def __aenter__(self) -> Any:
        self._conn = await self._db.connection(self._timeout)
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        await self._db.release(conn)


class Database:
    def __init__(self, pool: Any, *, acquire_timeout: float) -> None:
        self.pool = pool
        self.acquire_timeout = acquire_timeout
        self.reconnects = 0  # one-shot calls retried on a new connection (read by tests)

    def acquire(self, *, timeout: float | None = None) -> _Acquire:
        return _Acquire(self, timeout)

    async def connection(self, within: float | None = None) -> Any:
        """A pool connection within `within` seconds (default: the acquire timeout); connection
        failures are retried with a short backoff until then."""
        limit = self.acquire_timeout if within is None else within
        deadline = time.monotonic() + limit
        failures = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DatabaseUnavailable(self._why(limit, None))
            try:
                return await self.pool.acquire(timeout=remaining)
            except TimeoutError:
                raise DatabaseUnavailable(self._why(limit, None)) from None
            except CONNECTION_LOST as exc:
                pause = CONNECT_BACKOFF_SECONDS[min(failures, len(CONNECT_BACKOFF_SECONDS) - 1)]
                failures += 1
                if deadline - time.monotonic() <= pause:
                    raise DatabaseUnavailable(self._why(limit, exc)) from exc
                await asyncio.sleep(pause)

    def _why(self, limit: float, exc: BaseException | None) -> str:
        if exc is not None:
            return (f"no database connection within {limit:g}s (acquire timeout): "
                    f"{type(exc).__name__}: {exc}")
        return (f"no database connection within {limit:g}s (acquire timeout): all "
                f"{self.pool.get_max_size()} connections of this worker's pool stayed in use")

    async def release(self, conn: Any) -> None:
        if conn is not None:
            await self.pool.release(conn)

    async def _once_more(self, method: str, *args: Any, **kwargs: Any) -> Any:
        for attempt in (1, 2):
            conn = await self.connection()
            try:
                return await getattr(conn, method)(*args, **kwargs)
            except Exception as exc:
                if attempt == 2 or not connection_lost(exc, conn):
                    raise
                self.reconnects += 1
                log.info("database connection lost during %s (%s: %s); retrying once on a "
                         "new connection", method, type(exc).__name__, exc)
            finally:
                await self.pool.release(conn)
        raise AssertionError("unreachable")

    async def execute(self, query: str, *args: Any,
                      timeout: float | None = None) -> str:  # noqa: ASYNC109
        status: str = await self._once_more("execute", query, *args, timeout=timeout)
        return status

    async def executemany(self, command: str, args: Any, *,
                          timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._once_more("executemany", command, args, timeout=timeout)

    async def fetch(self, query: str, *args: Any,
                    timeout: float | None = None) -> list[Any]:  # noqa: ASYNC109
        rows: list[Any] = await self._once_more("fetch", query, *args, timeout=timeout)
        return rows

    async def fetchrow(self, query: str, *args: Any,
                       timeout: float | None = None) -> Any:  # noqa: ASYNC109
        return await self._once_more("fetchrow", query, *args, timeout=timeout)

    async def fetchval(self, query: str, *args: Any, column: int = 0,
                       timeout: float | None = None) -> Any:  # noqa: ASYNC109
        return await self._once_more("fetchval", query, *args, column=column, timeout=timeout)

    async def close(self) -> None:
        await self.pool.close()

    def get_size(self) -> int:
        size: int = self.pool.get_size()
        return size

    def get_idle_size(self) -> int:
        size: int = self.pool.get_idle_size()
        return size

    def get_max_size(self) -> int:
        size: int = self.pool.get_max_size()
        return size

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)
