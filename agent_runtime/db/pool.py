"""The asyncpg pool of a process, set up for PgBouncer's transaction pooling.

Every PostgreSQL connection of the runtime comes from here: a worker's pool (its handlers'
`ctx.db`, and the result store), the client's, the supervisor's database upkeep.

Settings for transaction pooling (see the runtime notes, section 7):
* `statement_cache_size` from config, 0 by default: PgBouncer < 1.21 cannot keep asyncpg's named
  prepared statements on one server connection. With the cache off asyncpg re-sends Parse,
  which transaction pooling handles (asyncpg >= 0.29).
* `reset=None`-like behaviour: we pass an empty reset query; the default one (`RESET ALL`,
  `UNLISTEN *`, ...) costs a round trip per release and would run on an arbitrary backend.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from agent_runtime.config import RuntimeConfig


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
