"""A DB-bound handler with asyncpg's statement cache on and off, through PgBouncer.

    python -m bench dbcache --dsn postgresql://user:pw@127.0.0.1:6432/db      # full
    python -m bench dbcache --dsn ... --tasks 300 --reps 1                     # smoke

The handler (`db_roundtrip`: one INSERT ... RETURNING and one SELECT by primary key through
`ctx.db`) runs in the real runtime (`agentpool-runtime run`, 2 workers x 8 slots), which
also stores every result in PostgreSQL through the same pool, as in a pod. Per mode
(`db_statement_cache_size` 0, or the operator's 100) and repetition: tasks/s from the first
submit until every result is readable, and the handler's own time in its two statements
(p50, p99). With the cache off asyncpg prepares every statement again (an extra Parse and
Describe round trip per statement); with it on a prepared statement is reused, which
PgBouncer >= 1.21 makes possible in transaction pooling (`max_prepared_statements`).
A PgBouncer older than 1.21 fails the cached mode's tasks ("prepared statement ... does not
exist"): the report counts failed tasks instead of hiding them.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.asyncio import Redis

from agent_runtime.queue.envelope import TaskResult
from agent_runtime.sdk.context import TaskContext
from bench.peers.agentpool import AgentPool
from bench.results_watch import ResultTimeout
from bench.runtime_common import (
    TOTAL_CONCURRENCY,
    Versions,
    db_url,
    machine,
    median,
    percentile,
    table,
)

TABLE = "bench_db_roundtrip"
WARM_UP_SECONDS = 60.0
MODES = {"off": 0, "on": 100}  # "on": what the operator renders for pods (STATEMENT_CACHE_SIZE)


async def db_roundtrip(payload: Any, ctx: TaskContext) -> dict[str, float]:
    started = time.perf_counter()
    row_id = await ctx.db.fetchval(
        f"INSERT INTO {TABLE} (task_id, body) VALUES ($1, $2) RETURNING id",
        ctx.task_id, str(payload["task"]))
    row = await ctx.db.fetchrow(f"SELECT task_id, body FROM {TABLE} WHERE id = $1", row_id)
    assert row["task_id"] == ctx.task_id
    return {"db_ms": (time.perf_counter() - started) * 1000}


def system(dsn: str, cache_size: int) -> AgentPool:
    """The benchmark's AgentPool with a database: results and `ctx.db` through `dsn`."""
    return AgentPool(db_url("agentpool"), database_url=dsn,
                     handlers={"db": "bench.db_statement_cache:db_roundtrip"},
                     db_statement_cache_size=cache_size)


@dataclass
class Mode:
    name: str
    cache_size: int
    rates: list[float] = field(default_factory=list)
    db_ms: list[float] = field(default_factory=list)
    failed: int = 0
    errors: set[str] = field(default_factory=set)


async def prepare_table(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, "
                           "task_id text NOT NULL, body text NOT NULL)")
        await conn.execute(f"TRUNCATE {TABLE}")
    finally:
        await conn.close()


_EXCEPTION = re.compile(r"\b\w+(?:Error|Exception): [^\n]*")


def _worker_error(pool: AgentPool) -> str | None:
    """The first exception a worker logged (e.g. it could not warm up): its `XxxError: ...`
    line, found in plain tracebacks and inside the runtime's JSON log lines alike."""
    for log in sorted(pool.logdir.glob("*.log")):
        found = _EXCEPTION.search(log.read_text(errors="replace"))
        if found:
            return found.group(0)[:160]
    return None


async def _results(system: AgentPool, ids: Sequence[str]) -> list[TaskResult]:
    keys = [system.result_key(t) for t in ids]
    async with Redis.from_url(system.url) as redis:
        raws = await redis.mget(keys)
    return [TaskResult.from_json(raw) for raw in raws if raw is not None]


async def _batch(system: AgentPool, tasks: int, within: float) -> tuple[float, list[TaskResult]]:
    async with system.watch_results() as watcher:
        started = time.monotonic()
        ids = await system.submit("db", [str(i) for i in range(tasks)])
        keys = [system.result_key(t) for t in ids]
        end = await watcher.wait_all(keys, within)
    return tasks / max(end - started, 1e-9), await _results(system, ids)


async def run_mode(mode: Mode, dsn: str, tasks: int, reps: int, within: float,
                   warm_up: float = WARM_UP_SECONDS) -> Mode:
    await prepare_table(dsn)
    pool = system(dsn, mode.cache_size)
    pool.start()
    try:
        try:  # warm-up, waits out start-up
            await _batch(pool, TOTAL_CONCURRENCY * 4, warm_up)
        except ResultTimeout:
            mode.errors.add(_worker_error(pool) or "no result within the warm-up")
            return mode
        for _ in range(reps):
            pool.check_alive()
            rate, results = await _batch(pool, tasks, within)
            mode.rates.append(rate)
            for result in results:
                if result.status == "succeeded" and isinstance(result.result, dict):
                    mode.db_ms.append(float(result.result["db_ms"]))
                else:
                    mode.failed += 1
                    mode.errors.add((result.error or result.status)[:120])
    finally:
        await pool.close()
        pool.stop()
    return mode


async def run(dsn: str, tasks: int, reps: int, modes: Sequence[str] = tuple(MODES),
              within: float = 600.0, warm_up: float = WARM_UP_SECONDS) -> list[Mode]:
    return [await run_mode(Mode(name, MODES[name]), dsn, tasks, reps, within, warm_up)
            for name in modes]


def report(results: Sequence[Mode]) -> str:
    rows = []
    for m in results:
        latencies = sorted(m.db_ms)
        rows.append([
            f"{m.name} ({m.cache_size})", str(len(m.rates)),
            f"{median(m.rates):,.0f} [{min(m.rates):,.0f}-{max(m.rates):,.0f}]" if m.rates
            else "-",
            f"{percentile(latencies, 50):.2f}" if latencies else "-",
            f"{percentile(latencies, 99):.2f}" if latencies else "-",
            str(m.failed) if m.rates else "did not run",
            "; ".join(sorted(m.errors)) or "-"])
    return table(["statement cache", "reps", "tasks/s median [min-max]",
                  "handler DB ms p50", "p99", "failed tasks", "errors"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", required=True,
                        help="PostgreSQL DSN of the PgBouncer (or PostgreSQL) to measure")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))


def main(args: argparse.Namespace) -> str:
    results = asyncio.run(run(args.dsn, args.tasks, args.reps, args.modes))
    return "\n".join(["## DB-bound handler: asyncpg statement cache off vs on", machine(),
                      Versions.line(), "", report(results)])
