"""A client's reply list, read by one reader that wakes whoever waits for each task.

Workers push the id of every finished task to the reply list named in its envelope (one per
client). A `TaskClient` may have any number of waits going at once; if each popped the list
itself, one wait would take - and lose - the ids another waits for. Instead `ReplyReader`
keeps a single blocking pop going while anyone waits, and hands each id to every `Watch`
that asked for it. A wait registers its watch before it first reads the results, so a reply
is never missed: it either arrives to the watch or its result is already readable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

POP_BLOCK_SECONDS = 1.0
POP_MORE = 1000


class Watch:
    """The task ids one wait is interested in, and those whose reply has come."""

    def __init__(self, reader: ReplyReader, task_ids: Iterable[str]) -> None:
        self._reader = reader
        self.task_ids = frozenset(task_ids)
        self._arrived: set[str] = set()
        self._event = asyncio.Event()

    def deliver(self, task_id: str) -> None:
        self._arrived.add(task_id)
        self._event.set()

    async def arrivals(self, within: float) -> set[str]:
        """The ids that arrived since the last call, waiting up to `within` seconds for one."""
        if not self._arrived:
            try:
                await asyncio.wait_for(self._event.wait(), within)
            except TimeoutError:
                return set()
        arrived, self._arrived = self._arrived, set()
        self._event.clear()
        return arrived

    def __enter__(self) -> Watch:
        self._reader.add(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._reader.remove(self)


class ReplyReader:
    def __init__(self, redis: Redis, key: str) -> None:
        self._redis = redis
        self._key = key
        self._watches: dict[str, set[Watch]] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, task_ids: Iterable[str]) -> Watch:
        """`with reader.watch(ids) as watch:` - replies for `ids` come to `watch`."""
        return Watch(self, task_ids)

    def add(self, watch: Watch) -> None:
        for task_id in watch.task_ids:
            self._watches.setdefault(task_id, set()).add(watch)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._read(),
                                                                 name="reply-reader")

    def remove(self, watch: Watch) -> None:
        for task_id in watch.task_ids:
            watching = self._watches.get(task_id)
            if watching is not None:
                watching.discard(watch)
                if not watching:
                    del self._watches[task_id]

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _read(self) -> None:
        """Pop replies while anyone waits; stops (and forgets itself) when no one does."""
        backoff = 0.1
        while self._watches:
            try:
                popped = await self._redis.blpop([self._key], timeout=POP_BLOCK_SECONDS)
                ids: list[Any] = [popped[1]] if popped else []
                if ids:
                    more: Any = await self._redis.lpop(self._key, POP_MORE)
                    ids += more or []
                backoff = 0.1
            except (RedisError, OSError) as exc:
                # The waits still re-read their results periodically; try again shortly.
                log.warning("reply reader: Redis unavailable (%s)", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception:  # never leave the waits without a reader
                log.exception("reply reader failed; reading again")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for task_id in ids:
                for watch in list(self._watches.get(str(task_id), ())):
                    watch.deliver(str(task_id))
        self._task = None  # no await since the check: a new watch starts a new reader
