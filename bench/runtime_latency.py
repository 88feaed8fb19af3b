"""Submit -> result latency, open loop (Poisson arrivals) at 25/50/80% of each system's own
maximum rate, measured in the same run.

    python -m bench latency                          # full: up to 5 000 tasks per level
    python -m bench latency --tasks 200 --levels 50  # smoke

Per system: start, warm up, measure its drain throughput (its "max rate"), then for each level
submit tasks one by one at scheduled Poisson times through the SDK. A poller checks every
outstanding result key (pipelined EXISTS) every millisecond; latency = first seen - scheduled
submit time (so a late submitter cannot hide queueing: no coordinated omission). The 1 ms poll
adds up to ~1 ms to every system alike. Each level runs at most `--max-seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from bench.peers.base import System
from bench.peers.registry import SYSTEMS
from bench.runtime_common import (
    TOTAL_CONCURRENCY,
    BenchError,
    Versions,
    db_url,
    machine,
    percentile,
    table,
)
from bench.runtime_throughput import TASK_DIVISOR, measure, warm_up

POLL_INTERVAL = 0.001
DEFAULT_SYSTEMS = ["agentpool", "celery", "rq", "arq"]


@dataclass
class Level:
    system: str
    percent: int
    rate: float
    latencies: list[float] = field(default_factory=list)

    def q(self, pct: float) -> float:
        return percentile(sorted(self.latencies), pct) * 1000


async def _poll(client: Redis, system: System, pending: dict[str, float], level: Level,
                done: asyncio.Event) -> None:
    """Record each task's latency the first time its result key exists."""
    while not (done.is_set() and not pending):
        ids = list(pending)
        if ids:
            async with client.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.exists(system.result_key(task_id))
                found = await pipe.execute()
            now = time.monotonic()
            for task_id, exists in zip(ids, found, strict=True):
                if exists:
                    level.latencies.append(now - pending.pop(task_id))
        await asyncio.sleep(POLL_INTERVAL)


async def run_level(system: System, level: Level, tasks: int, drain: float) -> None:
    client = Redis.from_url(system.url)
    pending: dict[str, float] = {}
    done = asyncio.Event()
    poller = asyncio.create_task(_poll(client, system, pending, level, done))
    try:
        scheduled = time.monotonic()
        for i in range(tasks):
            scheduled += random.expovariate(level.rate)
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            [task_id] = await system.submit("noop", [str(i)])
            pending[task_id] = scheduled
        done.set()
        await asyncio.wait_for(poller, drain)
    except TimeoutError as exc:
        raise BenchError(f"{system.name}: {len(pending)} results missing after {drain}s") from exc
    finally:
        poller.cancel()
        await client.aclose()


async def run_system(name: str, levels: Sequence[int], tasks: int,
                     max_seconds: float) -> list[Level]:
    system = SYSTEMS[name](db_url(name))
    system.start()
    results = []
    try:
        drain_tasks = max(TOTAL_CONCURRENCY * 4, tasks // TASK_DIVISOR.get(name, 1))
        await warm_up(system, drain_tasks // 10 + TOTAL_CONCURRENCY)
        max_rate = await measure(system, drain_tasks, 600)
        for percent in levels:
            level = Level(name, percent, max_rate * percent / 100)
            count = max(20, min(tasks, int(level.rate * max_seconds)))
            system.check_alive()
            await run_level(system, level, count, drain=60)
            results.append(level)
    finally:
        await system.close()
        system.stop()
    return results


async def run(systems: Sequence[str], levels: Sequence[int], tasks: int,
              max_seconds: float = 30.0) -> list[Level]:
    results: list[Level] = []
    for name in systems:
        results += await run_system(name, levels, tasks, max_seconds)
    return results


def report(results: Sequence[Level]) -> str:
    ours = {r.percent: r.q(99) for r in results if r.system == "agentpool"}
    rows = []
    for r in results:
        mine = ours.get(r.percent)
        ratio = f"{r.q(99) / mine:.1f}x" if mine else "-"
        rows.append([r.system, f"{r.percent}%", f"{r.rate:,.0f}", str(len(r.latencies)),
                     f"{r.q(50):.2f}", f"{r.q(99):.2f}", f"{r.q(99.9):.2f}", ratio])
    return table(["system", "load", "rate/s", "samples", "p50 ms", "p99 ms", "p99.9 ms",
                  "system p99 / agentpool p99"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--systems", nargs="+", default=DEFAULT_SYSTEMS, choices=list(SYSTEMS))
    parser.add_argument("--levels", type=int, nargs="+", default=[25, 50, 80])
    parser.add_argument("--tasks", type=int, default=5000, help="most tasks per level")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="longest level")


def main(args: argparse.Namespace) -> str:
    results = asyncio.run(run(args.systems, args.levels, args.tasks, args.max_seconds))
    return "\n".join(["## Latency submit -> result readable (open loop, % of own max rate)",
                      machine(), Versions.line(), "", report(results)])
