"""Reads what an AgentBudget's keys hold in a pool's Redis, for the budget's status.

One pipelined round trip per server: the runtime's own usage script
(`agent_runtime.contract.BUDGET_USAGE_SCRIPT`) for each key, on the key names the limiter
writes (`contract.BudgetKeys`), so the operator and the pods cannot disagree about where a
key's windows, leases, cool-down and waiters live or how long a window is. A server that
could not be read is not tried again for `retry_seconds`: its error stands until then, so an
outage costs one connection attempt per period, not one per budget and look. Redis URLs are
credentials: errors and logs name `host:port/db` only.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from agent_runtime.contract import BUDGET_USAGE_SCRIPT, BUDGET_WINDOW_MARGIN, BudgetKeys
from agent_runtime.queue.backlog import redacted
from agentpool_operator.budget_saturation import KeyReading, ServerReading

MAX_CLIENTS = 64
"""Redis clients kept open (one per distinct URL); the least recently used one is closed."""


class BudgetUsageReader:
    def __init__(self, timeout: float = 2.0, retry_seconds: float = 30.0,
                 client_name: str = "agentpool-operator",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._timeout = timeout
        self._retry_seconds = retry_seconds
        self._client_name = client_name
        self._clock = clock
        self._clients: OrderedDict[str, Redis] = OrderedDict()
        self._failed: dict[str, tuple[float, str]] = {}

    async def read(self, url: str, key_ids: Mapping[str, str]) -> ServerReading:
        """The keys (name -> budget key id `namespace/budget/key`) as held on the server at
        `url`; never raises for Redis being unreachable (the reading carries the error)."""
        server = redacted(url)
        failed = self._failed.get(url)
        if failed is not None and self._clock() < failed[0]:
            return ServerReading(server, error=failed[1])
        try:
            client = await self._client(url)
            reply = await asyncio.wait_for(self._read(client, key_ids),
                                           timeout=self._timeout * 2)
        except ValueError as error:
            # redis-py's URL parse errors name the scheme, port or option, never the password.
            return self._fail(url, f"the Redis URL of redis {server} cannot be used: {error}")
        except (RedisError, OSError, TimeoutError) as error:
            detail = str(error) or type(error).__name__
            return self._fail(url, f"cannot read the budget's usage at redis {server}: "
                                   f"{detail}")
        self._failed.pop(url, None)
        return ServerReading(server, reply)

    def _fail(self, url: str, message: str) -> ServerReading:
        self._failed[url] = (self._clock() + self._retry_seconds, message)
        return ServerReading(redacted(url), error=message)

    async def _read(self, client: Redis, key_ids: Mapping[str, str]
                    ) -> dict[str, KeyReading]:
        script = client.register_script(BUDGET_USAGE_SCRIPT)
        margin = round(BUDGET_WINDOW_MARGIN * 1000)
        names = list(key_ids)
        async with client.pipeline(transaction=False) as pipe:
            for name in names:
                await script(keys=BudgetKeys.for_id(key_ids[name]).usage_keys, args=[margin],
                             client=pipe)
            replies: list[Any] = await pipe.execute()
        return {name: KeyReading(
            requests_last_second=int(reply[0]), requests_last_minute=int(reply[1]),
            tokens_last_minute=int(reply[2]), in_flight=int(reply[3]),
            cooldown_seconds=int(reply[4]) / 1000, waiting=int(reply[5]))
            for name, reply in zip(names, replies, strict=True)}

    async def _client(self, url: str) -> Redis:
        client = self._clients.get(url)
        if client is None:
            client = Redis.from_url(url, socket_connect_timeout=self._timeout,
                                    socket_timeout=self._timeout,
                                    client_name=self._client_name)
            self._clients[url] = client
            while len(self._clients) > MAX_CLIENTS:
                _, evicted = self._clients.popitem(last=False)
                await evicted.aclose()
        self._clients.move_to_end(url)
        return client

    async def close(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.aclose()
