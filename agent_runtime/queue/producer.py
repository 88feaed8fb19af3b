"""The client's side of the work queue: add tasks, request cancellation, read results.

Used by `sdk/client.py` (`TaskClient`), which adds what a person sees - payload encoding,
waiting, the database fallback - on top. Adding is one XADD, or one Lua call with an
idempotency key (`scripts.SUBMIT_IDEMPOTENT`: the same key within `idempotency_ttl_seconds`
returns the first task's id instead of queuing a duplicate). Adds made by many coroutines in
the same event-loop iteration share one pipelined round trip (`aio.coalesce`), so code that
submits one task at a time from many callers gets most of `add_many`'s speed. Results are
read from the keys the consumer's COMPLETE script writes, many at once with MGET.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis

from agent_runtime.aio.coalesce import PerIteration
from agent_runtime.config import RuntimeConfig
from agent_runtime.queue.envelope import TaskEnvelope, TaskResult
from agent_runtime.queue.keys import Keys
from agent_runtime.queue.scripts import SUBMIT_IDEMPOTENT

CANCEL_TTL_SECONDS = 86400
ADD_BATCH = 1000  # entries per pipelined round trip
READ_BATCH = 500  # result keys per MGET


class TaskProducer:
    def __init__(self, redis: Redis, config: RuntimeConfig) -> None:
        self._redis = redis
        self._config = config
        self.keys = Keys.for_config(config)
        self._add_together: PerIteration[dict[Any, Any], str] = PerIteration(self._xadd_all)

    async def add(self, envelope: TaskEnvelope) -> str:
        """Queue a task; returns its id (the earlier task's id for a repeated idempotency key)."""
        fields: dict[Any, Any] = envelope.to_fields()
        if not envelope.idempotency_key:
            await self._add_together(fields)
            return envelope.task_id
        flat = [item for pair in fields.items() for item in pair]
        existing = await self._redis.eval(
            SUBMIT_IDEMPOTENT, 2, self.keys.stream, self.keys.idempotency(envelope.idempotency_key),
            self._config.idempotency_ttl_seconds, envelope.task_id, *flat)
        return str(existing)

    async def _xadd_all(self, batch: list[dict[Any, Any]]) -> list[str | BaseException]:
        """The XADDs of one iteration, pipelined; each caller gets its own error, if any."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for fields in batch:
                pipe.xadd(self.keys.stream, fields)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return [r if isinstance(r, BaseException) else str(r) for r in replies]

    async def add_many(self, envelopes: Sequence[TaskEnvelope]) -> None:
        """Queue many tasks in pipelined round trips (idempotency keys are not checked)."""
        for start in range(0, len(envelopes), ADD_BATCH):
            async with self._redis.pipeline(transaction=False) as pipe:
                for envelope in envelopes[start:start + ADD_BATCH]:
                    fields: dict[Any, Any] = envelope.to_fields()
                    pipe.xadd(self.keys.stream, fields)
                await pipe.execute()

    async def cancel(self, task_id: str) -> None:
        """Ask for cancellation: a queued task is recorded cancelled instead of running, a
        running one is cancelled (async handlers) within about half a second."""
        # One transaction: the flag (which workers read before checking any cancel key) must
        # never be missing while a cancel key exists, and it outlives the key it covers.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.cancel(task_id), "1", ex=CANCEL_TTL_SECONDS)
            pipe.set(self.keys.cancel_requested, "1", ex=CANCEL_TTL_SECONDS)
            await pipe.execute()

    async def result(self, task_id: str) -> TaskResult | None:
        """The task's result while Redis keeps it (`result_ttl_seconds`), else None."""
        raw = await self._redis.get(self.keys.result(task_id))
        return None if raw is None else TaskResult.from_json(raw)

    async def results(self, task_ids: Iterable[str]) -> dict[str, TaskResult]:
        """The results among `task_ids` that Redis holds."""
        wanted = list(task_ids)
        found: dict[str, TaskResult] = {}
        for start in range(0, len(wanted), READ_BATCH):
            chunk = wanted[start:start + READ_BATCH]
            raws = await self._redis.mget([self.keys.result(t) for t in chunk])
            for task_id, raw in zip(chunk, raws, strict=True):
                if raw is not None:
                    found[task_id] = TaskResult.from_json(raw)
        return found

    async def dead_letters(self, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        """The most recent dead-lettered entries, newest first (with `dead_reason`)."""
        rows: Any = await self._redis.xrevrange(self.keys.dead, count=count)
        return [(str(entry_id), dict(fields)) for entry_id, fields in rows or []]

    async def depth(self) -> int:
        """Entries in the work stream (queued plus running) and retries waiting."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.keys.stream)
            pipe.zcard(self.keys.delayed)
            stream, delayed = await pipe.execute()
        return int(stream) + int(delayed)
