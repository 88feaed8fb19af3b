"""When each result becomes readable, pushed by Redis instead of polled.

Polling result keys costs the benchmark CPU that the systems under test need (a profile showed
the old EXISTS poller using 77 % of a core on a 2-core machine) and adds the poll interval to
every latency. Instead the watcher subscribes to Redis keyspace notifications for the keys
under a system's result prefix: Redis publishes one message when the command that writes a
result (SET/SETEX for AgentPool, Celery, arq and the baselines; XADD for RQ's result stream)
has run, so the key is readable by then. Every system is observed the same way.

Notifications are switched on for the string (`$`) and stream (`t`) classes for the duration
of the watch and restored afterwards. A final pipelined EXISTS confirms that every key the
watcher reported really exists, so a lost or spurious message cannot pass unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

from redis.asyncio import Redis

GLOB_SPECIALS = "\\*?["


class ResultTimeout(RuntimeError):
    """Some results did not become readable within the deadline."""


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in GLOB_SPECIALS else c for c in text)


class ResultWatcher:
    """Records the first time each key under `prefix` is written, from keyspace events."""

    def __init__(self, url: str, prefix: str) -> None:
        self._client: Redis = Redis.from_url(url)
        self._db = int(self._client.connection_pool.connection_kwargs.get("db", 0))
        self._channel_prefix = f"__keyspace@{self._db}__:".encode() + prefix.encode()
        self._prefix = prefix
        self._pubsub = self._client.pubsub()
        self._reader: asyncio.Task[None] | None = None
        self._saved_flags = ""
        self.first_seen: dict[str, float] = {}
        self._waiting: set[str] = set()
        self._all_seen = asyncio.Event()
        self.on_seen: Callable[[str, float], None] | None = None

    async def __aenter__(self) -> ResultWatcher:
        config = await self._client.config_get("notify-keyspace-events")
        saved = config.get("notify-keyspace-events") or ""
        self._saved_flags = saved.decode() if isinstance(saved, bytes) else str(saved)
        await self._client.config_set("notify-keyspace-events", "K$t")
        pattern = f"__keyspace@{self._db}__:{_glob_escape(self._prefix)}*"
        await self._pubsub.psubscribe(pattern)
        # The subscription counts only once Redis confirmed it: read that confirmation first.
        while True:
            message = await self._pubsub.get_message(timeout=5.0)
            if message is None:
                raise ResultTimeout("Redis did not confirm the keyspace subscription")
            if message["type"] == "psubscribe":
                break
        self._reader = asyncio.create_task(self._read(), name="result-watcher")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
        with contextlib.suppress(Exception):
            await self._client.config_set("notify-keyspace-events", self._saved_flags)
        await self._client.aclose()

    async def _read(self) -> None:
        cut = len(self._channel_prefix) - len(self._prefix.encode())
        while True:
            message: Any = await self._pubsub.get_message(timeout=1.0)
            if message is None or message["type"] != "pmessage":
                continue
            now = time.monotonic()
            key = message["channel"][cut:].decode()
            if key in self.first_seen:
                continue
            self.first_seen[key] = now
            if self.on_seen is not None:
                self.on_seen(key, now)
            if key in self._waiting:
                self._waiting.discard(key)
                if not self._waiting:
                    self._all_seen.set()

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.first_seen.pop(key, None)

    async def wait_all(self, keys: Sequence[str], within: float) -> float:
        """Wait until every key has been written; returns the monotonic time of the last."""
        self._waiting = {k for k in keys if k not in self.first_seen}
        self._all_seen.clear()
        if self._waiting:
            try:
                await asyncio.wait_for(self._all_seen.wait(), within)
            except TimeoutError as exc:
                raise ResultTimeout(f"{len(self._waiting)} of {len(keys)} results not readable "
                                    f"after {within:g}s") from exc
        await self.confirm(keys)
        return max((self.first_seen[k] for k in keys), default=time.monotonic())

    async def confirm(self, keys: Sequence[str]) -> None:
        """Check that the keys reported as written really exist (catches a wrong prefix or a
        system that deletes results)."""
        missing = await self.missing(keys)
        if missing:
            raise ResultTimeout(f"{len(missing)} results were announced but are not "
                                f"readable, e.g. {missing[0]}")

    async def missing(self, keys: Sequence[str], batch: int = 5000) -> list[str]:
        """The keys that do not exist, checked directly in Redis (pipelined EXISTS)."""
        absent: list[str] = []
        for start in range(0, len(keys), batch):
            chunk = keys[start:start + batch]
            async with self._client.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.exists(key)
                found = await pipe.execute()
            absent += [k for k, f in zip(chunk, found, strict=True) if not f]
        return absent
