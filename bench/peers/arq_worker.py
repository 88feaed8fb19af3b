"""arq peer: two `arq bench.peers.arq_worker.WorkerSettings` processes with max_jobs=8 (the same
2 x 8 as AgentPool), poll_delay tuned down to 10 ms from its 0.5 s default so an idle worker
does not add half a second of latency. Results are read from `arq:result:<job id>`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from bench import handlers
from bench.peers.base import System, bin_path
from bench.runtime_common import PROCESSES, SLOTS_PER_PROCESS

URL_ENV = "BENCH_ARQ_URL"


async def noop(ctx: dict[str, Any]) -> dict[str, int]:
    return handlers.noop_value()


async def heavy(ctx: dict[str, Any]) -> dict[str, Any]:
    return handlers.heavy_value()


async def chaos(ctx: dict[str, Any], task: str) -> dict[str, str]:
    return await handlers.chaos_async(task)


class WorkerSettings:
    functions = [noop, heavy, chaos]
    redis_settings = RedisSettings.from_dsn(os.environ.get(URL_ENV, "redis://127.0.0.1:6379/13"))
    max_jobs = SLOTS_PER_PROCESS
    poll_delay = 0.01
    keep_result = 3600
    handle_signals = True


class ArqSystem(System):
    name = "arq"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._pool: ArqRedis | None = None

    def start(self) -> None:
        env = self.env()
        env[URL_ENV] = self.url
        for _ in range(PROCESSES):
            self.spawn([bin_path("arq"), "bench.peers.arq_worker.WorkerSettings"], env)

    async def submit(self, kind: str, args: Sequence[str]) -> list[str]:
        if self._pool is None:
            self._pool = await create_pool(RedisSettings.from_dsn(self.url))
        ids = []
        for arg in args:
            job = await (self._pool.enqueue_job(kind, arg) if kind == "chaos"
                         else self._pool.enqueue_job(kind))
            assert job is not None
            ids.append(job.job_id)
        return ids

    def result_key(self, task_id: str) -> str:
        return f"arq:result:{task_id}"

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
