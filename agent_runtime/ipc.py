"""Messages between a worker and its supervisor over the worker's pipe (JSON, one per frame).

Worker -> supervisor (`type` field):
    ready       warm-up finished; the worker reads tasks from now on
    boot_error  warm-up failed (handler import, init hook, connections); `error` says why
    heartbeat   every `heartbeat_interval_seconds`: running tasks, metric deltas, DB pool sizes
    start       a task started (`entry`, `task`, `handler`, `wait` = seconds since submission);
                for metrics and task ids: deadlines and hand-overs go by the board
    done        a task execution ended (`outcome`, `duration`, `retried`, `dead`)
    dead        an entry was dead-lettered without running (`handler`, `reason`)
    retiring    the worker reached its task budget and drains itself (`reason`)
    unhealthy   the worker cannot continue safely (a sync handler ignored its timeout)
    batch       several of the above in order (`messages`): a worker sends what one event-loop
                iteration produced in one write (see `Outbox`)

Supervisor -> worker:
    drain       stop reading; finish running tasks within `seconds`, hand back the rest, exit
    pause       stop reading new tasks (memory circuit breaker open)
    resume      read again
    adopt       entries of a dead predecessor were moved to you; claim and run them
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

Message = dict[str, Any]


def send(conn: Connection, message: Message) -> bool:
    """Send one message; False if the other side is gone (the caller decides what that means)."""
    try:
        conn.send_bytes(json.dumps(message, separators=(",", ":")).encode("utf-8"))
    except (BrokenPipeError, ConnectionResetError, OSError, ValueError):
        return False
    return True


def receive(conn: Connection) -> Message | None:
    """Receive one message; None at end of stream or on a frame that is not a message."""
    try:
        data = conn.recv_bytes()
    except (EOFError, OSError):
        return None
    try:
        message = json.loads(data)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def unpack(message: Message) -> Iterator[Message]:
    """The messages a frame carries: itself, or the members of a `batch`, in order."""
    if message.get("type") != "batch":
        yield message
        return
    members = message.get("messages")
    for member in members if isinstance(members, list) else []:
        if isinstance(member, dict):
            yield member


# Task events (start, done, dead) wait this long for company: with tasks arriving one at a
# time, a frame per event woke the supervisor twice per task. They only feed metrics, which
# lag by at most this much; the supervisor learns that a handler started from the worker's
# board (`board.py`), written before the handler's first line, so a handler that blocks the
# loop is still killed at its deadline. Everything else goes out in the current iteration.
TASK_EVENT_DELAY_SECONDS = 0.005
TASK_EVENTS = frozenset({"start", "done", "dead"})


class Outbox:
    """Messages to the supervisor go out together, in order, one write per flush.

    Under load a worker finishes several tasks per iteration; one frame for all of them
    replaces a pipe write (a system call, and a wake-up of the supervisor) per task event.
    Ends of tasks may wait `delay` seconds for more to join them; any other message flushes
    what is queued in the current iteration. `on_gone` is called when the supervisor is gone.
    """

    def __init__(self, conn: Connection, on_gone: Callable[[], None],
                 delay: float = TASK_EVENT_DELAY_SECONDS) -> None:
        self._conn = conn
        self._on_gone = on_gone
        self._delay = delay
        self._queued: list[Message] = []
        self._soon: asyncio.Handle | None = None
        self._later: asyncio.TimerHandle | None = None

    def put(self, message: Message) -> None:
        self._queued.append(message)
        if self._soon is not None:
            return
        loop = asyncio.get_running_loop()
        if message.get("type") not in TASK_EVENTS or self._delay <= 0:
            self._soon = loop.call_soon(self.flush)
        elif self._later is None:
            self._later = loop.call_later(self._delay, self.flush)

    def flush(self) -> None:
        """Send everything queued now (also called directly before the worker exits)."""
        for handle in (self._soon, self._later):
            if handle is not None:
                handle.cancel()
        self._soon = self._later = None
        queued, self._queued = self._queued, []
        if not queued:
            return
        frame = queued[0] if len(queued) == 1 else {"type": "batch", "messages": queued}
        if not send(self._conn, frame):
            self._on_gone()
