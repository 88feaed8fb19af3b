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

Supervisor -> worker:
    drain       stop reading; finish running tasks within `seconds`, hand back the rest, exit
    pause       stop reading new tasks (memory circuit breaker open)
    resume      read again
    adopt       entries of a dead predecessor were moved to you; claim and run them
"""

from __future__ import annotations

import json
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
