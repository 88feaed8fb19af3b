"""RQ peer: `rq worker-pool -n 16` (default Worker: forks a work horse per job), jobs enqueued
with `Queue.enqueue_many` in one pipeline. A result is readable once RQ has written it to the
job's result stream (`rq:results:<id>`), where `Job.return_value()` reads it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis
from rq import Queue

from bench.peers.base import System, bin_path
from bench.runtime_common import TOTAL_CONCURRENCY

QUEUE = "bench"
FUNCTIONS = {"noop": "bench.handlers.noop_value", "heavy": "bench.handlers.heavy_value",
             "chaos": "bench.handlers.chaos_sync"}


class RQSystem(System):
    name = "rq"
    blocking = True

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._conn = redis.Redis.from_url(url)
        self._queue = Queue(QUEUE, connection=self._conn)

    def start(self) -> None:
        self.spawn([bin_path("rq"), "worker-pool", "-n", str(TOTAL_CONCURRENCY), "-u", self.url,
                    "-l", "WARNING", QUEUE])

    async def submit(self, kind: str, args: Sequence[str]) -> list[str]:
        # A blocking SDK: run it in a thread so it never stalls the result watcher.
        return await asyncio.to_thread(self._submit, kind, args)

    def _submit(self, kind: str, args: Sequence[str]) -> list[str]:
        func = FUNCTIONS[kind]
        jobs: list[Any] = []
        for start in range(0, len(args), 1000):
            with self._conn.pipeline() as pipe:
                data = [Queue.prepare_data(func, args=(a,) if kind == "chaos" else ())
                        for a in args[start:start + 1000]]
                jobs += self._queue.enqueue_many(data, pipeline=pipe)
                pipe.execute()
        return [str(job.id) for job in jobs]

    def submit_one_blocking(self, kind: str, arg: str) -> str:
        job = self._queue.enqueue(FUNCTIONS[kind], *((arg,) if kind == "chaos" else ()))
        return str(job.id)

    def result_key(self, task_id: str) -> str:
        return f"rq:results:{task_id}"

    async def close(self) -> None:
        self._conn.close()
