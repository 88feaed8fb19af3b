"""One warm worker process: warm-up, then read tasks into free slots and run them concurrently.

Started by the supervisor (through `process.main`). Reads never take more entries than the
worker has free slots (no prefetch: a crash re-runs only what was running). Before reading new
work it adopts entries moved to it from a dead predecessor and reclaims entries whose lease
expired. An entry delivered more than once (a suspect: an execution of it died with its worker)
runs alone, so that if it kills this worker too, no other task dies with it. Every task's slot
on the board (`ipc/board.py`) says what it holds and whether its handler started. Reports to the
supervisor over its pipe (`agent_runtime.ipc`): ready, task start/finish, and a heartbeat with
metric deltas; obeys drain/pause/resume/adopt, read by the lifeline thread (`lifeline.py`),
which also ends the process when the supervisor is gone."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import time
from multiprocessing.connection import Connection
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from agent_runtime.aio.supervised import Beat, Supervised
from agent_runtime.config import RuntimeSettings
from agent_runtime.db.pool import create_pool
from agent_runtime.db.results import ResultStore
from agent_runtime.ipc import pipe
from agent_runtime.ipc.board import Board
from agent_runtime.ipc.messages import (
    Adopt,
    DbPoolSizes,
    Drain,
    Heartbeat,
    MemoryReport,
    Pause,
    Ready,
    ReportMemory,
    Resume,
    Retiring,
    RunningEntry,
    SupervisorMessage,
    Unhealthy,
    WorkerMessage,
)
from agent_runtime.queue.consumer import Delivery, TaskConsumer
from agent_runtime.queue.keys import Keys
from agent_runtime.queue.validation import TEXT_ERRORS
from agent_runtime.sdk.cache import CacheInvalidations
from agent_runtime.sdk.context import WorkerResources
from agent_runtime.sdk.http import HttpClient
from agent_runtime.tracing import WorkerTracing
from agent_runtime.worker.execution import RunningTask, TaskExecutor
from agent_runtime.worker.leaks import AllocationTracer
from agent_runtime.worker.lifeline import Lifeline
from agent_runtime.worker.stats import WorkerStats
from agent_runtime.worker.task_handlers import HandlerRegistry, run_hook

log = logging.getLogger(__name__)

READ_BLOCK_MS = 500
CANCEL_POLL_SECONDS = 0.5
LEASE_WAIT_SECONDS = 0.1
CLOSE_WAIT_SECONDS = 2.0


def redis_client(url: str, *, name: str, read_timeout: float,
                 encoding_errors: str = "strict") -> Redis:
    return Redis.from_url(url, decode_responses=True, socket_connect_timeout=5.0,
                          socket_timeout=read_timeout, health_check_interval=30,
                          client_name=name, encoding_errors=encoding_errors)


class Worker:
    # Set by warm_up(); the worker reports ready only after it succeeded.
    resources: WorkerResources
    queue: TaskConsumer
    executor: TaskExecutor
    store: ResultStore | None
    _invalidations: CacheInvalidations

    def __init__(self, settings: RuntimeSettings, slot: int, consumer: str, conn: Connection,
                 max_tasks: int | None, board: Board) -> None:
        self.settings = settings
        self.config = settings.config
        self.slot = slot
        self.consumer = consumer
        self._conn = conn
        self._max_tasks = max_tasks
        self._board = board
        self._free_slots = list(range(board.slots))
        self._stats = WorkerStats()
        self._running: dict[str, RunningTask] = {}
        # Suspects wait here until the worker is otherwise idle; `_solo` is the one running.
        self._suspects: collections.deque[Delivery] = collections.deque()
        self._solo: str | None = None
        # Read together with completions (`_reads_with_completions`), waiting for the slots
        # those completions free; ours in the stream, not yet on the board.
        self._prefetched: collections.deque[Delivery] = collections.deque()
        self._awaiting_slots = False
        self._next_adopt = 0.0
        self._wake = asyncio.Event()
        self._draining = False
        self._drain_deadline = 0.0
        self._paused = False
        self._adopt_requested = True
        self._finished_tasks = 0
        self._redis_ok = True
        self._closers: list[Any] = []
        self._tracer = (AllocationTracer(self.config.tracemalloc_frames)
                        if self.config.tracemalloc_frames else None)
        self._lifeline = Lifeline(conn, board, consumer, self._on_control)
        self._outbox = pipe.Outbox(conn, self._lifeline.supervisor_gone)

    # -- warm-up ----------------------------------------------------------------------------

    async def warm_up(self) -> None:
        """Import handlers, run the init hook, freeze the heap, open every connection."""
        registry = HandlerRegistry.load(self.config)
        if self.config.init_hook:
            await run_hook(self.config.init_hook)
        # Objects that exist now (imports, the init hook's models) are never scanned by the
        # collector again, so their pages stay shared with the fork server (copy-on-write).
        gc.freeze()
        secrets = self.settings.secrets
        url = secrets.redis_url.get_secret_value()
        # Handlers get a client with plain string replies (`ctx.redis`); the queue's own clients
        # never fail to decode what another producer wrote (see `queue/validation.py`).
        redis = redis_client(url, name=self.consumer, read_timeout=10.0)
        queue_redis = redis_client(url, name=self.consumer, read_timeout=10.0,
                                   encoding_errors=TEXT_ERRORS)
        reader = redis_client(url, name=self.consumer, read_timeout=READ_BLOCK_MS / 1000 + 10.0,
                              encoding_errors=TEXT_ERRORS)
        cache_url = secrets.effective_cache_redis_url
        cache_redis = (redis if cache_url == url
                       else redis_client(cache_url, name=self.consumer, read_timeout=10.0))
        self._closers += [redis.aclose, queue_redis.aclose, reader.aclose]
        if cache_redis is not redis:
            self._closers.append(cache_redis.aclose)
        await redis.ping()
        store = None
        db_pool = None
        tracer = WorkerTracing.start(self.settings, self.consumer)
        if tracer is not None:
            self._closers.append(tracer.shutdown)
        if secrets.database_url is not None:
            db_pool = await create_pool(secrets.database_url.get_secret_value(), self.config,
                                        init=tracer.on_db_connection if tracer else None)
            await db_pool.fetchval("SELECT 1")
            store = ResultStore(db_pool, self.config.pool)
            self._closers.append(db_pool.close)
        http = HttpClient(self.config, self._stats, tracer)
        _ = http.session  # open the keep-alive connection pool now, not on the first task
        self._closers.append(http.close)
        self.resources = WorkerResources(settings=self.settings, consumer=self.consumer,
                                         redis=redis, cache_redis=cache_redis, http=http,
                                         stats=self._stats, db=db_pool, tracing=tracer)
        self._invalidations = CacheInvalidations(cache_redis, Keys.for_config(self.config),
                                                 self.resources.caches)
        self._invalidations.start()
        self.store = store
        self.queue = TaskConsumer(queue_redis, reader, self.config, self.consumer)
        await self.queue.ensure_group()
        self.queue.read_with_completions(self._reads_with_completions, self._prefetch)
        self.executor = TaskExecutor(self.queue, registry, self.resources, store, self._send,
                                     self._become_unhealthy, self._board)
        if self._tracer is not None:  # last: what the warm-up allocated is the baseline
            self._tracer.start()

    # -- main loop --------------------------------------------------------------------------

    async def run(self) -> None:
        self._lifeline.start(asyncio.get_running_loop())
        chores = [Supervised("heartbeats", self._heartbeats),
                  Supervised("cancellation watch", self._watch_cancellations)]
        background = [asyncio.create_task(chore.run(), name=chore.name) for chore in chores]
        self._send(Ready(self.consumer))
        try:
            await self._consume()
            await self._finish_drain()
        finally:
            self._lifeline.stop()
            for task in background:
                task.cancel()
            # Bounded, like every step below: the process exits anyway (`os._exit`), and a
            # task stuck in a client library's cleanup must not keep it alive.
            await asyncio.wait(background, timeout=CLOSE_WAIT_SECONDS)
            self._send_heartbeat()  # last metric deltas
            self._outbox.flush()
            await self._close()

    @property
    def free_slots(self) -> int:
        """Slots for new reads: open ones not promised to entries already read."""
        return self._open_slots() - len(self._prefetched)

    def _open_slots(self) -> int:
        # A board slot held by a sync handler's thread that outlived its task is not free.
        return min(self.config.concurrency - len(self._running), len(self._free_slots))

    def _may_start(self) -> bool:
        """Not paused, and the pod's leases are confirmed: a task started now could not be
        reclaimed by another pod while it runs (see `lifeline.py`)."""
        return not self._paused and self._board.leases_ok()

    async def _consume(self) -> None:
        backoff = 0.1
        while not self._draining:
            if not self._may_start():
                await self._wait_for_change(LEASE_WAIT_SECONDS if not self._paused else 0.5)
                continue
            if self._solo is not None or (self._suspects and self._running):
                await self._wait_for_change(0.5)  # a suspect runs alone, or waits to
                continue
            if self._suspects:
                suspect = self._suspects.popleft()
                self._solo = suspect.entry_id
                self._start([suspect])
                continue
            if self._prefetched:
                ready = min(self._open_slots(), len(self._prefetched))
                if ready > 0:
                    self._take([self._prefetched.popleft() for _ in range(ready)])
                else:
                    await self._wait_for_change(0.5)
                continue
            if self.free_slots <= 0:
                self._awaiting_slots = True
                await self._wait_for_change(0.5)
                self._awaiting_slots = False
                continue
            try:
                if self._adopt_requested or time.monotonic() >= self._next_adopt:
                    self._next_adopt = (time.monotonic()
                                        + min(self.config.lease_seconds / 2, 5.0))
                    wanted = self.free_slots
                    adopted = await self.queue.adopt_own(self._held(), wanted)
                    self._take(adopted)
                    # A full take means more may be waiting: entries moved to us from a dead
                    # worker go before new work, as soon as the next slot frees.
                    self._adopt_requested = len(adopted) >= wanted
                    if self.free_slots > 0 and not self._suspects:
                        self._take(await self.queue.reclaim_idle(self.free_slots))
                    continue
                self._take(await self.queue.read_new(self.free_slots, READ_BLOCK_MS))
                self._redis_ok, backoff = True, 0.1
            except (RedisError, OSError) as exc:
                self._redis_ok = False
                log.warning("worker %s: Redis unavailable (%s); retrying in %.1fs",
                            self.consumer, exc, backoff)
                await self._wait_for_change(backoff)
                backoff = min(backoff * 2, 5.0)

    def _held(self) -> set[str]:
        return (set(self._running) | {d.entry_id for d in self._suspects}
                | {d.entry_id for d in self._prefetched})

    def _reads_with_completions(self, freed: int) -> int:
        """How many new entries to read in the round trip of completions that free `freed`
        slots: that many, but only while this loop waits for slots with nothing else to do
        first (otherwise its own read is on its way, or must wait)."""
        if (not self._awaiting_slots or self._draining or not self._may_start()
                or self._suspects or self._solo is not None or self._adopt_requested
                or time.monotonic() >= self._next_adopt):
            return 0
        if self._max_tasks is not None:
            # Not beyond the task budget: what is read now would be handed back at the
            # recycle, and run later than the work queued behind it.
            return max(0, min(freed, self._max_tasks - self._finished_tasks
                              - len(self._running)))
        return freed

    def _prefetch(self, deliveries: list[Delivery]) -> None:
        if deliveries:
            self._prefetched.extend(deliveries)
            self._wake.set()

    async def _wait_for_change(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _take(self, deliveries: list[Delivery]) -> None:
        """Start what was delivered; suspects wait to run alone."""
        fresh = []
        for delivery in deliveries:
            if delivery.suspect:
                self._suspects.append(delivery)
            else:
                fresh.append(delivery)
        self._start(fresh)

    def _start(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            slot = self._free_slots.pop()
            self._board.hold(slot, delivery.entry_id)
            running = RunningTask(entry_id=delivery.entry_id, task_id="", handler="",
                                  started_at=time.time(), board_slot=slot)
            running.task = asyncio.create_task(self._run_one(delivery, running))
            self._running[delivery.entry_id] = running

    async def _run_one(self, delivery: Delivery, running: RunningTask) -> None:
        try:
            await self.executor.run(delivery, running)
            self._finished_tasks += 1
        except asyncio.CancelledError:
            pass  # drain deadline; `_finish_drain` hands the entry back
        except Exception:
            # A bug in recording, not in the handler; the entry stays pending and is adopted
            # again, so nothing is lost, but say so loudly.
            log.exception("worker %s: task %s failed outside its handler", self.consumer,
                          running.task_id)
        finally:
            self._running.pop(delivery.entry_id, None)
            if not running.thread_may_run:
                # A sync handler's thread that outlived its task keeps its slot "started":
                # the supervisor kills this worker at the deadline and no one re-runs it
                # while the thread still runs.
                self._board.free(running.board_slot)
                self._free_slots.append(running.board_slot)
            if self._solo == delivery.entry_id:
                self._solo = None
            self._wake.set()
            self._check_task_budget()

    def _check_task_budget(self) -> None:
        if (self._max_tasks is not None and self._finished_tasks >= self._max_tasks
                and not self._draining):
            self._send(Retiring("max_tasks"))
            self.drain(self.config.task_timeout_seconds + self.config.hang_grace_seconds)

    # -- drain ------------------------------------------------------------------------------

    def drain(self, seconds: float) -> None:
        if not self._draining:
            self._draining = True
            self._drain_deadline = time.monotonic() + seconds
            log.info("worker %s draining (%d running, %.0fs)", self.consumer,
                     len(self._running), seconds)
        self._wake.set()

    async def _finish_drain(self) -> None:
        tasks = [r.task for r in self._running.values() if r.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=max(self._drain_deadline - time.monotonic(), 0))
        leftover = list(self._running.values())
        for running in leftover:
            running.cancel_reason = "drain"
            if running.task is not None:
                running.task.cancel()
        await asyncio.gather(*(r.task for r in leftover if r.task), return_exceptions=True)
        # Hand back only what certainly stopped: a sync handler's thread cannot be cancelled,
        # so its entry stays pending until this process has exited and the supervisor moves it.
        stopped = [r for r in leftover if not r.thread_may_run]
        started = {r.entry_id for r in stopped if r.handler_started}
        ids = ([r.entry_id for r in stopped] + [d.entry_id for d in self._suspects]
               + [d.entry_id for d in self._prefetched])
        if not ids:
            return
        for _ in range(20):
            try:
                handed = await self.queue.hand_back(ids, started)
                log.info("worker %s handed back %d unfinished task(s)", self.consumer, handed)
                return
            except (RedisError, OSError) as exc:
                log.warning("worker %s: hand-back failed (%s)", self.consumer, exc)
                await asyncio.sleep(0.25)
        # Still pending under our consumer: the supervisor moves them on when we exit.

    # -- supervisor link --------------------------------------------------------------------

    def _send(self, message: WorkerMessage) -> None:
        self._outbox.put(message)

    def _become_unhealthy(self, reason: str) -> None:
        """A sync handler's thread outlived its timeout: take no more work, and give the
        thread until the supervisor's deadline (the hang grace) to end on its own."""
        self._send(Unhealthy(reason))
        self.drain(self.config.hang_grace_seconds)

    def _on_control(self, message: SupervisorMessage) -> None:
        """A message from the supervisor (read by the lifeline thread)."""
        match message:
            case Drain(seconds=seconds):
                self.drain(seconds)
            case Pause():
                self._paused = True
            case Resume():
                self._paused = False
            case Adopt():
                self._adopt_requested = True
            case ReportMemory():
                self._send(self._tracer.report() if self._tracer is not None
                           else MemoryReport((), 0))
        self._wake.set()

    def _send_heartbeat(self) -> None:
        running = tuple(RunningEntry(r.entry_id, r.task_id, r.handler, r.started_at)
                        for r in self._running.values())
        db = DbPoolSizes(*self.store.pool_sizes()) if self.store is not None else None
        self._outbox.put(Heartbeat(running=running, stats=tuple(self._stats.drain()), db=db,
                                   redis_ok=self._redis_ok, draining=self._draining))

    async def _heartbeats(self, beat: Beat) -> None:
        while True:
            beat()
            self._send_heartbeat()
            await asyncio.sleep(self.config.heartbeat_interval_seconds)

    async def _watch_cancellations(self, beat: Beat) -> None:
        """Cancel running tasks whose cancellation a client requested."""
        while True:
            beat()
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            ids = {r.task_id: r for r in self._running.values() if r.task_id}
            try:
                cancelled = await self.queue.cancelled(list(ids))
            except (RedisError, OSError):
                continue
            for task_id in cancelled:
                running = ids[task_id]
                # Only while the handler runs: a task already recording its outcome finishes.
                if running.task is not None and running.in_handler and not running.cancel_reason:
                    running.cancel_reason = "cancel"
                    running.task.cancel()

    async def _close(self) -> None:
        steps = [asyncio.ensure_future(self._invalidations.stop())]
        steps += [asyncio.ensure_future(close()) for close in reversed(self._closers)]
        _, stuck = await asyncio.wait(steps, timeout=CLOSE_WAIT_SECONDS)
        if stuck:
            log.warning("worker %s: %d connection(s) did not close in time", self.consumer,
                        len(stuck))
        for step in steps:
            if step.done() and not step.cancelled():
                step.exception()  # retrieved: closing errors do not matter on the way out
