"""The boards of tasks waiting for a budget permit: the pool's, read by the metrics API (a pool
waiting on its budget is not scaled out), and the budget key's, read by the operator (the
AgentBudget's status says the key is saturated).

A task is on them only while it waits (a grant at the first try costs nothing here). Entries
carry a Redis-clock deadline and are refreshed while the wait lasts, so a killed worker's
entries drop off by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from agent_runtime.contract import BUDGET_WAITER_TTL_SECONDS, BudgetKeys, budget_waiting_key

# KEYS: board. ARGV: waiter id, ttl ms. Adds or refreshes a waiter, drops expired ones.
_MARK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return 1
"""


class WaitingBoard:
    def __init__(self, redis: Redis, pool_key_prefix: str,
                 ttl_seconds: float = BUDGET_WAITER_TTL_SECONDS,
                 budget_keys: BudgetKeys | None = None) -> None:
        self.key = budget_waiting_key(pool_key_prefix)
        # One call per board: the pool's and the key's live in different hash slots.
        self.boards = (self.key,) if budget_keys is None else (self.key, budget_keys.waiting)
        self._redis = redis
        self._ttl_ms = int(ttl_seconds * 1000)
        self._mark = redis.register_script(_MARK)

    @contextlib.asynccontextmanager
    async def waiting(self) -> AsyncIterator[None]:
        """On the board for as long as the block runs."""
        waiter = uuid.uuid4().hex
        await self._mark_all(waiter)
        refresher = asyncio.create_task(self._refresh(waiter))
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            for board in self.boards:
                await self._redis.zrem(board, waiter)

    async def _mark_all(self, waiter: str) -> None:
        for board in self.boards:
            await self._mark(keys=[board], args=[waiter, self._ttl_ms])

    async def _refresh(self, waiter: str) -> None:
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            await self._mark_all(waiter)
