"""The task SDK's client: submit tasks, await their results, cancel them.

Used by applications and by `cli.py`. What it writes and reads in Redis is the queue's
producer side (`queue/producer.py`: one XADD per task, or one Lua call with an idempotency
key); the client adds payload encoding, waiting and the database fallback. Each client has a
reply list the workers push finished task ids to; one reader per client pops it and wakes the
waits concerned (`queue/replies.py`), so any number of concurrent waits share one client
without polling. Reads of results made in the same event-loop iteration share one MGET, and
callers beyond the connection pool's size wait for a connection instead of failing. Results of
tasks submitted elsewhere are still found by a periodic read of their result keys. Results are
read from Redis, then from PostgreSQL when the client has a database (results outlive their
Redis TTL there).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from agent_runtime.aio.coalesce import PerIteration
from agent_runtime.config import RuntimeConfig, RuntimeSettings
from agent_runtime.db.pool import create_pool
from agent_runtime.db.results import ResultStore
from agent_runtime.errors import TaskCancelledError, TaskFailedError, TaskWaitTimeout
from agent_runtime.queue.envelope import TaskEnvelope, TaskResult, encode_payload, new_task_id
from agent_runtime.queue.producer import TaskProducer
from agent_runtime.queue.replies import ReplyReader
from agent_runtime.queue.validation import TEXT_ERRORS

log = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0
MAX_CONNECTIONS = 50
CONNECTION_WAIT_SECONDS = 30.0
Progress = Callable[[int, int, dict[str, TaskResult]], None]


class TaskClient:
    def __init__(self, redis: Redis, config: RuntimeConfig, *, store: ResultStore | None = None,
                 closers: Sequence[Callable[[], Any]] = ()) -> None:
        self._config = config
        self._store = store
        self._closers = list(closers)
        self._queue = TaskProducer(redis, config)
        self.keys = self._queue.keys
        self.reply_key = self.keys.reply(uuid.uuid4().hex)
        self._replies = ReplyReader(redis, self.reply_key)
        self._result_reads = PerIteration[tuple[str, ...], dict[str, TaskResult]](
            self._read_results)

    @classmethod
    async def connect(cls, redis_url: str, config: RuntimeConfig,
                      database_url: str | None = None) -> TaskClient:
        # Blocking pool: hundreds of concurrent calls on one client wait for a connection
        # rather than fail with "Too many connections".
        pool = BlockingConnectionPool.from_url(
            redis_url, decode_responses=True, encoding_errors=TEXT_ERRORS,
            socket_connect_timeout=5.0, max_connections=MAX_CONNECTIONS,
            timeout=CONNECTION_WAIT_SECONDS)
        redis = Redis(connection_pool=pool)
        closers: list[Callable[[], Any]] = [redis.aclose]
        store = None
        if database_url:
            pool = await create_pool(database_url, config, max_size=2)
            store = ResultStore(pool, config.pool)
            closers.append(pool.close)
        return cls(redis, config, store=store, closers=closers)

    @classmethod
    async def from_settings(cls, settings: RuntimeSettings) -> TaskClient:
        db = settings.secrets.database_url
        return await cls.connect(settings.secrets.redis_url.get_secret_value(), settings.config,
                                 db.get_secret_value() if db else None)

    async def close(self) -> None:
        await self._replies.close()
        for close in reversed(self._closers):
            await close()

    async def __aenter__(self) -> TaskClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- submitting -------------------------------------------------------------------------

    def _envelope(self, payload: Any, handler: str, task_id: str | None,
                  idempotency_key: str | None) -> TaskEnvelope:
        return TaskEnvelope(
            task_id=task_id or new_task_id(), handler=handler,
            payload_json=encode_payload(payload, self._config.max_payload_bytes),
            enqueued_at=time.time(), reply_to=self.reply_key,
            idempotency_key=idempotency_key or "")

    async def submit(self, payload: Any, *, handler: str = "default", task_id: str | None = None,
                     idempotency_key: str | None = None) -> str:
        """Queue a task; returns its id (the earlier task's id for a repeated idempotency key).
        Raises PayloadTooLargeError / InvalidPayloadError before touching Redis."""
        return await self._queue.add(self._envelope(payload, handler, task_id, idempotency_key))

    async def submit_many(self, payloads: Iterable[Any], *, handler: str = "default") -> list[str]:
        """Queue many tasks in pipelined round trips (no idempotency keys)."""
        envelopes = [self._envelope(p, handler, None, None) for p in payloads]
        await self._queue.add_many(envelopes)
        return [e.task_id for e in envelopes]

    async def cancel(self, task_id: str) -> None:
        """Ask for cancellation: a queued task is recorded cancelled instead of running, a
        running one is cancelled (async handlers) within about half a second."""
        await self._queue.cancel(task_id)

    # -- results ----------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskResult | None:
        """The final result, or None while the task is queued or running."""
        result = await self._queue.result(task_id)
        if result is not None:
            return result
        if self._store is not None:
            return await self._store.fetch(task_id)
        return None

    async def _get_many(self, task_ids: list[str]) -> dict[str, TaskResult]:
        """The results among `task_ids` that exist; the reads of concurrent waits made in one
        event-loop iteration share their MGETs."""
        if not task_ids:
            return {}
        return await self._result_reads(tuple(task_ids))

    async def _read_through(self, task_ids: list[str]) -> dict[str, TaskResult]:
        """`_get_many` for a wait: Redis restarting is a reason to look again at the next
        re-read, not to give up waiting (the wait's own deadline still holds)."""
        try:
            return await self._get_many(task_ids)
        except (RedisError, OSError) as exc:
            log.warning("reading results failed (%s); looking again in %.0fs", exc,
                        RECHECK_SECONDS)
            return {}

    async def _read_results(self, requests: list[tuple[str, ...]]) -> list[dict[str, TaskResult]]:
        found = await self._queue.results(dict.fromkeys(t for ids in requests for t in ids))
        return [{t: found[t] for t in ids if t in found} for ids in requests]

    async def wait_many(self, task_ids: Iterable[str], max_wait: float | None = None,
                        on_progress: Progress | None = None) -> dict[str, TaskResult]:
        """Wait until every task has a final result; raises TaskWaitTimeout (with what is
        done so far in `.args[1]`) if `max_wait` seconds pass first. Any number of waits may
        run at once on one client: replies are read once and go to every wait concerned."""
        wanted = list(dict.fromkeys(task_ids))
        done: dict[str, TaskResult] = {}
        deadline = None if max_wait is None else time.monotonic() + max_wait
        next_recheck = 0.0
        with self._replies.watch(wanted) as watch:
            while len(done) < len(wanted):
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise TaskWaitTimeout(f"{len(wanted) - len(done)} of {len(wanted)} tasks "
                                          f"not finished after {max_wait:g}s", done)
                if now >= next_recheck:
                    # Also finds tasks whose reply went to another client (submitted there).
                    next_recheck = now + RECHECK_SECONDS
                    done.update(await self._read_through([t for t in wanted if t not in done]))
                else:
                    until = next_recheck if deadline is None else min(next_recheck, deadline)
                    arrived = await watch.arrivals(max(until - now, 0.0))
                    done.update(await self._read_through([t for t in arrived if t not in done]))
                if on_progress is not None:
                    on_progress(len(done), len(wanted), done)
        return {t: done[t] for t in wanted}

    async def wait(self, task_id: str, max_wait: float | None = None) -> TaskResult:
        results = await self.wait_many([task_id], max_wait)
        return results[task_id]

    async def result(self, task_id: str, max_wait: float | None = None) -> Any:
        """The task's return value; raises TaskFailedError / TaskCancelledError otherwise."""
        outcome = await self.wait(task_id, max_wait)
        if outcome.status == "cancelled":
            raise TaskCancelledError(outcome)
        if outcome.status != "succeeded":
            raise TaskFailedError(outcome)
        return outcome.result

    async def run(self, payload: Any, *, handler: str = "default",
                  max_wait: float | None = None) -> Any:
        """Submit and wait for the value in one call."""
        return await self.result(await self.submit(payload, handler=handler), max_wait)

    async def dead_letters(self, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        """The most recent dead-lettered entries, newest first (with `dead_reason`)."""
        return await self._queue.dead_letters(count)

    async def queue_depth(self) -> int:
        """Entries in the work stream (queued plus running) and retries waiting."""
        return await self._queue.depth()
