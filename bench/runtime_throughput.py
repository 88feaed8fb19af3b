"""No-op throughput, end to end: from the first submit until every result is readable.

    python -m bench throughput                       # full: 20 000 tasks x 5 repetitions
    python -m bench throughput --tasks 200 --reps 1  # smoke (the tests run this)

Per system: start its workers, run a warm-up batch (excluded; it also waits out start-up),
then per repetition submit N no-op tasks through the system's SDK (batched where the SDK can)
and wait until all N results are readable (Redis keyspace notifications: see
`bench/results_watch.py`). Reported: median [min-max] tasks/s, and AgentPool's
throughput divided by each system's. Systems that pay a process per task get fewer tasks
(same rate, shorter run), listed in the `tasks` column.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from bench.peers.base import System
from bench.peers.registry import SYSTEMS
from bench.results_watch import ResultWatcher
from bench.runtime_common import (
    TOTAL_CONCURRENCY,
    Versions,
    db_url,
    machine,
    median,
    table,
)

# A process per task runs at tens to hundreds of tasks/s: fewer tasks keep runs short.
__all__ = ["SYSTEMS", "Throughput", "add_arguments", "main", "report", "run"]
TASK_DIVISOR = {"spawn": 100, "fork": 5, "rq": 5}
START_TIMEOUT = 120.0


@dataclass
class Throughput:
    system: str
    tasks: int
    rates: list[float] = field(default_factory=list)
    cpu_ms_per_task: list[float] = field(default_factory=list)
    redis_commands_per_task: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.rates)


async def _redis_commands(client: Redis) -> int:
    info = await client.info("stats")
    return int(info["total_commands_processed"])


async def measure_costs(system: System, watcher: ResultWatcher, tasks: int, within: float,
                        result: Throughput) -> None:
    """One repetition, with what it cost: the system's CPU (its processes, not the benchmark)
    and Redis commands per task (submission included; the benchmark's own checks excluded)."""
    async with Redis.from_url(system.url) as client:
        cpu, commands = system.cpu_seconds(), await _redis_commands(client)
        result.rates.append(await measure(system, watcher, tasks, within))
        # Minus the watcher's EXISTS per task and this INFO call.
        used = await _redis_commands(client) - commands - tasks - 1
        result.cpu_ms_per_task.append((system.cpu_seconds() - cpu) * 1000 / tasks)
        result.redis_commands_per_task.append(used / tasks)


async def measure(system: System, watcher: ResultWatcher, tasks: int, within: float) -> float:
    """One repetition: tasks/s from the first submit to the last result readable."""
    start = time.monotonic()
    ids = await system.submit("noop", [str(i) for i in range(tasks)])
    keys = [system.result_key(t) for t in ids]
    end = await watcher.wait_all(keys, within)
    watcher.forget(keys)
    return tasks / max(end - start, 1e-9)


async def warm_up(system: System, watcher: ResultWatcher, tasks: int,
                  within: float = START_TIMEOUT) -> None:
    """Wait until the system runs tasks (start-up), then run `tasks` more, all excluded."""
    ids = await system.submit("noop", [str(i) for i in range(tasks)])
    keys = [system.result_key(t) for t in ids]
    await watcher.wait_all(keys, within)
    watcher.forget(keys)


async def run_system(name: str, tasks: int, reps: int, within: float) -> Throughput:
    system = SYSTEMS[name](db_url(name))
    result = Throughput(name, max(TOTAL_CONCURRENCY, tasks // TASK_DIVISOR.get(name, 1)))
    system.start()
    try:
        async with system.watch_results() as watcher:
            await warm_up(system, watcher, max(TOTAL_CONCURRENCY * 2, result.tasks // 10))
            for _ in range(reps):
                system.check_alive()
                await measure_costs(system, watcher, result.tasks, within, result)
    finally:
        await system.close()
        system.stop()
    return result


async def run(systems: Sequence[str], tasks: int, reps: int,
              within: float = 600.0) -> list[Throughput]:
    return [await run_system(name, tasks, reps, within) for name in systems]


def report(results: Sequence[Throughput]) -> str:
    ours = next((r.median for r in results if r.system == "agentpool"), float("nan"))
    rows = [[r.system, str(r.tasks), str(len(r.rates)),
             f"{r.median:,.0f} [{min(r.rates):,.0f}-{max(r.rates):,.0f}]",
             f"{ours / r.median:.2f}x" if r.median else "inf",
             f"{median(r.cpu_ms_per_task):.2f}", f"{median(r.redis_commands_per_task):.1f}"]
            for r in results]
    return table(["system", "tasks", "reps", "tasks/s median [min-max]", "agentpool / system",
                  "CPU ms/task", "Redis commands/task"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)


def main(args: argparse.Namespace) -> str:
    results = asyncio.run(run(args.systems, args.tasks, args.reps))
    return "\n".join(["## Throughput (no-op, end to end)", machine(), Versions.line(), "",
                      report(results)])
