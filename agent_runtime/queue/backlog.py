"""A pool's queue backlog, read from its Redis: waiting + in-flight tasks, and who holds them.

The queue's one reader for outsiders: the operator's metrics API (`server.py` for every
external-metrics request, `gauges.py` on its period) and its deletion-cost pass
(`agentpool_operator/deletioncost.py`) import it. It lives with the queue because it reads the
queue's own layout (stream, group, delayed set; `keys.py`): the operator renders the pool's
`RuntimeConfig` and derives the keys from it with `Keys.for_config`
(`agentpool_operator/queues.py`), so this module cannot disagree with the workers about which
stream, group and retry set a pool uses.

Per pool, one pipelined round trip: XLEN, ZCARD of the delayed-retry set, XINFO GROUPS,
XPENDING (summary), TIME, and the pool's small sorted sets of tasks waiting on a budget and of
live pods (for budget-aware autoscaling); when tasks wait, an XRANGE of one entry after the group's
last-delivered id gives the oldest waiting task's age. `waiting` is the group's `lag`
(Redis >= 7) plus the parked retries; Redis reports `lag` as nil when entries after the
group's last-delivered id were deleted, and then a second round trip counts those entries
with XRANGE. `in_flight` is the group's pending entries (delivered, not yet acknowledged).
Before any worker has created the group, every entry of the stream is waiting: the runtime
creates its group at id 0, so it will see them.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from agent_runtime.contract import budget_waiting_key
from agent_runtime.queue.keys import Keys

XRANGE_CAP = 10_000
"""Most entries the lag fallback counts one by one; beyond it the estimate is XLEN - pending."""
LIVE_POD_WINDOW_MS = 30_000
"""By default a pod that renewed its leases this recently counts as live (the default lease;
callers that know the pool's `lease_seconds` pass it)."""
MAX_CLIENTS = 64
"""Redis clients kept open (one per distinct URL); the least recently used one is closed."""


class BacklogError(Exception):
    """Redis could not be read; the message names the server but never its credentials."""


@dataclass(frozen=True)
class Backlog:
    """What a pool's queue holds right now."""

    waiting: int
    """Tasks not yet delivered to any worker, including retries parked until their time."""
    in_flight: int
    """Tasks delivered to a worker and not yet acknowledged (running, or held by a dead
    worker until another one reclaims them)."""
    per_consumer: dict[str, int] = field(default_factory=dict)
    """In-flight tasks by Redis consumer name (the runtime names consumers after the pod)."""
    budget_waiting: int = 0
    """Tasks waiting for a budget permit (the pool's board, `contract.budget_waiting_key`):
    work bound by its API budget, which more pods would not do sooner."""
    live_pods: int = 0
    """Pods whose supervisor renewed its leases within the pool's lease."""
    oldest_waiting_seconds: float = field(default=0.0, compare=False)
    """How long the oldest task not yet delivered to any worker has waited (0 when none).
    Parked retries are not counted: they wait on purpose. Measured on the Redis server's
    clock (entry id against TIME), so clock skew between hosts cannot distort it."""

    @property
    def total(self) -> int:
        """The autoscaling signal: everything the pool still has to finish."""
        return self.waiting + self.in_flight


def redacted(url: str) -> str:
    """`host:port/db` of a Redis URL, for messages: never the user name or password."""
    parts = urlsplit(url)
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return f"{parts.hostname or '?'}:{port}{parts.path or ''}"


def _group_info(groups: Any, group: str) -> dict[str, Any] | None:
    for info in groups or []:
        if info.get("name") == group:
            found: dict[str, Any] = info
            return found
    return None


def _missing(reply: Any) -> bool:
    """A reply saying the stream (or its group) does not exist yet."""
    text = str(reply).lower()
    return isinstance(reply, ResponseError) and ("no such key" in text or "nogroup" in text)


def _raise_other(reply: Any) -> None:
    if isinstance(reply, Exception) and not _missing(reply):
        raise reply


class BacklogReader:
    """Reads backlogs, with one cached client per Redis URL and short timeouts (an HPA
    request must fail fast rather than hang the aggregator)."""

    def __init__(self, timeout: float = 2.0, max_clients: int = MAX_CLIENTS,
                 client_name: str = "agentpool-metrics-apiserver") -> None:
        self._timeout = timeout
        self._client_name = client_name
        self._max_clients = max_clients
        self._clients: OrderedDict[str, Redis] = OrderedDict()

    async def _client(self, url: str) -> Redis:
        client = self._clients.get(url)
        if client is None:
            client = Redis.from_url(url, decode_responses=True,
                                    socket_connect_timeout=self._timeout,
                                    socket_timeout=self._timeout,
                                    client_name=self._client_name)
            self._clients[url] = client
            while len(self._clients) > self._max_clients:
                _, evicted = self._clients.popitem(last=False)
                await evicted.aclose()
        self._clients.move_to_end(url)
        return client

    async def read(self, url: str, keys: Keys,
                   pod_window_ms: int = LIVE_POD_WINDOW_MS) -> Backlog:
        """The pool's backlog. Raises `BacklogError` when Redis cannot be read."""
        try:
            client = await self._client(url)
        except ValueError as error:
            # redis-py's parse errors name the scheme, port or option, never the password.
            raise BacklogError(f"the pool's Redis URL cannot be used: {error}") from None
        try:
            return await asyncio.wait_for(self._read(client, keys, pod_window_ms),
                                          timeout=self._timeout * 2)
        except (RedisError, OSError, TimeoutError) as error:
            detail = str(error) or type(error).__name__
            raise BacklogError(f"cannot read the queue at redis {redacted(url)}: "
                               f"{detail}") from None

    async def _read(self, redis: Redis, keys: Keys, pod_window_ms: int) -> Backlog:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xlen(keys.stream)
            pipe.zcard(keys.delayed)
            pipe.xinfo_groups(keys.stream)
            pipe.xpending(keys.stream, keys.group)
            pipe.time()
            # Small sorted sets, read whole: their scores are compared with TIME below.
            pipe.zrange(budget_waiting_key(keys.prefix), 0, -1, withscores=True)
            pipe.zrange(keys.pods, 0, -1, withscores=True)
            (length, delayed, groups, pending, now, board,
             pods) = await pipe.execute(raise_on_error=False)
        for reply in (length, delayed, groups, pending, now, board, pods):
            _raise_other(reply)
        delayed_count = int(delayed)
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        budget_waiting = sum(1 for _, until in board if until > now_ms)
        live_pods = sum(1 for _, renewed in pods if renewed > now_ms - pod_window_ms)
        group = None if _missing(groups) else _group_info(groups, keys.group)
        if group is None:
            # No group yet (no worker ever started): the whole stream is waiting.
            stream_length = 0 if isinstance(length, Exception) else int(length)
            oldest = await self._oldest_after(redis, keys, "-", now_ms) if stream_length else 0.0
            return Backlog(waiting=stream_length + delayed_count, in_flight=0,
                           oldest_waiting_seconds=oldest, budget_waiting=budget_waiting,
                           live_pods=live_pods)
        in_flight = 0 if _missing(pending) else int(pending["pending"])
        per_consumer = {} if _missing(pending) else {
            str(c["name"]): int(c["pending"]) for c in pending.get("consumers") or []}
        lag = group.get("lag")
        if lag is None:
            lag = await self._undelivered(redis, keys, str(group["last-delivered-id"]),
                                          int(length), in_flight)
        oldest = 0.0
        if int(lag):
            oldest = await self._oldest_after(redis, keys, f"({group['last-delivered-id']}",
                                              now_ms)
        return Backlog(waiting=int(lag) + delayed_count, in_flight=in_flight,
                       per_consumer=per_consumer, oldest_waiting_seconds=oldest,
                       budget_waiting=budget_waiting, live_pods=live_pods)

    async def _oldest_after(self, redis: Redis, keys: Keys, start: str, now_ms: int) -> float:
        """Age of the first stream entry from `start` on: its id is its Redis arrival time."""
        entries: Any = await redis.xrange(keys.stream, min=start, max="+", count=1)
        if not entries:
            return 0.0
        arrived_ms = int(str(entries[0][0]).partition("-")[0])
        return max(0.0, (now_ms - arrived_ms) / 1000)

    async def _undelivered(self, redis: Redis, keys: Keys, last_delivered: str,
                           length: int, in_flight: int) -> int:
        """Entries after the group's last-delivered id (when Redis cannot give `lag`)."""
        entries: Any = await redis.xrange(keys.stream, min=f"({last_delivered}", max="+",
                                          count=XRANGE_CAP)
        counted = len(entries or [])
        if counted < XRANGE_CAP:
            return counted
        # The runtime deletes entries when it acknowledges them, so the stream holds only
        # waiting and in-flight work: its length minus the pending entries is a fair bound.
        return max(counted, length - in_flight)

    async def close(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.aclose()
