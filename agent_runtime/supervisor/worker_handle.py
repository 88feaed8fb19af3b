"""The supervisor's record of one worker process, updated from the worker's messages.

Owned by `supervisor.py`; this module only keeps the facts (what runs where since when, last
sign of life) and derives the worker's state from them, so the decisions stay in one place.
When a handler started, and which entries really started, come from the worker's board
(`ipc/board.py`), which is written independently of the worker's event loop and read here even
after the worker died; the messages add task ids and handler names for metrics and errors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from agent_runtime.ipc.board import Board, TaskSlot, TaskSlotState
from agent_runtime.ipc.messages import DbPoolSizes, Heartbeat, RunningEntry


@dataclass
class WorkerHandle:
    slot: int
    generation: int
    consumer: str
    process: BaseProcess
    conn: Connection
    max_tasks: int | None
    spawned_at: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    ready: bool = False
    running: dict[str, RunningEntry] = field(default_factory=dict)
    retiring: str | None = None  # why we asked it to drain
    retire_detail: str | None = None  # what the worker said (unhealthy: which handler, why)
    retire_deadline: float = 0.0
    kill_reason: str | None = None  # why we killed it (it is about to exit)
    exited: bool = False
    uss: int | None = None
    db_pool: DbPoolSizes | None = None
    boot_error: str | None = None
    exit_error: str | None = None  # why it died or was killed, for its tasks' last error
    board: Board | None = None
    # At exit: the entries whose execution had started (read from the board, then closed).
    started_at_exit: tuple[str, ...] = ()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def state(self) -> str:
        """One of metrics.WORKER_STATES."""
        if self.kill_reason is not None:
            return "unhealthy"
        if self.retiring is not None:
            return "draining"
        if not self.ready:
            return "starting"
        return "busy" if self.running else "idle"

    def apply_heartbeat(self, heartbeat: Heartbeat) -> None:
        """A heartbeat carries the full list of running tasks: resynchronise with it, so a
        lost start/done message cannot leave a phantom task that looks hung forever."""
        self.running = {entry.entry_id: entry for entry in heartbeat.running}
        self.db_pool = heartbeat.db

    def oldest_task_age(self, now: float) -> float:
        """Seconds since the oldest running handler started (`now`: monotonic), from the
        board: a handler that blocked the worker's loop from its first line counts too."""
        started = [slot.started_at for slot in self.started_slots()
                   if slot.state is TaskSlotState.STARTED]
        return now - min(started) if started else 0.0

    def started_slots(self) -> list[TaskSlot]:
        return self.board.started() if self.board is not None and not self.exited else []

    def close_board(self) -> None:
        """At exit: keep which entries had started, release the shared memory."""
        if self.board is not None:
            self.started_at_exit = tuple(slot.entry_id for slot in self.board.started())
            self.board.close()
            self.board = None

    def task_ids(self, entry_ids: tuple[str, ...] | list[str]) -> list[str]:
        """Task ids of these entries, as far as the worker reported them."""
        known = (self.running.get(entry_id) for entry_id in entry_ids)
        return [entry.task_id for entry in known if entry is not None and entry.task_id]
