"""Entry point of a worker process (the target the supervisor starts through the fork server).

Sets up what belongs to the process rather than to the event loop: signals, logging, the OOM
score, then runs `Worker` and exits with a code the supervisor understands. Exits with
`os._exit` so a handler thread stuck in C code cannot keep a retired worker alive.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from multiprocessing.connection import Connection

from agent_runtime.config import RuntimeSettings
from agent_runtime.ipc import pipe
from agent_runtime.ipc.board import Board
from agent_runtime.ipc.exits import EXIT_BOOT_ERROR, EXIT_OK, EXIT_SUPERVISOR_GONE
from agent_runtime.ipc.messages import BootError
from agent_runtime.worker.worker import Worker

PR_SET_PDEATHSIG = 1
# The kernel OOM killer prefers workers over the supervisor (which only supervises).
WORKER_OOM_SCORE_ADJ = 800

log = logging.getLogger(__name__)


def configure_logging(level: str, who: str) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, force=True,
        format=f"%(asctime)s %(levelname)s {who}[%(process)d] %(name)s: %(message)s")


def _raise_oom_score() -> None:
    try:
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as handle:
            handle.write(str(WORKER_OOM_SCORE_ADJ))
    except OSError:
        pass  # not Linux, or not allowed: only a preference


async def _amain(worker: Worker, conn: Connection) -> int:
    loop = asyncio.get_running_loop()
    # The supervisor coordinates shutdown; a SIGTERM sent to the whole process group (a
    # terminal, `kill -- -pgid`) still means "drain", never "die mid-task".
    loop.add_signal_handler(signal.SIGTERM, worker.drain, worker.config.drain_grace_seconds)
    try:
        await worker.warm_up()
    except Exception as exc:  # user code (imports, init hook) or connections failed
        log.exception("worker %s failed to warm up", worker.consumer)
        pipe.send(conn, BootError(f"{type(exc).__name__}: {exc}"))
        return EXIT_BOOT_ERROR
    await worker.run()
    return EXIT_OK


def _die_with_parent() -> None:
    """Be killed when our parent, the fork server, exits - which it does the moment the
    supervisor dies. Without a supervisor nothing renews our leases: other pods would soon
    re-run the tasks we still run (`lifeline.py` notices too; this needs no Python code to
    run, so it works even while a handler holds the GIL)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the C library the interpreter runs on
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: the lifeline thread alone
    if os.getppid() != parent:  # it died before we asked
        os._exit(EXIT_SUPERVISOR_GONE)


def main(settings: RuntimeSettings, slot: int, consumer: str, conn: Connection,
         max_tasks: int | None, board: Board) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor's drain
    configure_logging(settings.config.log_level, f"worker-{slot}")
    _raise_oom_score()
    worker = Worker(settings, slot, consumer, conn, max_tasks, board)
    # Not asyncio.run(): its shutdown joins executor threads, and a sync handler stuck past its
    # timeout would keep this process alive forever. Durable state is in Redis/PostgreSQL.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    code = loop.run_until_complete(_amain(worker, conn))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
