"""What a handler sees: `TaskContext` per task, backed by the worker's shared `WorkerResources`.

Created by the worker (`worker/worker.py`). Resources (Redis, the asyncpg pool, the HTTP
session, caches) are opened once per worker during warm-up and shared by every task the worker
runs; a context adds the task's identity and its cleanup callbacks, which run after the task
whatever its outcome."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from agent_runtime.config import RuntimeSettings
from agent_runtime.queue.keys import Keys
from agent_runtime.sdk.cache import Cache
from agent_runtime.sdk.http import HttpClient
from agent_runtime.sdk.metrics_sink import MetricsSink

log = logging.getLogger(__name__)
Cleanup = Callable[[], Awaitable[None] | None]


@dataclass
class WorkerResources:
    settings: RuntimeSettings
    consumer: str
    redis: Redis
    cache_redis: Redis
    http: HttpClient
    stats: MetricsSink
    db: Any = None  # asyncpg pool, when a database is configured
    caches: dict[str, Cache] = field(default_factory=dict)

    def cache(self, name: str) -> Cache:
        if name not in self.caches:
            config = self.settings.config
            self.caches[name] = Cache(
                self.cache_redis, Keys.for_config(config), name, ttl=config.cache_ttl_seconds,
                lru_size=config.cache_lru_size, lru_ttl=config.cache_lru_ttl_seconds,
                stats=self.stats)
        return self.caches[name]


@dataclass
class TaskContext:
    """Passed to handlers that take two arguments."""

    task_id: str
    handler: str
    attempt: int  # 1 for the first execution; counts retries and crash redeliveries
    enqueued_at: float
    resources: WorkerResources
    _cleanups: list[Cleanup] = field(default_factory=list)

    @property
    def pool(self) -> str:
        return self.resources.settings.config.pool

    @property
    def worker(self) -> str:
        return self.resources.consumer

    @property
    def redis(self) -> Redis:
        """The worker's Redis client (string responses)."""
        return self.resources.redis

    @property
    def db(self) -> Any:
        """The worker's asyncpg pool (through PgBouncer), or None without a database."""
        return self.resources.db

    @property
    def http(self) -> HttpClient:
        return self.resources.http

    def cache(self, name: str) -> Cache:
        return self.resources.cache(name)

    def add_cleanup(self, callback: Cleanup) -> None:
        """Run `callback` (sync or async) after this task, however it ends."""
        self._cleanups.append(callback)

    async def run_cleanups(self) -> None:
        while self._cleanups:
            callback = self._cleanups.pop()
            try:
                outcome = callback()
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:  # one failing cleanup must not skip the others
                log.exception("task %s: cleanup callback failed", self.task_id)
