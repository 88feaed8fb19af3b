"""Baselines without a warm pool: a new process per task, spawned (fresh interpreter) or forked
(from a dispatcher that has imported only redis, RQ's model).

    python -m bench.peers.per_process spawn|fork URL     # the dispatcher

The dispatcher pops tasks from a Redis list and keeps at most 16 children running (the same
total concurrency as the other systems); each child runs the task and SETs its result key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence

import redis

from bench.peers.base import System, python
from bench.peers.per_process_child import RESULT, run_task
from bench.runtime_common import TOTAL_CONCURRENCY

QUEUE = "bench:pp:queue"


def _reap(children: set[int], block: bool) -> None:
    while children:
        try:
            pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        block = False


def _start_child(mode: str, url: str, raw: bytes | str) -> int:
    if mode == "spawn":
        return os.posix_spawn(python(), [python(), "-m", "bench.peers.per_process_child", url,
                                         raw if isinstance(raw, str) else raw.decode()],
                              dict(os.environ))
    pid = os.fork()
    if pid == 0:  # the child: never return into the dispatcher's loop
        code = 0
        try:
            run_task(url, json.loads(raw))
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def dispatch(mode: str, url: str) -> None:
    client = redis.Redis.from_url(url)
    children: set[int] = set()
    while True:
        _reap(children, block=len(children) >= TOTAL_CONCURRENCY)
        if len(children) >= TOTAL_CONCURRENCY:
            continue
        popped = client.blpop([QUEUE], timeout=0.05)
        if popped is not None:
            children.add(_start_child(mode, url, popped[1]))


def main(argv: list[str]) -> int:
    dispatch(argv[0], argv[1])
    return 0


class PerProcessSystem(System):
    mode = "spawn"
    blocking = True

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._conn = redis.Redis.from_url(url)

    def start(self) -> None:
        self.spawn([python(), "-m", "bench.peers.per_process", self.mode, self.url])

    async def submit(self, kind: str, args: Sequence[str]) -> list[str]:
        # A blocking client: run it in a thread so it never stalls the result watcher.
        return await asyncio.to_thread(self._submit, kind, args)

    def _submit(self, kind: str, args: Sequence[str]) -> list[str]:
        ids = [uuid.uuid4().hex for _ in args]
        items = [json.dumps({"id": i, "kind": kind, "arg": a, "t": time.time()})
                 for i, a in zip(ids, args, strict=True)]
        for start in range(0, len(items), 1000):
            self._conn.rpush(QUEUE, *items[start:start + 1000])
        return ids

    def submit_one_blocking(self, kind: str, arg: str) -> str:
        [task_id] = self._submit(kind, [arg])  # one RPUSH
        return task_id

    def result_key(self, task_id: str) -> str:
        return RESULT + task_id

    async def close(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self._conn.close()


class SpawnSystem(PerProcessSystem):
    name = "spawn"
    mode = "spawn"


class ForkSystem(PerProcessSystem):
    name = "fork"
    mode = "fork"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
