"""A keyed, de-duplicating work queue with per-key backoff, run by a few asyncio workers.

The level-based core of the operator: watch events, the resync loop and child changes only
*enqueue* a pool's key; workers run the reconcile for it. A key is never processed by two
workers at once; a key added while it is being processed runs once more afterwards, so no
change is missed and bursts of events collapse into one reconcile. Failed keys come back after
an exponential backoff that resets on success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from agentpool_operator.errors import OperatorError

K = TypeVar("K", bound=Hashable)
log = logging.getLogger(__name__)


class Requeue(Exception):
    """Raised by a handler to have its key processed again after `delay` seconds (no backoff)."""

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(reason or f"requeue in {delay}s")
        self.delay = delay


@dataclass
class Backoff:
    """Exponential delays per key: base, 2 x base, ... capped at `maximum`."""

    base: float = 0.5
    maximum: float = 30.0
    _failures: dict[Hashable, int] = field(default_factory=dict)

    def next_delay(self, key: Hashable) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        return float(min(self.maximum, self.base * (2**failures)))

    def reset(self, key: Hashable) -> None:
        self._failures.pop(key, None)


class WorkQueue(Generic[K]):
    """Runs `handler(key)` for queued keys with `workers` concurrent asyncio tasks."""

    def __init__(
        self,
        handler: Callable[[K], Awaitable[None]],
        *,
        workers: int = 4,
        backoff: Backoff | None = None,
    ) -> None:
        self._handler = handler
        self._workers = workers
        self._backoff = backoff or Backoff()
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, key: K) -> None:
        """Process `key` soon; a no-op if it is already waiting."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Process `key` after `delay` seconds unless something adds it sooner."""
        if key in self._queued:
            return
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        if existing is not None:
            if existing.when() <= loop.time() + delay:
                return
            existing.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: K) -> None:
        """Drop pending retries of a key whose object is gone."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._backoff.reset(key)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"workqueue-{i}")
                       for i in range(self._workers)]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            try:
                await self._handler(key)
            except asyncio.CancelledError:
                raise
            except Requeue as requeue:
                self._backoff.reset(key)
                self._schedule_retry(key, requeue.delay)
            except OperatorError as error:
                # Expected failures (API refusals, conflicts, outages) say enough in one line.
                delay = self._backoff.next_delay(key)
                log.warning("processing %s failed; retrying in %.1fs: %s", key, delay, error)
                self._schedule_retry(key, delay)
            except Exception:
                delay = self._backoff.next_delay(key)
                log.exception("processing %s failed; retrying in %.1fs", key, delay)
                self._schedule_retry(key, delay)
            else:
                self._backoff.reset(key)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)

    def _schedule_retry(self, key: K, delay: float) -> None:
        if key not in self._dirty:
            self.add_after(key, delay)
