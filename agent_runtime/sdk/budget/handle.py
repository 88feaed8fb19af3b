"""What a handler gets from `ctx.budget(name)`: permits of one budget key, and `call`, an HTTP
call made under a permit that turns the provider's 429 answers into a shared cool-down.

Provider-agnostic: the caller says how many tokens a call may use (its estimate, reserved
before the call) and how to read the real count from the answer (settled after it).
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from agent_runtime.contract import BudgetKeyConfig
from agent_runtime.sdk.budget.limiter import BudgetError, BudgetLimiter, BudgetTimeout, Permit
from agent_runtime.sdk.budget.waiting import WaitingBoard
from agent_runtime.sdk.http import HttpClient
from agent_runtime.sdk.metrics_sink import MetricsSink

PERMITS = "agentpool_budget_permits_total"
WAIT = "agentpool_budget_wait_seconds"
TOKENS = "agentpool_budget_tokens_total"
THROTTLED = "agentpool_budget_throttled_total"
DEFAULT_RETRY_AFTER_SECONDS = 1.0


class ProviderThrottled(BudgetError):
    """The provider still answered 429 after every attempt."""


@dataclass(frozen=True)
class BudgetedResponse:
    status: int
    headers: Mapping[str, str]
    text: str
    tokens: int
    attempts: int

    def json(self) -> Any:
        return json.loads(self.text)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header's delay: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


class BudgetHandle:
    def __init__(self, config: BudgetKeyConfig, limiter: BudgetLimiter, board: WaitingBoard,
                 http: HttpClient, *, api_key: str | None = None,
                 stats: MetricsSink | None = None) -> None:
        self.config = config
        self.limiter = limiter
        self._board = board
        self._http = http
        self._stats = stats
        self._api_key = api_key
        self._labels = {"budget": config.budget, "key": config.name}

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def api_key(self) -> str:
        """The provider's API key from the budget's Secret (never logged, never in config)."""
        if self._api_key is None:
            raise BudgetError(self.config.id, "no_api_key",
                              f"budget key {self.name!r} has no API key: set secretRef on the "
                              "AgentBudget's key (or the pool's budget reference)")
        return self._api_key

    @asynccontextmanager
    async def permit(self, tokens: int = 0, *,
                     max_wait: float | None = None) -> AsyncIterator[Permit]:
        """A permit for one call reserving `tokens`; waiting for it puts the task on the pool's
        board of work waiting on budgets (which stops the pool from scaling out)."""
        granted = await self._acquire(tokens, max_wait)
        try:
            yield granted
        finally:
            await granted.release()

    async def _acquire(self, tokens: int, max_wait: float | None) -> Permit:
        first = await self.limiter.try_acquire(tokens)
        if isinstance(first, Permit):
            self._count(PERMITS, outcome="granted")
            return first
        started = time.monotonic()
        try:
            async with self._board.waiting():
                granted = await self.limiter.acquire(tokens, max_wait=max_wait)
        except BudgetTimeout:
            self._count(PERMITS, outcome="timed_out")
            raise
        self._count(PERMITS, outcome="waited")
        if self._stats is not None:
            self._stats.observe(WAIT, dict(self._labels), time.monotonic() - started)
        return granted

    async def call(self, method: str, url: str, *, tokens: int = 0,
                   count_tokens: Callable[[BudgetedResponse], int] | None = None,
                   max_attempts: int = 3, max_wait: float | None = None,
                   api: str | None = None, operation: str | None = None,
                   **kwargs: Any) -> BudgetedResponse:
        """One HTTP call under a permit. A 429 sets the key's shared cool-down from Retry-After
        and the call is tried again (up to `max_attempts`); `count_tokens` reads the tokens the
        answer says were used (default: the reservation stands)."""
        for attempt in range(1, max_attempts + 1):
            async with self.permit(tokens, max_wait=max_wait) as granted:
                async with self._http.request(api or self.name, method, url,
                                              operation=operation, **kwargs) as response:
                    answer = BudgetedResponse(
                        status=response.status, headers=dict(response.headers),
                        text=await response.text(), tokens=tokens, attempts=attempt)
                if answer.status == 429:
                    self._count(THROTTLED)
                    await granted.settle(0)
                    delay = retry_after_seconds(answer.headers.get("Retry-After"))
                    await self.limiter.cool_down(
                        delay if delay is not None else DEFAULT_RETRY_AFTER_SECONDS * attempt)
                    continue
                used = count_tokens(answer) if count_tokens and answer.status < 400 else (
                    tokens if answer.status < 400 else 0)
                await granted.settle(used)
                self._count(TOKENS, value=used)
                return BudgetedResponse(status=answer.status, headers=answer.headers,
                                        text=answer.text, tokens=used, attempts=attempt)
        raise ProviderThrottled(self.config.id, "throttled",
                                f"budget key {self.name!r}: the provider answered 429 to all "
                                f"{max_attempts} attempts")

    def _count(self, name: str, value: float = 1.0, **labels: str) -> None:
        if self._stats is not None and value:
            self._stats.inc(name, {**self._labels, **labels}, value)
