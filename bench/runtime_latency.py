"""Submit -> result latency, open loop (Poisson arrivals) at 25/50/80% of each system's own
maximum rate, measured in the same run.

    python -m bench latency                          # full: up to 5 000 tasks per level
    python -m bench latency --tasks 200 --levels 50  # smoke

Per system: start, warm up, measure its drain throughput (its "max rate"), then for each level
submit tasks one by one at scheduled Poisson times through the SDK; latency = result first
seen - scheduled submit time (so a late submitter cannot hide queueing: no coordinated
omission). Results are seen through Redis keyspace notifications (`bench/results_watch.py`),
the same way for every system, so nothing polls. Each level runs at most `--max-seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.peers.base import System
from bench.peers.registry import SYSTEMS
from bench.results_watch import ResultWatcher
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

# Independent callers submitting at once, at most (a late one still counts from its scheduled
# time, so waiting for a free caller shows up as latency, not as a lower rate).
SUBMITTERS = 16
DEFAULT_SYSTEMS = ["agentpool", "celery", "rq", "arq", "floor"]


@dataclass
class Level:
    system: str
    load: str  # "50%" of the system's own max rate, or a fixed "200/s" for every system
    rate: float
    latencies: list[float] = field(default_factory=list)
    # Where the time went, per task, for systems whose results carry their timestamps.
    phases: dict[str, list[float]] = field(default_factory=dict)
    cpu_ms_per_task: float = float("nan")

    def q(self, pct: float) -> float:
        return percentile(sorted(self.latencies), pct) * 1000

    def phase_q(self, phase: str, pct: float) -> float:
        return percentile(sorted(self.phases.get(phase, [])), pct) * 1000


async def run_level(system: System, watcher: ResultWatcher, level: Level, tasks: int,
                    drain: float) -> None:
    scheduled_at: dict[str, float] = {}  # result key -> scheduled submit time, until seen
    all_seen = asyncio.Event()
    submitted = False

    def record(key: str, seen: float) -> None:
        scheduled = scheduled_at.pop(key, None)
        if scheduled is not None:
            level.latencies.append(seen - scheduled)
            if submitted and not scheduled_at:
                all_seen.set()

    async def submit(i: int, scheduled: float) -> None:
        async with callers:
            [task_id] = await system.submit("noop", [str(i)])
        key = system.result_key(task_id)
        keys.append(key)
        scheduled_at[key] = scheduled
        if key in watcher.first_seen:  # written before submit() returned to us
            record(key, watcher.first_seen[key])

    watcher.on_seen = record
    keys: list[str] = []
    callers = asyncio.Semaphore(SUBMITTERS)
    submitting: set[asyncio.Task[None]] = set()
    try:
        scheduled = time.monotonic()
        for i in range(tasks):
            scheduled += random.expovariate(level.rate)
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # Each arrival submits on its own (like independent callers), so one slow submit
            # does not hold back the next arrival.
            task = asyncio.create_task(submit(i, scheduled))
            submitting.add(task)
            task.add_done_callback(submitting.discard)
        await asyncio.gather(*submitting)
        submitted = True
        if scheduled_at:
            await asyncio.wait_for(all_seen.wait(), drain)
        await watcher.confirm(keys)
        await _split(system, watcher, level, keys)
    except TimeoutError as exc:
        raise BenchError(f"{system.name}: {len(scheduled_at)} results missing after "
                         f"{drain}s") from exc
    finally:
        watcher.on_seen = None
        watcher.forget(keys)


PHASES = ("queued", "running", "recording")


async def _split(system: System, watcher: ResultWatcher, level: Level, keys: list[str]) -> None:
    """Split each latency into queued (submit -> handler start), running (the handler) and
    recording (handler end -> result seen by the watcher), from the result's own times."""
    timeline = await system.timeline(keys)
    if not timeline:
        return
    wall_offset = time.time() - time.monotonic()
    rows = [(e, s, f, watcher.first_seen[k] + wall_offset) for k, (e, s, f) in timeline.items()]
    level.phases = {"queued": [s - e for e, s, _, _ in rows],
                    "running": [f - s for _, s, f, _ in rows],
                    "recording": [w - f for _, _, f, w in rows]}


async def run_system(name: str, levels: Sequence[int], rates: Sequence[float], tasks: int,
                     max_seconds: float) -> list[Level]:
    system = SYSTEMS[name](db_url(name))
    system.start()
    results = []
    try:
        drain_tasks = max(TOTAL_CONCURRENCY * 4, tasks // TASK_DIVISOR.get(name, 1))
        async with system.watch_results() as watcher:
            await warm_up(system, watcher, drain_tasks // 10 + TOTAL_CONCURRENCY)
            max_rate = await measure(system, watcher, drain_tasks, 600)
            planned = [Level(name, f"{p}%", max_rate * p / 100) for p in levels]
            # A fixed rate compares systems at the same offered load; above 90 % of a system's
            # own maximum it would only measure an overload, so that system skips it.
            planned += [Level(name, f"{r:g}/s", r) for r in rates if r <= 0.9 * max_rate]
            for level in planned:
                count = max(20, min(tasks, int(level.rate * max_seconds)))
                system.check_alive()
                cpu = system.cpu_seconds()
                await run_level(system, watcher, level, count, drain=60)
                level.cpu_ms_per_task = (system.cpu_seconds() - cpu) * 1000 / count
                results.append(level)
    finally:
        await system.close()
        system.stop()
    return results


async def run(systems: Sequence[str], levels: Sequence[int], tasks: int,
              max_seconds: float = 30.0, rates: Sequence[float] = ()) -> list[Level]:
    results: list[Level] = []
    for name in systems:
        results += await run_system(name, levels, rates, tasks, max_seconds)
    return results


def report(results: Sequence[Level]) -> str:
    ours = {r.load: r.q(99) for r in results if r.system == "agentpool"}
    rows = []
    for r in results:
        mine = ours.get(r.load)
        ratio = f"{r.q(99) / mine:.1f}x" if mine else "-"
        rows.append([r.system, r.load, f"{r.rate:,.0f}", str(len(r.latencies)),
                     f"{r.q(50):.2f}", f"{r.q(99):.2f}", f"{r.q(99.9):.2f}", ratio,
                     f"{r.cpu_ms_per_task:.2f}"])
    lines = table(["system", "load", "rate/s", "samples", "p50 ms", "p99 ms", "p99.9 ms",
                   "system p99 / agentpool p99", "CPU ms/task"], rows)
    split = [r for r in results if r.phases]
    if split:
        lines += "\n\nWhere the time goes (p50 / p99 ms, from the results' own timestamps):\n\n"
        lines += table(["system", "load", *PHASES], [
            [r.system, r.load,
             *(f"{r.phase_q(p, 50):.2f} / {r.phase_q(p, 99):.2f}" for p in PHASES)]
            for r in split])
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--systems", nargs="+", default=DEFAULT_SYSTEMS, choices=list(SYSTEMS))
    parser.add_argument("--levels", type=int, nargs="*", default=[25, 50, 80])
    parser.add_argument("--rates", type=float, nargs="*", default=[200.0],
                        help="fixed rates (tasks/s) every system runs, the same offered load")
    parser.add_argument("--tasks", type=int, default=5000, help="most tasks per level")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="longest level")


def main(args: argparse.Namespace) -> str:
    results = asyncio.run(run(args.systems, args.levels, args.tasks, args.max_seconds,
                              args.rates))
    return "\n".join(["## Latency submit -> result readable (open loop, % of own max rate)",
                      machine(), Versions.line(), "", report(results)])
