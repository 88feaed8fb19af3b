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
from agent_runtime.sdk.budget.handle import BudgetHandle
from agent_runtime.sdk.budget.limiter import BudgetError, BudgetLimiter
from agent_runtime.sdk.budget.limits import Limits
from agent_runtime.sdk.budget.waiting import WaitingBoard
from agent_runtime.sdk.cache import Cache
from agent_runtime.sdk.http import HttpClient
from agent_runtime.sdk.metrics_sink import MetricsSink
from agent_runtime.tracing import WorkerTracing

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
    budgets: dict[str, BudgetHandle] = field(default_factory=dict)
    tracing: WorkerTracing | None = None  # None: tracing off (no endpoint configured)

    def cache(self, name: str) -> Cache:
        if name not in self.caches:
            config = self.settings.config
            self.caches[name] = Cache(
                self.cache_redis, Keys.for_config(config), name, ttl=config.cache_ttl_seconds,
                lru_size=config.cache_lru_size, lru_ttl=config.cache_lru_ttl_seconds,
                stats=self.stats)
        return self.caches[name]

    def budget(self, name: str) -> BudgetHandle:
        if name not in self.budgets:
            config = self.settings.config
            key = next((k for k in config.budgets if k.name == name), None)
            if key is None:
                known = ", ".join(k.name for k in config.budgets) or "none"
                raise BudgetError(name, "unknown_key",
                                  f"no budget key {name!r} in this pool (its keys: {known}); "
                                  "reference the AgentBudget that defines it in spec.budgets")
            limits = Limits(requests_per_second=key.requests_per_second,
                            requests_per_minute=key.requests_per_minute,
                            tokens_per_minute=key.tokens_per_minute,
                            concurrent_requests=key.concurrent_requests)
            # A permit's lease outlives the longest call the HTTP helper allows; a killed
            # worker's permits come back when it ends.
            limiter = BudgetLimiter(self.redis, key.id, limits,
                                    lease_seconds=2 * config.http_timeout_seconds)
            api_key = self.settings.secrets.budget_api_keys.get(name)
            self.budgets[name] = BudgetHandle(
                key, limiter,
                WaitingBoard(self.redis, config.key_prefix, budget_keys=limiter.keys), self.http,
                api_key=api_key.get_secret_value() if api_key else None, stats=self.stats)
        return self.budgets[name]


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

    def budget(self, name: str) -> BudgetHandle:
        """The pool's budget key `name` (from its AgentBudgets): permits shared by every pod
        of every pool using the key, and `call` for an HTTP call made under one."""
        return self.resources.budget(name)

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
