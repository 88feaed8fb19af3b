"""The interface every benchmarked system implements, and its worker process handling.

A system starts its worker processes (real subprocesses in their own session, so the whole
tree can be killed), submits tasks through its own client SDK with the bench's task names, and
says where the result of each submitted task becomes readable in Redis.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import psutil

from bench.results_watch import ResultWatcher

REPO_ROOT = Path(__file__).resolve().parents[2]
# Task kinds every system knows: see bench/handlers.py.
KINDS = ("noop", "heavy", "chaos")


class System(ABC):
    name: str
    # A blocking SDK (Celery, RQ, a plain redis client): its single submits run on threads.
    blocking = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logdir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))

    @abstractmethod
    def start(self) -> None:
        """Start the worker processes (they may still be warming up when this returns)."""

    @abstractmethod
    async def submit(self, kind: str, args: Sequence[str]) -> list[str]:
        """Submit one task of `kind` per arg; returns the system's task ids, in order."""

    async def submit_one(self, kind: str, arg: str) -> str:
        """One task through the SDK's single-submit call (async SDKs)."""
        [task_id] = await self.submit(kind, [arg])
        return task_id

    def submit_one_blocking(self, kind: str, arg: str) -> str:
        """One task through the SDK's single-submit call, in the caller's thread (blocking
        SDKs, which set `blocking`)."""
        raise NotImplementedError(f"{self.name} has an async SDK: use submit_one")

    @abstractmethod
    def result_key(self, task_id: str) -> str:
        """The Redis key holding the task's result once it is readable through the SDK."""

    def result_prefix(self) -> str:
        """What every result key starts with (the task id comes last in each system's key)."""
        return self.result_key("")

    async def timeline(self, result_keys: Sequence[str]) -> dict[str, tuple[float, float, float]]:
        """Result key -> (enqueued, started, finished) Unix times, where the system records
        them in its results; empty when it does not (only AgentPool's results carry all three)."""
        return {}

    def watch_results(self) -> ResultWatcher:
        """A watcher that is told by Redis when each of this system's results is written."""
        return ResultWatcher(self.url, self.result_prefix())

    async def close(self) -> None:  # noqa: B027 - optional hook, most systems need nothing
        """Release client connections."""

    def worker_pids(self) -> list[int]:
        """Processes that run tasks (the crash test kills these)."""
        pids: list[int] = []
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                pids.extend(c.pid for c in psutil.Process(proc.pid).children(recursive=True))
        return pids

    def cpu_seconds(self) -> float:
        """CPU time used so far by the system's processes: live ones, plus the children they
        already reaped (a process per task counts too)."""
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                top = psutil.Process(proc.pid)
                for member in [top, *top.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        times = member.cpu_times()
                        total += (times.user + times.system + times.children_user
                                  + times.children_system)
        return total

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "hack")])
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        # BENCH_SYSTEM_CPUS="1": the system's processes on those CPUs only (taskset), e.g. away
        # from the load generator, to tell core contention from the system's own latency.
        cpus = os.environ.get("BENCH_SYSTEM_CPUS")
        if cpus:
            argv = ["taskset", "-c", cpus, *argv]
        log = self.logdir / f"proc-{len(self.procs)}.log"
        with log.open("wb") as out:
            self.procs.append(subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env or self.env(), stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True))

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                logs = "\n".join(p.read_text(errors="replace")[-2000:]
                                 for p in sorted(self.logdir.glob("*.log")))
                raise RuntimeError(f"{self.name} exited ({proc.returncode}):\n{logs}")

    def stop(self) -> None:
        """SIGTERM the sessions, SIGKILL what is left after a few seconds."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.procs.clear()


def python() -> str:
    return sys.executable


def bin_path(name: str) -> str:
    """A console script installed next to the interpreter (celery, rq, arq)."""
    return str(Path(sys.executable).with_name(name))
