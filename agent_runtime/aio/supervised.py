"""Background tasks that must never die silently (the supervisor's upkeep, lease renewal, ...).

`Supervised` runs a loop for as long as its process lives. An exception the loop did not
expect is logged with its traceback and the loop starts again after a backoff (0.5 s,
doubling to 30 s). The loop calls `beat()` whenever it made progress; from that the task
reports its health:

* ready: no crash since its last beat (readiness false meanwhile: the pod takes no new work
  while, for example, nothing promotes retries or hands dead workers' tasks over);
* alive: fewer than `give_up_after` crashes in a row and, when `stall_seconds` is set, a beat
  within that time. Liveness false makes Kubernetes restart the pod, the remedy for a loop
  that cannot recover.

A loop that returns has finished on purpose (there was nothing to do) and is healthy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Beat = Callable[[], None]
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0


class Supervised:
    def __init__(self, name: str, loop: Callable[[Beat], Awaitable[None]], *,
                 stall_seconds: float | None = None, give_up_after: int = 5,
                 first_backoff: float = FIRST_BACKOFF_SECONDS,
                 max_backoff: float = MAX_BACKOFF_SECONDS) -> None:
        self.name = name
        self._loop = loop
        self._stall_seconds = stall_seconds
        self._give_up_after = give_up_after
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self.crashes_in_a_row = 0
        self.restarts = 0
        self.last_error = ""
        self._last_beat = time.monotonic()

    def beat(self) -> None:
        """The loop made progress: it has recovered from any earlier crash."""
        self.crashes_in_a_row = 0
        self._last_beat = time.monotonic()

    async def run(self) -> None:
        while True:
            try:
                await self._loop(self.beat)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # anything: the point is that the loop goes on
                self.crashes_in_a_row += 1
                self.restarts += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = min(self._first_backoff * 2 ** (self.crashes_in_a_row - 1),
                            self._max_backoff)
                log.exception("%s crashed (%d in a row); restarting it in %.1fs", self.name,
                              self.crashes_in_a_row, delay)
                await asyncio.sleep(delay)

    def ready(self) -> tuple[bool, str]:
        if self.crashes_in_a_row:
            return False, f"{self.name} crashed ({self.crashes_in_a_row} in a row): " \
                          f"{self.last_error}"
        return True, f"{self.name} ok"

    def alive(self) -> tuple[bool, str]:
        if self.crashes_in_a_row >= self._give_up_after:
            return False, f"{self.name} cannot recover: {self.crashes_in_a_row} crashes in a " \
                          f"row, last {self.last_error}"
        silent = time.monotonic() - self._last_beat
        if self._stall_seconds is not None and silent > self._stall_seconds:
            return False, f"{self.name} stalled: no progress for {silent:.0f}s"
        return True, f"{self.name} ok"


def all_ok(probes: list[tuple[bool, str]]) -> tuple[bool, str]:
    """The first failing probe, else ok."""
    for ok, detail in probes:
        if not ok:
            return False, detail
    return True, "ok"
