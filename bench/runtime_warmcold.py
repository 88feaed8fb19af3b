"""Warm vs cold: latency of the first task whose handler needs heavy libraries (pydantic and
numpy), on a warm AgentPool pool vs a new process per task (spawn) vs fork per task.

    python -m bench warmcold            # 5 repetitions
    python -m bench warmcold --reps 1   # smoke

AgentPool: a freshly started pool (its init hook imports the libraries during warm-up, before
the pool reports ready), one `heavy` task once a no-op has gone through: that is the first
heavy task. Restarted for every repetition. Spawn/fork: every task is a first task; one at a
time. Also a no-op on the same warm pool, the floor of submit + run + result readable.
Results are seen through Redis keyspace notifications (`bench/results_watch.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.peers.base import System
from bench.peers.registry import SYSTEMS
from bench.results_watch import ResultWatcher
from bench.runtime_common import Versions, db_url, machine, median, table
from bench.runtime_throughput import warm_up

SYSTEMS_COMPARED = ["agentpool", "spawn", "fork"]


@dataclass
class FirstTask:
    system: str
    heavy: list[float] = field(default_factory=list)
    noop: list[float] = field(default_factory=list)


async def one_task(system: System, watcher: ResultWatcher, kind: str) -> float:
    """Seconds from submit to the result readable, for one task on an idle system."""
    start = time.monotonic()
    [task_id] = await system.submit(kind, ["0"])
    key = system.result_key(task_id)
    end = await watcher.wait_all([key], 60)
    watcher.forget([key])
    return end - start


async def _measure(system: System, result: FirstTask, reps: int) -> None:
    system.start()
    try:
        async with system.watch_results() as watcher:
            await warm_up(system, watcher, 1)
            for _ in range(reps):
                result.heavy.append(await one_task(system, watcher, "heavy"))
                result.noop.append(await one_task(system, watcher, "noop"))
    finally:
        await system.close()
        system.stop()


async def run_system(name: str, reps: int) -> FirstTask:
    result = FirstTask(name)
    if name == "agentpool":  # a fresh pool per repetition: its very first heavy task
        for _ in range(reps):
            await _measure(SYSTEMS[name](db_url(name)), result, 1)
    else:
        await _measure(SYSTEMS[name](db_url(name)), result, reps)
    return result


async def run(systems: Sequence[str], reps: int) -> list[FirstTask]:
    return [await run_system(name, reps) for name in systems]


def report(results: Sequence[FirstTask]) -> str:
    ours = next((median(r.heavy) for r in results if r.system == "agentpool"), float("nan"))
    rows = [[r.system, str(len(r.heavy)), f"{median(r.heavy) * 1000:.2f}",
             f"{min(r.heavy) * 1000:.2f}-{max(r.heavy) * 1000:.2f}",
             f"{median(r.noop) * 1000:.2f}",
             f"{(median(r.heavy) - median(r.noop)) * 1000:.2f}",
             f"{median(r.heavy) / ours:.0f}x" if ours else "-"] for r in results]
    return table(["system", "reps", "first heavy task ms (median)", "min-max ms",
                  "no-op task ms", "heavy - no-op ms", "system / agentpool"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--systems", nargs="+", default=SYSTEMS_COMPARED, choices=list(SYSTEMS))
    parser.add_argument("--reps", type=int, default=5)


def main(args: argparse.Namespace) -> str:
    results = asyncio.run(run(args.systems, args.reps))
    return "\n".join(["## Warm vs cold: first task importing pydantic + numpy", machine(),
                      Versions.line(), "", report(results)])
