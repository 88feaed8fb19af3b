"""The asyncpg pool of a process, set up for PgBouncer's transaction pooling.

Every PostgreSQL connection of the runtime comes from here: a worker's pool (its handlers'
`ctx.db`, and the result store), the client's, the supervisor's database upkeep. It comes
wrapped in `Database` (database.py): bounded waits for a connection, one retry of a call
whose connection died.

Settings for transaction pooling (see the runtime notes, section 7):
* `statement_cache_size` from config, 0 by default: PgBouncer < 1.21 cannot keep asyncpg's named
  prepared statements on one server connection. With the cache off asyncpg re-sends Parse,
  which transaction pooling handles (asyncpg >= 0.29). The operator turns it on in pods,
  whose PgBouncer (>= 1.21) runs with `max_prepared_statements`.
* `reset=None`-like behaviour: we pass an empty reset query; the default one (`RESET ALL`,
  `UNLISTEN *`, ...) costs a round trip per release and would run on an arbitrary backend.
* Timeouts (`spec.database.timeouts`): connect, per statement, idle lifetime; the acquire
  timeout is `Database`'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from agent_runtime.config import RuntimeConfig
from agent_runtime.db.database import Database


async def _no_reset(_conn: Any) -> None:
    return None


async def create_pool(dsn: str, config: RuntimeConfig, *, max_size: int | None = None,
                      statement_cache_size: int | None = None,
                      init: Callable[[Any], Awaitable[None]] | None = None) -> Database:
    """`init` runs on every new connection (a worker's tracing adds its query logger)."""
    size = max_size or config.effective_db_pool_max_size
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min(config.db_pool_min_size, size),
        max_size=size,
        statement_cache_size=(config.db_statement_cache_size if statement_cache_size is None
                              else statement_cache_size),
        max_inactive_connection_lifetime=config.db_max_inactive_connection_lifetime_seconds,
        command_timeout=config.db_command_timeout_seconds,
        timeout=config.db_connect_timeout_seconds,
        reset=_no_reset,
        server_settings={"application_name": f"agentpool-{config.pool}"},
        init=init,
    )
    return Database(pool, acquire_timeout=config.db_acquire_timeout_seconds)
