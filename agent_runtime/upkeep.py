"""The supervisor's periodic chores against Redis and PostgreSQL.

Run as background tasks by `supervisor.py`:
* queue upkeep (every 0.5 s): renew the leases of this pod's consumers, promote due retries,
  hand dead workers' entries to their replacements; every minute trim the stream safely and
  forget long-idle empty consumers of pods that went away.
* database upkeep (at start, then hourly): migrations, upcoming monthly partitions, retention.
Both survive their server restarting: errors are logged, reflected in readiness, and retried.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from agent_runtime.config import RuntimeSettings
from agent_runtime.db import create_pool
from agent_runtime.maintenance import QueueMaintenance
from agent_runtime.migrations import ensure_schema, maintain_partitions

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
TRIM_EVERY_SECONDS = 60.0
FORGET_CONSUMERS_IDLE_SECONDS = 3600.0
DB_UPKEEP_EVERY_SECONDS = 3600.0


@dataclass(frozen=True)
class HandOver:
    """A dead worker's entries, due to move to its replacement."""

    source: str
    target: str
    error: str | None  # why the source died: recorded as its tasks' last error first


class QueueUpkeep:
    def __init__(self, maintenance: QueueMaintenance, lease_seconds: float,
                 live_consumers: Callable[[], list[str]],
                 transfers: Callable[[], list[HandOver]],
                 on_transferred: Callable[[str, str, int], None]) -> None:
        self._maintenance = maintenance
        # Renew at least twice per renewal threshold (lease/3), so one late tick is harmless.
        self._renew_every = max(min(lease_seconds / 6, 5.0), 0.1)
        self._live_consumers = live_consumers
        self._transfers = transfers
        self._on_transferred = on_transferred
        self.redis_ok = False
        self.last_error = "not connected yet"

    async def run(self) -> None:
        next_renew = next_trim = 0.0
        group_ready = False
        while True:
            try:
                if not group_ready:
                    await self._maintenance.ensure_group()
                    group_ready = True
                now = time.monotonic()
                for hand_over in self._transfers():
                    if hand_over.error:
                        await self._maintenance.record_pending_errors(hand_over.source,
                                                                      hand_over.error)
                    moved = await self._maintenance.transfer(hand_over.source, hand_over.target)
                    self._on_transferred(hand_over.source, hand_over.target, moved)
                if now >= next_renew:
                    await self._maintenance.renew_leases(self._live_consumers())
                    next_renew = now + self._renew_every
                await self._maintenance.promote_due()
                if now >= next_trim:
                    next_trim = now + TRIM_EVERY_SECONDS
                    await self._maintenance.safe_trim()
                    await self._maintenance.prune_consumers(FORGET_CONSUMERS_IDLE_SECONDS)
                if not self.redis_ok:
                    log.info("supervisor: Redis reachable")
                self.redis_ok = True
            except (RedisError, OSError) as exc:
                if self.redis_ok or self.last_error != str(exc):
                    log.warning("supervisor: Redis unavailable: %s", exc)
                self.redis_ok, self.last_error = False, str(exc)
                group_ready = False  # it may have been lost with the server's data
            await asyncio.sleep(TICK_SECONDS)


class DatabaseUpkeep:
    def __init__(self, settings: RuntimeSettings) -> None:
        self._settings = settings
        self.schema_ready = settings.secrets.database_url is None
        self.last_error = ""

    async def run(self) -> None:
        url = self._settings.secrets.database_url
        if url is None:
            return
        config = self._settings.config
        while True:
            try:
                pool = await create_pool(url.get_secret_value(), config, max_size=1)
                try:
                    async with pool.acquire() as conn:
                        applied = await ensure_schema(conn)
                        created, dropped = await maintain_partitions(
                            conn, dt.datetime.now(dt.UTC).date(), config.events_partitions_ahead,
                            config.events_retention_months)
                finally:
                    await pool.close()
                if applied or created or dropped:
                    log.info("database: migrations %s, partitions created %s, dropped %s",
                             applied, created, dropped)
                self.schema_ready, self.last_error = True, ""
                await asyncio.sleep(DB_UPKEEP_EVERY_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # asyncpg/PgBouncer errors of every kind: retry
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("database upkeep failed (%s); retrying in 5s", self.last_error)
                await asyncio.sleep(5.0)
