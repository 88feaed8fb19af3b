"""No-op throughput, end to end: from the first submit until every result is readable.

    python -m bench throughput                       # full: 20 000 tasks x 5 repetitions
    python -m bench throughput --tasks 200 --reps 1  # smoke (the tests run this)
    python -m bench throughput --submit single       # one submit mode only (default: both)

Per system: start its workers, run a warm-up (excluded; it also waits out start-up), then per
repetition and submit mode (`bench/submit_modes.py`: batched where the SDK can batch, or one
task per call from many concurrent callers; alternated, so noise hits both modes alike)
submit N no-op tasks through the system's SDK and wait until all N results are readable
(Redis keyspace notifications: see `bench/results_watch.py`). Reported, one table per mode:
median [min-max] tasks/s, AgentPool's throughput divided by each system's, and each system's
share of the floor's (`bench/peers/floor.py`: a minimal Streams consumer). Systems that pay a
process per task get fewer tasks (same rate, shorter run), listed in the `tasks` column.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from bench import submit_modes
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
__all__ = ["SYSTEMS", "Run", "Throughput", "add_arguments", "main", "report", "run"]
TASK_DIVISOR = {"spawn": 100, "fork": 5, "rq": 5}
START_TIMEOUT = 120.0


@dataclass
class Throughput:
    system: str
    tasks: int
    mode: str = "batch"  # how tasks were submitted: see bench/submit_modes.py
    rates: list[float] = field(default_factory=list)
    cpu_ms_per_task: list[float] = field(default_factory=list)
    redis_commands_per_task: list[float] = field(default_factory=list)
    # The benchmark's own process: the SDK's submit calls and the result watcher.
    client_cpu_ms_per_task: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.rates)


async def _redis_commands(client: Redis) -> int:
    info = await client.info("stats")
    return int(info["total_commands_processed"])


async def measure_costs(system: System, watcher: ResultWatcher, tasks: int, within: float,
                        result: Throughput) -> None:
    """One repetition, with what it cost: the system's CPU (its processes, not the benchmark),
    Redis commands per task (submission included; the benchmark's own checks excluded), and
    the client's CPU (this process, all threads: it shares the 2 cores with the system)."""
    async with Redis.from_url(system.url) as client:
        cpu, commands = system.cpu_seconds(), await _redis_commands(client)
        client_cpu = time.process_time()
        result.rates.append(await measure(system, watcher, tasks, within, result.mode))
        result.client_cpu_ms_per_task.append((time.process_time() - client_cpu) * 1000 / tasks)
        # Minus the watcher's EXISTS per task and this INFO call.
        used = await _redis_commands(client) - commands - tasks - 1
        result.cpu_ms_per_task.append((system.cpu_seconds() - cpu) * 1000 / tasks)
        result.redis_commands_per_task.append(used / tasks)


async def measure(system: System, watcher: ResultWatcher, tasks: int, within: float,
                  mode: str = "batch") -> float:
    """One repetition: tasks/s from the first submit to the last result readable."""
    start = time.monotonic()
    ids = await submit_modes.submit(system, "noop", [str(i) for i in range(tasks)], mode)
    keys = [system.result_key(t) for t in ids]
    end = await watcher.wait_all(keys, within)
    watcher.forget(keys)
    return tasks / max(end - start, 1e-9)


async def warm_up(system: System, watcher: ResultWatcher, tasks: int,
                  within: float = START_TIMEOUT, mode: str = "batch") -> None:
    """Wait until the system runs tasks (start-up), then run `tasks` more, all excluded."""
    ids = await submit_modes.submit(system, "noop", [str(i) for i in range(tasks)], mode)
    keys = [system.result_key(t) for t in ids]
    await watcher.wait_all(keys, within)
    watcher.forget(keys)


async def run_system(name: str, tasks: int, reps: int, within: float,
                     modes: Sequence[str] = submit_modes.MODES) -> list[Throughput]:
    """One start of the system for every mode; the modes alternate within each repetition."""
    system = SYSTEMS[name](db_url(name))
    count = max(TOTAL_CONCURRENCY, tasks // TASK_DIVISOR.get(name, 1))
    results = [Throughput(name, count, mode) for mode in modes]
    system.start()
    try:
        async with system.watch_results() as watcher:
            for index, mode in enumerate(modes):
                # The first also waits out start-up; later ones only warm their submit path
                # (smaller: a process per task makes every warm-up task cost seconds).
                size = max(TOTAL_CONCURRENCY * (1 if index else 2), count // 10)
                await warm_up(system, watcher, size, mode=mode)
            for _ in range(reps):
                for result in results:
                    system.check_alive()
                    await measure_costs(system, watcher, count, within, result)
    finally:
        await system.close()
        system.stop()
    return results


@dataclass
class Run:
    """Every system's figures, and the machine's 1-minute load average around them."""

    results: list[Throughput]
    load_before: float
    load_after: float


async def run(systems: Sequence[str], tasks: int, reps: int, within: float = 600.0,
              modes: Sequence[str] = submit_modes.MODES) -> Run:
    load_before = os.getloadavg()[0]
    results: list[Throughput] = []
    for name in systems:
        results += await run_system(name, tasks, reps, within, modes)
    return Run(results, load_before, os.getloadavg()[0])


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "inf"


def _share(rate: float, floor: float | None) -> str:
    return f"{rate / floor:.1%}" if floor else "-"


def report_mode(results: Sequence[Throughput]) -> str:
    """One mode's table: ratios against AgentPool and the floor of the same mode."""
    rates = {r.system: r.median for r in results}
    ours, floor = rates.get("agentpool", float("nan")), rates.get("floor")
    rows = [[r.system, str(r.tasks), str(len(r.rates)),
             f"{r.median:,.0f} [{min(r.rates):,.0f}-{max(r.rates):,.0f}]",
             _ratio(ours, r.median), _share(r.median, floor),
             f"{median(r.cpu_ms_per_task):.3f}", f"{median(r.redis_commands_per_task):.1f}",
             f"{median(r.client_cpu_ms_per_task):.3f}"]
            for r in results]
    text = table(["system", "tasks", "reps", "tasks/s median [min-max]", "agentpool / system",
                  "system / floor", "CPU ms/task", "Redis commands/task",
                  "client CPU ms/task"], rows)
    if floor and "agentpool" in rates:
        text += f"\n\nagentpool / floor: {_share(ours, floor)}"
    return text


def report(run: Run) -> str:
    """A table per submit mode, in the order the modes ran."""
    modes = list(dict.fromkeys(r.mode for r in run.results))
    parts = [f"### submit: {mode} ({MODE_NOTES[mode]})\n\n"
             + report_mode([r for r in run.results if r.mode == mode]) for mode in modes]
    parts.append(f"1-minute load average: {run.load_before:.2f} before, "
                 f"{run.load_after:.2f} after")
    return "\n\n".join(parts)


MODE_NOTES = {
    "batch": "each SDK's batched submit where it has one",
    "single": f"one task per SDK call: {submit_modes.ASYNC_CALLERS} concurrent callers for "
              f"async SDKs, {submit_modes.THREAD_CALLERS} threads for blocking ones"}
MODE_CHOICES = {"batch": ("batch",), "single": ("single",), "both": submit_modes.MODES}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--submit", choices=list(MODE_CHOICES), default="both",
                        help="batch, single, or both (a table each)")


def main(args: argparse.Namespace) -> str:
    outcome = asyncio.run(run(args.systems, args.tasks, args.reps,
                              modes=MODE_CHOICES[args.submit]))
    return "\n".join(["## Throughput (no-op, end to end)", machine(), Versions.line(), "",
                      report(outcome)])
