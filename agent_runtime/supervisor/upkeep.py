"""The supervisor's periodic chores against Redis and PostgreSQL.

Run by `supervisor.py` as supervised background tasks (`aio/supervised.py`: a crash is logged with
its traceback and the loop restarts; readiness and liveness say when it cannot recover):
* lease renewal (every min(lease/6, 5 s)): reset the idle time of every entry this pod's
  consumers hold, so other pods never reclaim a running task; reports when the leases were
  last confirmed, from which the supervisor derives until when running tasks may go on.
* queue upkeep (every 0.5 s): hand dead workers' entries to their replacements, promote due
  retries; every lease (at most a minute) forget the empty consumers of pods that stopped
  renewing (`maintenance.prune_consumers`); every minute trim the stream safely.
* database upkeep (at start, then hourly): migrations, upcoming monthly partitions, retention.
Redis and database errors are expected (servers restart): they are logged, reflected in
readiness, and retried without counting as crashes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from agent_runtime.aio.supervised import Beat
from agent_runtime.config import RuntimeSettings
from agent_runtime.db.migrations import ensure_schema, maintain_partitions
from agent_runtime.db.pool import create_pool
from agent_runtime.queue.maintenance import RENEW_THRESHOLD_SHARE, QueueMaintenance

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
TRIM_EVERY_SECONDS = 60.0
FORGET_CONSUMERS_IDLE_SECONDS = 3600.0
DB_UPKEEP_EVERY_SECONDS = 3600.0
# One round of a chore longer than this is abandoned (a Redis call that never answers) and
# counts as Redis being unavailable; the next round starts afresh.
ITERATION_TIMEOUT_SECONDS = 30.0
NO_ANSWER = f"no answer within {ITERATION_TIMEOUT_SECONDS:g}s"


@dataclass(frozen=True)
class HandOver:
    """A dead worker's entries, due to move to its replacement."""

    source: str
    target: str
    error: str | None  # why the source died: recorded as its tasks' last error first
    started: tuple[str, ...] = ()  # its entries whose execution had started (its board)


class RedisState:
    """Whether a loop's last Redis round trip worked, logging only the changes."""

    def __init__(self, who: str) -> None:
        self._who = who
        self.ok = False
        self.last_error = "not connected yet"

    def succeeded(self) -> None:
        if not self.ok:
            log.info("%s: Redis reachable", self._who)
        self.ok = True

    def failed(self, exc: Exception) -> None:
        if self.ok or self.last_error != str(exc):
            log.warning("%s: Redis unavailable: %s", self._who, exc)
        self.ok, self.last_error = False, str(exc)


class LeaseRenewal:
    """Keeps the leases of this pod's consumers; `on_confirmed(t)` says that every lease held
    at monotonic time `t` was renewed (or young enough) when the renewal ran."""

    def __init__(self, maintenance: QueueMaintenance, lease_seconds: float,
                 consumers: Callable[[], list[str]],
                 on_confirmed: Callable[[float], None]) -> None:
        self._maintenance = maintenance
        # Renew at least twice per renewal threshold (lease/3), so one late run is harmless.
        self.every = max(min(lease_seconds / 6, 5.0), 0.1)
        # After a renewal every lease has at least lease - threshold to go: tasks may run that
        # long past it, less a margin for the workers' checks (`worker/lifeline.py`) to act in.
        margin = min(max(lease_seconds / 10, 0.5), 5.0)
        self.safe_for = lease_seconds * (1 - RENEW_THRESHOLD_SHARE) - margin
        self._consumers = consumers
        self._on_confirmed = on_confirmed
        self.redis = RedisState("lease renewal")

    async def run(self, beat: Beat) -> None:
        while True:
            sent = time.monotonic()
            try:
                async with asyncio.timeout(ITERATION_TIMEOUT_SECONDS):
                    await self._maintenance.renew_leases(self._consumers())
                self._on_confirmed(sent)
                self.redis.succeeded()
            except TimeoutError:
                self.redis.failed(TimeoutError(NO_ANSWER))
            except (RedisError, OSError) as exc:
                self.redis.failed(exc)
            beat()
            await asyncio.sleep(self.every)


class QueueUpkeep:
    def __init__(self, maintenance: QueueMaintenance,
                 transfers: Callable[[], list[HandOver]],
                 on_transferred: Callable[[str, str, int], None],
                 lease_seconds: float) -> None:
        self._maintenance = maintenance
        self._transfers = transfers
        self._on_transferred = on_transferred
        # Consumers of pods gone for a few leases are forgotten about that fast.
        self._prune_every = min(max(lease_seconds, 1.0), TRIM_EVERY_SECONDS)
        self._next_trim = self._next_prune = 0.0
        self._group_ready = False
        self.redis = RedisState("queue upkeep")

    async def run(self, beat: Beat) -> None:
        while True:
            try:
                async with asyncio.timeout(ITERATION_TIMEOUT_SECONDS):
                    await self._iteration()
                self.redis.succeeded()
            except TimeoutError:
                self.redis.failed(TimeoutError(NO_ANSWER))
                self._group_ready = False
            except (RedisError, OSError) as exc:
                self.redis.failed(exc)
                self._group_ready = False  # it may have been lost with the server's data
            beat()
            await asyncio.sleep(TICK_SECONDS)

    async def _iteration(self) -> None:
        if not self._group_ready:
            await self._maintenance.ensure_group()
            self._group_ready = True
        for hand_over in self._transfers():
            if hand_over.error:
                await self._maintenance.record_entry_errors(hand_over.started, hand_over.error)
            moved = await self._maintenance.transfer(hand_over.source, hand_over.target,
                                                     hand_over.started)
            self._on_transferred(hand_over.source, hand_over.target, moved)
        await self._maintenance.promote_due()
        now = time.monotonic()
        if now >= self._next_trim:
            self._next_trim = now + TRIM_EVERY_SECONDS
            await self._maintenance.safe_trim()
        if now >= self._next_prune:
            self._next_prune = now + self._prune_every
            removed = await self._maintenance.prune_consumers(FORGET_CONSUMERS_IDLE_SECONDS)
            if removed:
                log.info("forgot %d consumer(s) of pods that are gone: %s", len(removed),
                         ", ".join(removed))


class DatabaseUpkeep:
    def __init__(self, settings: RuntimeSettings) -> None:
        self._settings = settings
        self.schema_ready = settings.secrets.database_url is None
        self.last_error = ""

    async def run(self, beat: Beat) -> None:
        url = self._settings.secrets.database_url
        if url is None:
            return
        config = self._settings.config
        while True:
            beat()
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
