"""A worker's lifeline to its supervisor, on a thread of its own.

The thread reads every message the supervisor sends (handing each to the event loop), so it
notices at once when the supervisor is gone - end of file on the pipe - even while a handler
blocks the event loop. Without a supervisor nothing renews this pod's leases, and other pods
would soon reclaim and re-run the tasks this worker is still running; so the worker exits on
the spot. Its entries stay pending and are reclaimed once their lease runs out: no task ever
runs twice at the same time.

For the same reason the thread exits the process when the leases the supervisor last confirmed
(on the board, `board.py`) are about to lapse while a handler runs: the supervisor is stuck, or
cannot reach Redis. (The worker takes no new task meanwhile; see `Worker._consume`.)

The exit is `os._exit`: immediate, whatever the handlers are doing, threads included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from agent_runtime.ipc import pipe
from agent_runtime.ipc.board import Board
from agent_runtime.ipc.exits import EXIT_LEASES_LAPSING, EXIT_SUPERVISOR_GONE
from agent_runtime.ipc.messages import SupervisorMessage

log = logging.getLogger(__name__)

CHECK_EVERY_SECONDS = 0.1


class Lifeline:
    def __init__(self, conn: Connection, board: Board, consumer: str,
                 on_message: Callable[[SupervisorMessage], None],
                 exit_process: Callable[[int], None] = os._exit) -> None:
        self._conn = conn
        self._board = board
        self._consumer = consumer
        self._on_message = on_message
        self._exit = exit_process
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lifeline", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread.start()

    def stop(self) -> None:
        """The worker is exiting on its own: stop watching (the supervisor may close first)."""
        self._stopped.set()

    def supervisor_gone(self) -> None:
        """A write to the supervisor failed (called on the event loop)."""
        if not self._stopped.is_set():
            self._die(EXIT_SUPERVISOR_GONE, "the supervisor is gone (its pipe is closed)")

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._check_leases()
            try:
                ready = self._conn.poll(CHECK_EVERY_SECONDS)
            except (OSError, ValueError):
                ready = True  # closed under us: the read below says so
            if self._stopped.is_set():
                return
            if not ready:
                continue
            messages = pipe.receive(self._conn)
            if messages is None:
                if self._stopped.is_set():
                    return
                self._die(EXIT_SUPERVISOR_GONE, "the supervisor is gone; nothing renews this "
                          "pod's leases, so the running tasks stop now and are reclaimed later")
                return
            for message in messages:
                if self._loop is None or not isinstance(message, SupervisorMessage):
                    continue
                try:
                    self._loop.call_soon_threadsafe(self._on_message, message)
                except RuntimeError:  # the loop closed: the worker is exiting anyway
                    return

    def _check_leases(self) -> None:
        now = time.monotonic()
        if self._board.leases_ok(now):
            return
        running = self._board.started()
        if running:
            self._die(EXIT_LEASES_LAPSING,
                      f"the pod's leases were last confirmed for {len(running)} running "
                      "task(s) until now (the supervisor is stuck or Redis is unreachable); "
                      "stopping before another pod may reclaim them")

    def _die(self, code: int, why: str) -> None:
        log.error("worker %s exits: %s", self._consumer, why)
        for stream in (sys.stderr, sys.stdout):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        self._exit(code)
