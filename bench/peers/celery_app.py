"""Celery peer: prefork pool, Redis broker and result backend, the "reliable" configuration
(acks_late, reject_on_worker_lost, prefetch multiplier 1), as runtime.md §10.1 asks.

Workers: `celery -A bench.peers.celery_app worker -P prefork -c 16` (16 single-slot child
processes: the same total concurrency as the other systems). The broker URL comes from
$BENCH_CELERY_URL in the worker and from `CelerySystem` in the harness.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from celery import Celery

from bench import handlers
from bench.peers.base import System, bin_path
from bench.runtime_common import TOTAL_CONCURRENCY

URL_ENV = "BENCH_CELERY_URL"
QUEUE = "bench"
# Redelivery of a task whose worker vanished without rejecting it (kombu's Redis transport).
VISIBILITY_TIMEOUT = 30

app = Celery("bench")


def configure(url: str) -> None:
    app.conf.update(
        broker_url=url, result_backend=url, task_acks_late=True,
        task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        task_default_queue=QUEUE, result_expires=3600, worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True)


configure(os.environ.get(URL_ENV, "redis://127.0.0.1:6379/11"))


@app.task(name="noop")
def noop() -> dict[str, int]:
    return handlers.noop_value()


@app.task(name="heavy")
def heavy() -> dict[str, Any]:
    return handlers.heavy_value()


@app.task(name="chaos")
def chaos(task: str) -> dict[str, str]:
    return handlers.chaos_sync(task)


class CelerySystem(System):
    name = "celery"
    blocking = True

    def start(self) -> None:
        configure(self.url)
        env = self.env()
        env[URL_ENV] = self.url
        self.spawn([bin_path("celery"), "-A", "bench.peers.celery_app", "worker", "-P",
                    "prefork", "-c", str(TOTAL_CONCURRENCY), "-Q", QUEUE, "-l", "WARNING",
                    "--without-gossip", "--without-mingle", "--without-heartbeat"], env)

    async def submit(self, kind: str, args: Sequence[str]) -> list[str]:
        # A blocking SDK: run it in a thread so it never stalls the result watcher.
        return await asyncio.to_thread(self._submit, kind, args)

    def _submit(self, kind: str, args: Sequence[str]) -> list[str]:
        task = {"noop": noop, "heavy": heavy, "chaos": chaos}[kind]
        ids = []
        for arg in args:
            result = task.apply_async(args=(arg,) if kind == "chaos" else ())
            ids.append(str(result.id))
        return ids

    def submit_one_blocking(self, kind: str, arg: str) -> str:
        [task_id] = self._submit(kind, [arg])  # one apply_async
        return task_id

    def result_key(self, task_id: str) -> str:
        return f"celery-task-meta-{task_id}"
