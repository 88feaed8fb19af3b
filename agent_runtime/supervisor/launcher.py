"""Starts worker processes from a fork server that already imported the handlers.

Used by `supervisor.py`. Workers are forked from a `multiprocessing` fork server that
preloaded the runtime and the user's handler modules: each new worker starts in milliseconds
with the code already imported and shared copy-on-write, and the supervisor itself may run
threads and an event loop (forking those directly is unsafe). Each worker gets its end of a
pipe, its board (`ipc/board.py`, with the leases the supervisor last confirmed) and its task
budget.
"""

from __future__ import annotations

import logging
import multiprocessing
import random

from agent_runtime.config import RuntimeSettings
from agent_runtime.contract import consumer_name
from agent_runtime.ipc.board import Board
from agent_runtime.supervisor.worker_handle import WorkerHandle
from agent_runtime.worker.process import main as worker_main

log = logging.getLogger(__name__)

WORKER_ENTRY_MODULE = "agent_runtime.worker.process"


class WorkerLauncher:
    def __init__(self, settings: RuntimeSettings, boot_id: str) -> None:
        self._settings = settings
        self._config = settings.config
        self._boot_id = boot_id
        self._mp = multiprocessing.get_context("forkserver")

    def preload(self) -> None:
        """Before the first worker: what the fork server imports once for all of them."""
        refs = [*self._config.handler_map.values(), self._config.init_hook or ""]
        modules = [WORKER_ENTRY_MODULE] + [ref.partition(":")[0] for ref in refs if ref]
        self._mp.set_forkserver_preload(sorted(set(modules)))

    def launch(self, slot: int, generation: int, leases_ok_until: float) -> WorkerHandle:
        """Start the worker of `slot`'s `generation`; raises OSError when the process cannot
        be started (nothing is left open then)."""
        consumer = consumer_name(self._settings.pod_name, self._boot_id, slot, generation)
        max_tasks = None
        if self._config.max_tasks_per_worker is not None:
            # Jitter staggers recycling so the workers do not all restart together.
            max_tasks = self._config.max_tasks_per_worker + random.randint(
                0, self._config.max_tasks_jitter)
        parent_conn, child_conn = self._mp.Pipe(duplex=True)
        board = Board.create(self._config.concurrency)
        board.confirm_leases_until(leases_ok_until)
        process = self._mp.Process(
            target=worker_main, name=f"agentpool-worker-{slot}",
            args=(self._settings, slot, consumer, child_conn, max_tasks, board))
        try:
            process.start()
        except OSError:
            parent_conn.close()
            board.close()
            raise
        finally:
            child_conn.close()
        log.info("started worker %s (pid %s, max tasks %s)", consumer, process.pid, max_tasks)
        return WorkerHandle(slot=slot, generation=generation, consumer=consumer,
                            process=process, conn=parent_conn, max_tasks=max_tasks, board=board)
