"""Crash recovery: kill -9 busy workers at random while 20 000 tasks run; count tasks lost and
duplicated, and time each killed worker's in-flight tasks until they complete elsewhere.

    python -m bench crash                 # 20 000 tasks, a kill every 0.5-1.5 s
    python -m bench crash --tasks 200     # smoke

Systems: AgentPool and Celery (acks_late + reject_on_worker_lost, visibility_timeout 30 s).
The task (`handlers.chaos`) counts its executions in Redis and marks itself running in its pid
while it sleeps 0-50 ms, so a kill always hits a worker with a task in flight, and we know
which. lost = tasks with no readable result when the drain deadline passes; duplicated =
executions beyond the first (duplicate rate: per task); concurrent runs = executions that
began while another execution of the same task was still running.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from bench import handlers
from bench.peers.base import System
from bench.peers.registry import SYSTEMS
from bench.results_watch import ResultWatcher
from bench.runtime_common import Versions, db_url, machine, median, table
from bench.runtime_throughput import warm_up

PREFIX = "bench:chaos"
# The floor redelivers nothing from a killed consumer, by design: it would only count losses.
NO_RECOVERY = {"floor"}


@dataclass
class Crash:
    system: str
    tasks: int
    kills: int = 0
    recoveries: list[float] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0
    concurrent: int = 0
    seconds: float = 0.0


async def _kill_one(system: System, client: Redis, ids: list[str],
                    kills: list[tuple[float, list[str]]]) -> None:
    running = await client.hgetall(f"{PREFIX}:running")
    workers = set(system.worker_pids())
    busy = [(int(pid), task.decode() if isinstance(task, bytes) else str(task))
            for task, pid in running.items() if int(pid) in workers]
    if not busy:
        return
    pid = random.choice(busy)[0]
    in_flight = [ids[int(task)] for p, task in busy if p == pid]
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    kills.append((time.monotonic(), in_flight))


def _recovery(watcher: ResultWatcher, keys: list[str], killed_at: float) -> float | None:
    """Seconds from the kill until every task in flight on the killed worker was readable."""
    seen = [watcher.first_seen.get(k) for k in keys]
    if not keys or None in seen:
        return None
    return max(0.0, max(t for t in seen if t is not None) - killed_at)


async def run_system(name: str, tasks: int, interval: float, drain: float) -> Crash:
    url = db_url(name)
    os.environ[handlers.CHAOS_URL_ENV] = url
    os.environ[handlers.CHAOS_PREFIX_ENV] = PREFIX
    system = SYSTEMS[name](url)
    system.start()
    client = Redis.from_url(url)
    result = Crash(name, tasks)
    try:
        async with system.watch_results() as watcher:
            await warm_up(system, watcher, 32)
            start = time.monotonic()
            ids = await system.submit("chaos", [str(i) for i in range(tasks)])
            keys = [system.result_key(t) for t in ids]
            deadline = start + drain
            kills: list[tuple[float, list[str]]] = []
            while time.monotonic() < deadline and len(watcher.first_seen) < len(keys):
                before = len(kills)
                await _kill_one(system, client, ids, kills)
                # After a kill, wait about `interval`; until one lands, look again soon.
                pause = random.uniform(0.5, 1.5) * interval if len(kills) > before else 0.01
                await asyncio.sleep(pause)
            result.seconds = time.monotonic() - start
            result.kills = len(kills)
            recoveries = (_recovery(watcher, [system.result_key(t) for t in in_flight], at)
                          for at, in_flight in kills)
            result.recoveries = [r for r in recoveries if r is not None]
            seen = [k for k in keys if k in watcher.first_seen]
            await watcher.confirm(seen)
            # Not announced is not yet lost: check those directly.
            result.lost = len(await watcher.missing(
                [k for k in keys if k not in watcher.first_seen]))
        executions = await client.hvals(f"{PREFIX}:exec")
        result.duplicated = sum(max(0, int(n) - 1) for n in executions)
        result.concurrent = sum(int(n) for n in await client.hvals(handlers.overlaps_key()))
    finally:
        await client.aclose()
        await system.close()
        system.stop()
    return result


async def run(systems: Sequence[str], tasks: int, interval: float = 1.0,
              drain: float = 600.0) -> list[Crash]:
    return [await run_system(name, tasks, interval, drain) for name in systems]


def report(results: Sequence[Crash]) -> str:
    ours = next((median(r.recoveries) for r in results if r.system == "agentpool"), 0.0)
    rows = [[r.system, str(r.tasks), str(r.kills), str(r.lost), str(r.duplicated),
             f"{r.duplicated / r.tasks:.2%}", f"{r.duplicated / max(r.kills, 1):.1f}",
             str(r.concurrent),
             f"{median(r.recoveries) * 1000:.0f}" if r.recoveries else "-",
             f"{max(r.recoveries) * 1000:.0f}" if r.recoveries else "-",
             f"{median(r.recoveries) / ours:.1f}x" if ours and r.recoveries else "-",
             f"{r.seconds:.1f}"] for r in results]
    return table(["system", "tasks", "kills", "lost", "duplicated", "duplicate rate",
                  "duplicates per kill", "concurrent runs", "recovery ms (median)",
                  "recovery ms (max)", "recovery / agentpool", "run s"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--systems", nargs="+", default=["agentpool", "celery"],
                        choices=[s for s in SYSTEMS if s not in NO_RECOVERY])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--interval", type=float, default=1.0, help="mean seconds between kills")


def main(args: argparse.Namespace) -> str:
    results = asyncio.run(run(args.systems, args.tasks, args.interval))
    return "\n".join(["## Crash recovery: kill -9 of busy workers", machine(), Versions.line(),
                      "", report(results)])
