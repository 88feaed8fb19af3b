"""The floor: the least work any Redis Streams task queue must do, as a reference point.

    python -m bench.peers.floor URL      # one consumer process (the system starts two)

Each of the 2 processes loops: `XREADGROUP COUNT 8 BLOCK` on one stream and group (8 = its
slots, so it never holds more tasks than an AgentPool worker), runs the no-op handler inline,
then in one pipelined round trip per batch: `SET result:<entry id> <json> EX`, XACK, and
XDEL (which drops the entries from the stream, as AgentPool does, so the stream stays small).
No envelope, no retries, no redelivery of a dead consumer's entries, no metrics, no
supervisor: what is left is the floor. The stream entry id is the task id (no id to make).

Submission: `submit` of many pipelines one XADD per task in chunks of 1000; a single submit
is one XADD (the latter is also what `submit_one` does in the single-submit mode).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from bench import handlers
from bench.peers.base import System, python
from bench.runtime_common import PROCESSES, SLOTS_PER_PROCESS

STREAM = "floor:tasks"
GROUP = "floor"
RESULT = "result:"
RESULT_TTL = 3600  # seconds, like the peers' result expiry
BLOCK_MS = 1000
CHUNK = 1000
# Entries per XREADGROUP; default 8, the slots of a worker (set in the workers' environment).
COUNT_ENV = "BENCH_FLOOR_COUNT"
# No chaos task: the floor has no redelivery, so the crash benchmark leaves it out.
HANDLERS: dict[bytes, Callable[[], Any]] = {b"noop": handlers.noop_value,
                                            b"heavy": handlers.heavy_value}
# XREADGROUP's reply on a client without decode_responses: [(stream, [(id, fields)])].
Reply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def consume(url: str, count: int = SLOTS_PER_PROCESS) -> None:
    client = Redis.from_url(url)
    try:
        # From id 0, so entries added before the group existed are not skipped.
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):  # the other process created it first
            raise
    consumer = f"c{os.getpid()}"
    while True:
        reply = cast(Reply, await client.xreadgroup(GROUP, consumer, {STREAM: ">"},
                                                    count=count, block=BLOCK_MS))
        if not reply:
            continue
        entries = reply[0][1]
        pipe = client.pipeline(transaction=False)
        for entry_id, fields in entries:
            value = HANDLERS[fields[b"k"]]()
            pipe.set(RESULT + entry_id.decode(), json.dumps(value), ex=RESULT_TTL)
        ids = [entry_id for entry_id, _ in entries]
        pipe.xack(STREAM, GROUP, *ids)
        pipe.xdel(STREAM, *ids)
        await pipe.execute()


class FloorSystem(System):
    name = "floor"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._client: Redis | None = None

    def start(self) -> None:
        for _ in range(PROCESSES):
            self.spawn([python(), "-m", "bench.peers.floor", self.url])

    def client(self) -> Redis:
        if self._client is None:
            self._client = Redis.from_url(self.url)
        return self._client

    async def submit(self, kind: str, args: Sequence[str]) -> list[str]:
        client = self.client()
        if len(args) == 1:
            return [_text(await client.xadd(STREAM, {"k": kind, "a": args[0]}))]
        ids: list[str] = []
        for start in range(0, len(args), CHUNK):
            pipe = client.pipeline(transaction=False)
            for arg in args[start:start + CHUNK]:
                pipe.xadd(STREAM, {"k": kind, "a": arg})
            ids += [_text(entry_id) for entry_id in await pipe.execute()]
        return ids

    def result_key(self, task_id: str) -> str:
        return RESULT + task_id

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


if __name__ == "__main__":
    asyncio.run(consume(sys.argv[1], int(os.environ.get(COUNT_ENV, SLOTS_PER_PROCESS))))
