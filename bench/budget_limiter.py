"""The budget limiter's cost per acquisition and its throughput ceiling, against Redis's own.

    python -m bench budget                     # full: 20 000 operations per row
    python -m bench budget --ops 2000          # smoke

Rows, all on the harness Redis over loopback from one process: INCR (one round trip, the
floor), EVALSHA of `return 1` (the floor of any Lua step), and the limiter's acquisition with
one limit and with all four (requests per second and minute, tokens per minute, concurrency,
with the release that concurrency needs). Limits are set far above the offered rate, so every
acquisition is granted: this is the hot path's cost, not waiting. Sequential: one caller, the
latency of one operation. Concurrent: `--callers` coroutines sharing the connection pool, the
operations per second Redis and the client sustain (the ceiling).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from agent_runtime.sdk.budget.limiter import BudgetLimiter
from agent_runtime.sdk.budget.limits import Limits
from bench.runtime_common import db_url, machine, percentile, table

Operation = Callable[[], Awaitable[object]]
HUGE = 10**9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ops", type=int, default=20_000, help="operations per row and mode")
    parser.add_argument("--callers", type=int, default=32, help="concurrent callers")


async def _sequential(op: Operation, ops: int) -> list[float]:
    latencies = []
    for _ in range(ops):
        started = time.perf_counter()
        await op()
        latencies.append(time.perf_counter() - started)
    return sorted(latencies)


async def _concurrent(op: Operation, ops: int, callers: int) -> float:
    left = ops

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await op()

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return ops / (time.perf_counter() - started)


async def run(ops: int, callers: int) -> list[tuple[str, list[float], float]]:
    redis = Redis.from_url(db_url("budget"), max_connections=callers + 4)
    try:
        noop = redis.register_script("return 1")
        one = BudgetLimiter(redis, f"bench/one/{uuid.uuid4().hex[:6]}",
                            Limits(requests_per_second=HUGE))
        every = BudgetLimiter(redis, f"bench/all/{uuid.uuid4().hex[:6]}",
                              Limits(requests_per_second=HUGE, requests_per_minute=HUGE,
                                     tokens_per_minute=HUGE, concurrent_requests=HUGE))

        async def acquire_all() -> None:
            permit = await every.acquire(tokens=100)
            await permit.settle(80)
            await permit.release()

        rows: list[tuple[str, Operation]] = [
            ("INCR (Redis round trip)", lambda: redis.incr("bench:budget:counter")),
            ("EVALSHA return 1 (Lua floor)", lambda: noop(keys=["bench:budget:noop"])),
            ("acquire, one limit", lambda: one.acquire()),
            ("acquire + settle + release, four limits", acquire_all),
        ]
        results = []
        for name, op in rows:
            await _sequential(op, min(ops, 500))  # warm up: scripts loaded, pool filled
            latencies = await _sequential(op, ops)
            rate = await _concurrent(op, ops, callers)
            results.append((name, latencies, rate))
        return results
    finally:
        await redis.aclose()


def report(results: list[tuple[str, list[float], float]]) -> str:
    floor_p50 = percentile(results[0][1], 50)
    floor_rate = results[0][2]
    rows = [[name, f"{percentile(lat, 50) * 1e6:.0f}", f"{percentile(lat, 99) * 1e6:.0f}",
             f"{percentile(lat, 50) / floor_p50:.2f}x", f"{rate:,.0f}",
             f"{rate / floor_rate:.0%}"]
            for name, lat, rate in results]
    where = machine().split("; total concurrency")[0]
    return (f"Budget limiter vs Redis's own cost. {where}\n\n"
            + table(["operation", "p50 us", "p99 us", "p50 / INCR", "ops/s concurrent",
                     "of INCR's ops/s"], rows))


def main(args: argparse.Namespace) -> str:
    return report(asyncio.run(run(args.ops, args.callers)))
