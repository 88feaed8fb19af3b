"""Single-flight: concurrent calls for one key share one run of the work (in one process).

The work runs as its own asyncio task, so a caller that is cancelled (its task timed out or
was cancelled) neither cancels the others' wait nor the work itself; every caller gets the
same value or the same exception. Once the work ends, the next call for the key runs it anew.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._running: dict[str, asyncio.Task[Any]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._running

    async def do(self, key: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """`work()`'s value, and whether this call joined a run another call started."""
        running = self._running.get(key)
        joined = running is not None
        if running is None:
            running = asyncio.ensure_future(work())
            self._running[key] = running
            running.add_done_callback(lambda done: self._finished(key, done))
        value: T = await asyncio.shield(running)
        return value, joined

    def forget(self, key: str) -> None:
        """Calls from now on run the work anew, even while an earlier run is still going."""
        self._running.pop(key, None)

    def _finished(self, key: str, done: asyncio.Task[Any]) -> None:
        if self._running.get(key) is done:
            del self._running[key]
        if not done.cancelled():
            done.exception()  # retrieved: a run whose callers all left logs no warning
