"""The client side of a budget key: acquire a permit, settle its tokens, release it.

One Lua call per acquisition on the hot path. A denied acquisition learns from the same call how
long to wait, so it sleeps exactly that long (rates, cool-down) or, when the key is at its
concurrency limit, blocks on the key's `freed` list until a release wakes it; nothing polls.
Permits of a worker that dies come back when their lease ends.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from agent_runtime.contract import BUDGET_USAGE_SCRIPT, BUDGET_WINDOW_MARGIN, BudgetKeys
from agent_runtime.sdk.budget.limits import Limits
from agent_runtime.sdk.budget.scripts import ACQUIRE, COOL_DOWN, RELEASE, SETTLE

DEFAULT_MARGIN = BUDGET_WINDOW_MARGIN


class BudgetError(Exception):
    """A permit that cannot be had: `reason` names the limit (`tokens_per_minute`, ...)."""

    def __init__(self, budget_id: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.budget_id = budget_id
        self.reason = reason


class BudgetTimeout(BudgetError):
    """No permit within the caller's timeout: the work is waiting on the budget."""


class ReservationTooLarge(BudgetError):
    """One call reserves more tokens than the key allows per minute: it can never run."""


@dataclass
class Permit:
    """One granted request. Use it once; `release` (or leaving `limiter.permit()`) gives the
    concurrency slot back, `settle` replaces the token estimate by the real count."""

    id: str
    granted_ms: int
    tokens: int
    waited_seconds: float
    waited_for: str | None
    limiter: BudgetLimiter = field(repr=False)
    released: bool = False

    async def settle(self, tokens: int) -> None:
        if tokens < 0:
            raise ValueError(f"a call cannot use {tokens} tokens")
        if self.limiter.limits.tokens_per_minute:
            await self.limiter._settle(self.id, tokens)
        self.tokens = tokens

    async def release(self) -> None:
        if not self.released:
            self.released = True
            if self.limiter.limits.concurrent_requests:
                await self.limiter._release(self.id)


@dataclass(frozen=True)
class Usage:
    requests_last_second: int
    requests_last_minute: int
    tokens_last_minute: int
    in_flight: int
    cooldown_seconds: float
    waiting: int = 0
    """Tasks waiting for a permit of the key (its board, `BudgetKeys.waiting`)."""


class BudgetLimiter:
    def __init__(self, redis: Redis, budget_id: str, limits: Limits, *,
                 lease_seconds: float = 330.0, margin: float = DEFAULT_MARGIN) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if not 0 <= margin < 1:
            raise ValueError("margin must be in [0, 1)")
        self.budget_id = budget_id
        self.limits = limits
        self.keys = BudgetKeys.for_id(budget_id)
        self._redis = redis
        self._lease_ms = int(lease_seconds * 1000)
        self._margin = round(margin * 1000)
        self._acquire = redis.register_script(ACQUIRE)
        self._settle_script = redis.register_script(SETTLE)
        self._release_script = redis.register_script(RELEASE)
        self._cool_down = redis.register_script(COOL_DOWN)
        self._usage = redis.register_script(BUDGET_USAGE_SCRIPT)
        # This process's latest grant: if Redis no longer has it, Redis lost grants.
        self._last: tuple[str, int] | None = None

    async def try_acquire(self, tokens: int = 0) -> Permit | tuple[float, str]:
        """One attempt: a permit, or (seconds to wait, the limit that refused)."""
        if tokens < 0:
            raise ValueError(f"cannot reserve {tokens} tokens")
        permit_id = uuid.uuid4().hex
        last_id, last_ms = self._last or ("", 0)
        limits = self.limits
        keys = self.keys
        reply: Any = await self._acquire(
            keys=[keys.requests, keys.tokens, keys.token_counts, keys.leases, keys.cooldown,
                  keys.recovering],
            args=[limits.requests_per_second or 0, limits.requests_per_minute or 0,
                  limits.tokens_per_minute or 0, limits.concurrent_requests or 0, tokens,
                  permit_id, self._lease_ms, self._margin, last_id, last_ms])
        status, value, reason = int(reply[0]), int(reply[1]), _text(reply[2])
        if status == -1:
            raise ReservationTooLarge(
                self.budget_id, reason,
                f"budget {self.budget_id}: one call reserving {tokens} tokens exceeds the "
                f"{limits.tokens_per_minute} tokens per minute the key allows; lower the "
                f"estimate (max tokens) or raise tokensPerMinute")
        if status == 0:
            return value / 1000, reason
        self._last = (permit_id, value)
        return Permit(id=permit_id, granted_ms=value, tokens=tokens, waited_seconds=0.0,
                      waited_for=None, limiter=self)

    async def acquire(self, tokens: int = 0, *, max_wait: float | None = None) -> Permit:
        """Wait for a permit reserving `tokens`; BudgetTimeout after `max_wait` seconds."""
        started = time.monotonic()
        deadline = None if max_wait is None else started + max_wait
        waited_for: str | None = None
        while True:
            outcome = await self.try_acquire(tokens)
            if isinstance(outcome, Permit):
                outcome.waited_seconds = time.monotonic() - started
                outcome.waited_for = waited_for
                return outcome
            wait, reason = outcome
            waited_for = reason
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BudgetTimeout(self.budget_id, reason,
                                        f"budget {self.budget_id}: no permit within {max_wait}s "
                                        f"(waiting on {reason})")
                wait = min(wait, left)
            if reason == "concurrent_requests":
                # Woken by the next release; the wait is only the oldest lease's end.
                await self._redis.blpop([self.keys.freed], timeout=max(wait, 0.001))
            else:
                await asyncio.sleep(wait)

    @asynccontextmanager
    async def permit(self, tokens: int = 0, *,
                     max_wait: float | None = None) -> AsyncIterator[Permit]:
        """`async with limiter.permit(tokens=estimate) as p:` ... `await p.settle(used)`."""
        granted = await self.acquire(tokens, max_wait=max_wait)
        try:
            yield granted
        finally:
            await granted.release()

    async def cool_down(self, seconds: float) -> None:
        """The provider said to back off (429, Retry-After): every client of the key waits."""
        if seconds > 0:
            await self._cool_down(keys=[self.keys.cooldown], args=[max(1, int(seconds * 1000))])

    async def usage(self) -> Usage:
        keys = self.keys
        reply: Any = await self._usage(keys=keys.usage_keys, args=[self._margin])
        return Usage(requests_last_second=int(reply[0]), requests_last_minute=int(reply[1]),
                     tokens_last_minute=int(reply[2]), in_flight=int(reply[3]),
                     cooldown_seconds=int(reply[4]) / 1000, waiting=int(reply[5]))

    async def _settle(self, permit_id: str, tokens: int) -> None:
        await self._settle_script(keys=[self.keys.token_counts], args=[permit_id, tokens])

    async def _release(self, permit_id: str) -> None:
        await self._release_script(keys=[self.keys.leases, self.keys.freed],
                                   args=[permit_id, self.limits.concurrent_requests or 0])


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
