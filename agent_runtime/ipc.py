"""Messages between a worker and its supervisor over the worker's pipe (JSON, one per frame).

Worker -> supervisor (`type` field):
    ready       warm-up finished; the worker reads tasks from now on
    boot_error  warm-up failed (handler import, init hook, connections); `error` says why
    heartbeat   every `heartbeat_interval_seconds`: running tasks, metric deltas, DB pool sizes
    start       a task started (`entry`, `task`, `handler`, `wait` = seconds since submission)
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


class Outbox:
    """Messages queued during one event-loop iteration go to the supervisor in one write.

    Under load a worker finishes several tasks per iteration; one frame for all of them
    replaces a pipe write (a system call) per task event. Order is kept, and nothing waits
    longer than the current iteration. `on_gone` is called when the supervisor is gone.
    """

    def __init__(self, conn: Connection, on_gone: Callable[[], None]) -> None:
        self._conn = conn
        self._on_gone = on_gone
        self._queued: list[Message] = []
        self._scheduled = False

    def put(self, message: Message) -> None:
        self._queued.append(message)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send everything queued now (also called directly before the worker exits)."""
        self._scheduled = False
        queued, self._queued = self._queued, []
        if not queued:
            return
        frame = queued[0] if len(queued) == 1 else {"type": "batch", "messages": queued}
        if not send(self._conn, frame):
            self._on_gone()
