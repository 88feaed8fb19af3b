"""Frames over a worker's pipe: sending, receiving, and the worker's `Outbox`.

The messages and their encoding are `messages.py`; this module moves frames. A frame is one
`send_bytes` on the `multiprocessing` pipe between a worker and its supervisor and carries
every message of one event-loop iteration (see `Outbox`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import cast

from agent_runtime.ipc.messages import (
    TASK_EVENTS,
    Message,
    TaskDone,
    TaskStarted,
    decode,
    encode,
)


def send(conn: Connection, *messages: Message) -> bool:
    """Send one frame; False if the other side is gone (the caller decides what that means)."""
    return send_frame(conn, messages)


def send_frame(conn: Connection, messages: Sequence[Message]) -> bool:
    try:
        conn.send_bytes(encode(messages))
    except (BrokenPipeError, ConnectionResetError, OSError, ValueError):
        return False
    return True


def receive(conn: Connection) -> list[Message] | None:
    """The messages of one frame; None at end of stream (the other side is gone)."""
    try:
        data = conn.recv_bytes()
    except (EOFError, OSError):
        return None
    return decode(data)


# Task events (`messages.TASK_EVENTS`) wait this long for company: with tasks arriving one at
# a time, a frame per task woke the worker (its timer) and the supervisor once more per task,
# about half of the runtime's CPU at 200 tasks/s (bench/RESULTS.md). They only feed metrics
# and the memory-trend attribution, which lag by at most this much; the supervisor learns that
# a handler started from the worker's board (`board.py`), written before the handler's first
# line, so a handler that blocks the loop is still killed at its deadline. Everything else
# goes out in the current iteration.
TASK_EVENT_DELAY_SECONDS = 0.1


class Outbox:
    """Messages to the supervisor go out together, in order, one write per flush.

    Under load a worker finishes several tasks per iteration; one frame for all of them
    replaces a pipe write (a system call, and a wake-up of the supervisor) per task event.
    Ends of tasks may wait `delay` seconds for more to join them; any other message flushes
    what is queued in the current iteration. A task that starts and ends within one frame
    is sent as its TaskDone alone, carrying the start's queue wait: the supervisor would
    learn both at once anyway, and decodes one message per task instead of two. `on_gone` is
    called when the supervisor is gone.
    """

    def __init__(self, conn: Connection, on_gone: Callable[[], None],
                 delay: float = TASK_EVENT_DELAY_SECONDS) -> None:
        self._conn = conn
        self._on_gone = on_gone
        self._delay = delay
        self._queued: list[Message | None] = []
        # Entry id -> the index in `_queued` of its TaskStarted, not sent yet.
        self._unsent_starts: dict[str, int] = {}
        self._soon: asyncio.Handle | None = None
        self._later: asyncio.TimerHandle | None = None

    def put(self, message: Message) -> None:
        kind = type(message)
        if kind is TaskStarted:
            self._unsent_starts[cast(TaskStarted, message).entry] = len(self._queued)
        elif kind is TaskDone:
            done = cast(TaskDone, message)
            index = self._unsent_starts.pop(done.entry, None)
            if index is not None:
                started = cast(TaskStarted, self._queued[index])
                self._queued[index] = None
                done.wait = started.wait
        self._queued.append(message)
        if self._soon is not None:
            return
        loop = asyncio.get_running_loop()
        if not isinstance(message, TASK_EVENTS) or self._delay <= 0:
            self._soon = loop.call_soon(self.flush)
        elif self._later is None:
            self._later = loop.call_later(self._delay, self.flush)

    def flush(self) -> None:
        """Send everything queued now (also called directly before the worker exits)."""
        for handle in (self._soon, self._later):
            if handle is not None:
                handle.cancel()
        self._soon = self._later = None
        queued = [message for message in self._queued if message is not None]
        self._queued = []
        self._unsent_starts.clear()
        if not queued:
            return
        if not send_frame(self._conn, queued):
            self._on_gone()
