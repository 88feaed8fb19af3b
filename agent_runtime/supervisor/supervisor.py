"""The pod's main process: keeps N warm workers, replaces bad ones, drains on SIGTERM.

Started by `cli.py`. Each of the pod's `workers` slots (`slots.py`) holds one worker process,
started from a fork server that preloaded the handlers (`launcher.py`). Workers report over
their pipe (`agent_runtime.ipc`): the messages update each worker's record (`worker_handle.py`)
and the pod's metrics.

Every 0.2 s the supervisor checks each worker: not warm in time, silent past the heartbeat
timeout, or running a task past timeout + grace -> SIGKILL and replace; memory is policed by
`memory_guard.py` (per-worker USS limits, the pod-level breaker) through the same kill/retire.
When a worker dies, the tasks it held are moved to its replacement at once (`upkeep.py`), so a
crash costs a re-run, not a lease timeout. The single metrics registry lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from agent_runtime.aio.supervised import Supervised, all_ok
from agent_runtime.config import RuntimeSettings
from agent_runtime.contract import MEMORY_REPORTS_MAX_LENGTH, memory_reports_key
from agent_runtime.ipc import pipe
from agent_runtime.ipc.exits import EXIT_BOOT_ERROR, describe_exit
from agent_runtime.ipc.messages import (
    Adopt,
    BootError,
    DeadLettered,
    Drain,
    Heartbeat,
    MemoryReport,
    Message,
    Pause,
    Ready,
    ReportMemory,
    Retiring,
    SupervisorMessage,
    TaskDone,
    TaskStarted,
    Unhealthy,
)
from agent_runtime.queue.maintenance import QueueMaintenance
from agent_runtime.queue.validation import TEXT_ERRORS
from agent_runtime.supervisor.cpu import CpuAccounting
from agent_runtime.supervisor.health import HealthServer
from agent_runtime.supervisor.launcher import WorkerLauncher
from agent_runtime.supervisor.leaks import add_allocations, build_report, log_report
from agent_runtime.supervisor.memory_guard import MemoryGuard
from agent_runtime.supervisor.pgbouncer_metrics import PgBouncerMetrics
from agent_runtime.supervisor.pod_metrics import RuntimeMetrics
from agent_runtime.supervisor.reaper import reap_orphans
from agent_runtime.supervisor.slots import Slot
from agent_runtime.supervisor.upkeep import DatabaseUpkeep, HandOver, LeaseRenewal, QueueUpkeep
from agent_runtime.supervisor.worker_handle import WorkerHandle

log = logging.getLogger(__name__)

TICK_SECONDS = 0.2
MEMORY_EVERY_SECONDS = 0.5
# A chore loop (lease renewal, queue upkeep) silent this long is stuck: liveness fails.
CHORE_STALL_SECONDS = 60.0
SHUTDOWN_WAIT_SECONDS = 5.0


async def within(step: Coroutine[Any, Any, Any], seconds: float) -> None:
    """Run a shutdown step, but give up waiting for it after `seconds` (see `run`)."""
    task = asyncio.ensure_future(step)
    await asyncio.wait({task}, timeout=seconds)


def dump_tasks() -> None:
    """SIGUSR1: log where every asyncio task of the supervisor waits, down the whole chain of
    awaits (for people debugging a stuck pod: `kill -USR1 <pid>`)."""
    for task in asyncio.all_tasks():
        frames = []
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is not None:
                frames.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} "
                              f"{frame.f_code.co_name}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        log.warning("task %s (%s):\n%s", task.get_name(), task._state.lower(),
                    "\n".join(frames))


class Supervisor:
    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.config = settings.config
        self.metrics = RuntimeMetrics(self.config.handler_map, self.config.budgets)
        self.metrics.workers_max.set(self.config.workers)
        self._boot_id = secrets.token_hex(3)
        self._launcher = WorkerLauncher(settings, self._boot_id)
        self._slots = [Slot(index) for index in range(self.config.workers)]
        self._retiring: list[WorkerHandle] = []
        # Dead workers whose entries go to their slot's next worker once it is live.
        self._transfers: list[WorkerHandle] = []
        # Consumers of ours that may still hold entries (forgotten once handed over).
        self._consumers: set[str] = set()
        self._memory = MemoryGuard(self.config, self.metrics, self)
        self._cpu = CpuAccounting(self.metrics, self.config.workers)
        self._draining = False
        self._drain_deadline = 0.0
        self._exit_seen = asyncio.Event()
        self._stop = asyncio.Event()
        self._last_tick = time.monotonic()
        self._leases_ok_until = 0.0  # monotonic; see `_leases_confirmed`
        # Entries whose execution had started, per consumer of ours, read from the boards of
        # workers that exited (for the final hand-back of a drain).
        self._started: dict[str, tuple[str, ...]] = {}
        self._next_memory_check = 0.0
        self.health: HealthServer | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> int:
        self._launcher.preload()
        redis = Redis.from_url(self.settings.secrets.redis_url.get_secret_value(),
                               decode_responses=True, encoding_errors=TEXT_ERRORS,
                               socket_connect_timeout=5.0, socket_timeout=10.0,
                               client_name=f"{self.settings.pod_name}-sup")
        self._redis = redis
        self._maintenance = QueueMaintenance(redis, self.config,
                                             pod_id=f"{self.settings.pod_name}-{self._boot_id}")
        self._leases = LeaseRenewal(self._maintenance, self.config.lease_seconds,
                                    self._live_consumers, self._leases_confirmed)
        self._queue_upkeep = QueueUpkeep(self._maintenance, self._due_transfers,
                                         self._transferred, self.config.lease_seconds)
        self._db_upkeep = DatabaseUpkeep(self.settings)
        self._chores = [
            Supervised("lease renewal", self._leases.run, stall_seconds=CHORE_STALL_SECONDS),
            Supervised("queue upkeep", self._queue_upkeep.run,
                       stall_seconds=CHORE_STALL_SECONDS),
            Supervised("database upkeep", self._db_upkeep.run),
        ]
        stats_url = self.settings.secrets.pgbouncer_stats_url
        pgbouncer = (PgBouncerMetrics(stats_url.get_secret_value()).render
                     if stats_url is not None else None)
        self.health = HealthServer(self.metrics, self._liveness, self._readiness, pgbouncer)
        port = await self.health.start(self.config.metrics_host, self.config.metrics_port)
        log.info("supervisor %s: %d workers x %d slots, metrics on %s:%d", self._boot_id,
                 self.config.workers, self.config.concurrency, self.config.metrics_host, port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        background = [asyncio.create_task(chore.run(), name=chore.name)
                      for chore in self._chores]
        background.append(asyncio.create_task(self._ticks(), name="ticks"))
        try:
            await self._stop.wait()
            await self._drain()
        finally:
            for task in background:
                task.cancel()
            # Bounded: a task stuck in a client library's cleanup must not keep a stopped pod
            # from exiting (its workers are gone and its tasks handed back by now).
            _, stuck = await asyncio.wait(background, timeout=SHUTDOWN_WAIT_SECONDS)
            if stuck:
                log.error("%s did not stop within %.0fs; exiting without waiting for them",
                          ", ".join(task.get_name() for task in stuck), SHUTDOWN_WAIT_SECONDS)
                dump_tasks()
            await within(self.health.stop(), SHUTDOWN_WAIT_SECONDS)
            await within(redis.aclose(), SHUTDOWN_WAIT_SECONDS)
        log.info("supervisor stopped")
        return 0

    def request_stop(self) -> None:
        if self._stop.is_set():
            # A second signal: stop waiting for tasks; in-flight work is handed back.
            self._drain_deadline = 0.0
            return
        log.info("supervisor: stop requested, draining")
        self._draining = True
        self._stop.set()

    async def _drain(self) -> None:
        grace = self.config.drain_grace_seconds
        for handle in self._live():
            pipe.send(handle.conn, Drain(grace))
        # Workers hand back what they could not finish by `grace`; allow them a moment for it.
        self._drain_deadline = time.monotonic() + grace + 2.0
        await self._wait_for_exits(lambda: self._drain_deadline)
        for handle in self._live():
            log.warning("worker %s did not stop in time; killing it", handle.consumer)
            handle.kill_reason = "drain"
            handle.process.kill()
        kill_deadline = time.monotonic() + 3.0
        await self._wait_for_exits(lambda: kill_deadline)
        await self._hand_back_everything()

    async def _wait_for_exits(self, deadline: Callable[[], float]) -> None:
        """Until no worker is left or the (movable) deadline passed."""
        while self._live():
            remaining = deadline() - time.monotonic()
            if remaining <= 0:
                return
            self._exit_seen.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_seen.wait(), min(remaining, 0.5))

    async def _hand_back_everything(self) -> None:
        """Whatever our consumers still hold goes back to the stream for other pods."""
        for _attempt in range(10):
            try:
                handed = 0
                for consumer in sorted(self._consumers):
                    handed += await self._maintenance.hand_back_all(
                        consumer, self._started.get(consumer, ()))
                    await self._maintenance.forget_consumer(consumer)
                await self._maintenance.leave()
                if handed:
                    log.info("supervisor handed back %d task(s)", handed)
                return
            except (RedisError, OSError) as exc:
                log.warning("hand-back failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
        log.error("could not hand back tasks; other pods reclaim them after the lease")

    # -- spawning ---------------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> WorkerHandle | None:
        try:
            handle = self._launcher.launch(slot.index, slot.next_generation(),
                                           self._leases_ok_until)
        except OSError as exc:
            log.error("cannot start worker for slot %d: %s", slot.index, exc)
            slot.start_failed(time.monotonic())
            return None
        slot.worker = handle
        self._consumers.add(handle.consumer)
        loop = asyncio.get_running_loop()
        loop.add_reader(handle.conn.fileno(), self._on_message, handle)
        loop.add_reader(handle.process.sentinel, self._on_exit, handle)
        return handle

    def _live(self) -> list[WorkerHandle]:
        current = [slot.worker for slot in self._slots if slot.worker is not None]
        return [h for h in current + self._retiring if not h.exited]

    def _leases_confirmed(self, at: float) -> None:
        """Every lease of this pod was renewed by `at`: running tasks may go on until their
        leases could lapse, less a margin; each worker reads that from its board."""
        self._leases_ok_until = at + self._leases.safe_for
        for handle in self._live():
            if handle.board is not None:
                handle.board.confirm_leases_until(self._leases_ok_until)

    def _live_consumers(self) -> list[str]:
        # Include dead workers whose entries are not yet handed over: keep those leases too.
        pending = [handle.consumer for handle in self._transfers]
        return [h.consumer for h in self._live()] + pending

    # -- worker messages --------------------------------------------------------------------

    def _on_message(self, handle: WorkerHandle) -> None:
        messages = pipe.receive(handle.conn)
        if messages is None:
            asyncio.get_running_loop().remove_reader(handle.conn.fileno())
            return
        handle.last_seen = time.monotonic()
        for message in messages:
            self._dispatch(handle, message)

    def _dispatch(self, handle: WorkerHandle, message: Message) -> None:
        match message:
            case Heartbeat():
                handle.apply_heartbeat(message)
                self.metrics.apply_worker_stats(message.stats)
            case TaskStarted():
                handle.running[message.entry] = message.running
                self.metrics.task_started(message.handler, message.wait, message.trace)
            case TaskDone():
                self._task_done(handle, message)
            case DeadLettered():
                self.metrics.dead_lettered.labels(message.handler, message.reason).inc()
            case Ready():
                handle.ready = True
                self._slots[handle.slot].warmed_up()
                if self._memory.breaker.is_open:
                    pipe.send(handle.conn, Pause())
            case Retiring():
                self.retire(handle, "max_tasks", drain=False)
            case Unhealthy():
                handle.retire_detail = message.reason
                self.retire(handle, "unhealthy", drain=False)
            case BootError():
                handle.boot_error = message.error
            case MemoryReport():
                if handle.pending_report is not None:
                    add_allocations(handle.pending_report, message)
                    self._publish_memory_report(handle)

    def _task_done(self, handle: WorkerHandle, message: TaskDone) -> None:
        if message.wait is not None:  # its TaskStarted was folded into it
            self.metrics.task_started(message.handler, message.wait, message.trace)
        handle.running.pop(message.entry, None)
        handle.trend.task_done(message.handler, message.duration, message.at)
        self.metrics.task_finished(message.handler, message.outcome, message.duration,
                                   message.retried, message.dead, message.at, message.trace)

    # -- decisions --------------------------------------------------------------------------

    def retire(self, handle: WorkerHandle, reason: str, *, drain: bool = True) -> None:
        """Drain a worker and start its replacement right away (no capacity dip)."""
        if handle.retiring is not None or handle.exited:
            return
        handle.retiring = reason
        handle.retire_deadline = (time.monotonic() + self.config.task_timeout_seconds
                                  + self.config.hang_grace_seconds + 5.0)
        self.metrics.restarts.labels(reason).inc()
        log.info("recycling worker %s (%s)", handle.consumer, reason)
        if reason == "memory":
            self._report_memory(handle, "recycled", self._recycle_detail(handle))
            if self.config.tracemalloc_frames:  # the worker adds its allocations, then drains
                pipe.send(handle.conn, ReportMemory())
            else:
                self._publish_memory_report(handle)
        if drain:
            pipe.send(handle.conn, Drain(self.config.task_timeout_seconds))
        slot = self._slots[handle.slot]
        if slot.holds(handle):
            # It leaves its slot now: the replacement warms up while it drains.
            self._retiring.append(handle)
            slot.worker = None
            if not self._draining:
                self._spawn(slot)

    def kill(self, handle: WorkerHandle, reason: str, detail: str) -> None:
        if handle.kill_reason is not None or handle.exited:
            return
        handle.kill_reason = reason
        if handle.retiring is None:
            self.metrics.restarts.labels(reason).inc()
        log.warning("killing worker %s (pid %s): %s", handle.consumer, handle.pid, detail)
        if reason == "memory":
            self._report_memory(handle, "killed", detail)
            self._publish_memory_report(handle)
        handle.exit_error = f"worker killed: {detail}"
        started = [slot.entry_id for slot in handle.started_slots()]
        self._remember_errors(handle, started, handle.exit_error)
        handle.process.kill()

    # -- memory reports ---------------------------------------------------------------------

    def _recycle_detail(self, handle: WorkerHandle) -> str:
        limit = self.config.max_worker_memory_bytes
        if limit is not None and handle.uss is not None \
                and handle.uss > limit * self.config.worker_memory_recycle_ratio:
            return (f"USS {handle.uss} bytes above {self.config.worker_memory_recycle_ratio:g} "
                    f"of its {limit} byte limit")
        return "the largest worker while the pod's memory breaker is open"

    def _report_memory(self, handle: WorkerHandle, action: str, detail: str) -> None:
        if handle.pending_report is None:
            handle.pending_report = build_report(
                pod=self.settings.pod_name, worker=handle.consumer, slot=handle.slot,
                pid=handle.pid, action=action, detail=detail, uss=handle.uss,
                trend=handle.trend)

    def _publish_memory_report(self, handle: WorkerHandle) -> None:
        """Log the report and add it to the pool's capped stream (for the operator's Event);
        best effort: a report must never get in the way of the recycle."""
        report, handle.pending_report = handle.pending_report, None
        if report is None:
            return
        message = log_report(report)
        asyncio.get_running_loop().create_task(self._store_memory_report(report, message))

    async def _store_memory_report(self, report: dict[str, Any], message: str) -> None:
        try:
            await self._redis.xadd(memory_reports_key(self.config.key_prefix),
                                   {"report": json.dumps(report), "message": message},
                                   maxlen=MEMORY_REPORTS_MAX_LENGTH, approximate=True)
        except (RedisError, OSError) as exc:
            log.warning("could not store the memory report of %s: %s", report["worker"], exc)

    def _remember_errors(self, handle: WorkerHandle, entry_ids: list[str] | tuple[str, ...],
                         error: str) -> None:
        """At once, from what the worker reported; the hand-over records it again from the
        queue (which also knows tasks that died before the worker could report them)."""
        task_ids = handle.task_ids(entry_ids)
        if task_ids:
            asyncio.get_running_loop().create_task(self._record_errors(task_ids, error))

    async def _record_errors(self, task_ids: list[str], error: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._maintenance.record_last_error(task_ids, error)

    def _on_exit(self, handle: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(handle.process.sentinel)
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(handle.conn.fileno())
        handle.process.join(timeout=0)
        handle.close_board()
        handle.exited = True
        self._publish_memory_report(handle)  # the worker died before adding its part
        self._started[handle.consumer] = handle.started_at_exit
        self._exit_seen.set()
        code = handle.process.exitcode
        expected = handle.kill_reason is not None or handle.retiring is not None
        if not expected and not self._draining:
            reason = "boot_error" if code == EXIT_BOOT_ERROR else "crash"
            self.metrics.restarts.labels(reason).inc()
            detail = handle.boot_error or describe_exit(code)
            log.warning("worker %s exited unexpectedly (%s)", handle.consumer, detail)
            handle.exit_error = f"worker died: {describe_exit(code)}"
            self._remember_errors(handle, handle.started_at_exit, handle.exit_error)
            if not handle.ready:
                self._slots[handle.slot].died_cold()
        elif handle.exit_error is None and handle.started_at_exit:
            # Retired, and it still had handlers running (a sync handler's thread past its
            # timeout): their tasks run again elsewhere; say why they stopped.
            handle.exit_error = f"worker retired: {handle.retire_detail or handle.retiring}"
            self._remember_errors(handle, handle.started_at_exit, handle.exit_error)
        handle.conn.close()
        if handle in self._retiring:
            self._retiring.remove(handle)
        slot = self._slots[handle.slot]
        if slot.holds(handle):
            backoff = slot.vacate(time.monotonic())
            if not self._draining and not backoff:
                self._spawn(slot)
        if not self._draining:
            self._transfers.append(handle)

    def _due_transfers(self) -> list[HandOver]:
        due = []
        for source in self._transfers:
            target = self._slots[source.slot].worker
            if target is not None and not target.exited:
                due.append(HandOver(source.consumer, target.consumer, source.exit_error,
                                    source.started_at_exit))
        return due

    def _transferred(self, source: str, target: str, moved: int) -> None:
        self._transfers = [h for h in self._transfers if h.consumer != source]
        self._consumers.discard(source)  # the transfer deleted it from the group
        self._started.pop(source, None)
        for handle in self._live():
            if handle.consumer == target:
                # Even with nothing moved: the replacement re-checks what it owns.
                pipe.send(handle.conn, Adopt())
        if moved:
            log.info("moved %d task(s) of %s to %s", moved, source, target)

    # -- periodic checks --------------------------------------------------------------------

    async def _ticks(self) -> None:
        while True:
            try:
                self._tick()
            except Exception:  # a bug here must not stop supervision
                log.exception("supervisor tick failed")
            await asyncio.sleep(TICK_SECONDS)

    def _tick(self) -> None:
        now = time.monotonic()
        self._last_tick = now
        reap_orphans()  # only as PID 1 (no init in the container)
        for handle in self._live():
            self._check_worker(handle, now)
        if not self._draining:
            for slot in self._slots:
                if slot.due(now):
                    self._spawn(slot)
        if now >= self._next_memory_check:
            self._next_memory_check = now + MEMORY_EVERY_SECONDS
            current = {id(slot.worker) for slot in self._slots if slot.worker is not None}
            self._memory.check(self._live(), current)
            self._cpu.sample(self._live())
        live = self._live()
        states: dict[str, int] = {}
        for handle in live:
            states[handle.state] = states.get(handle.state, 0) + 1
        self.metrics.set_worker_states(states)
        self.metrics.longest_running.set(max((h.oldest_task_age(now) for h in live),
                                             default=0.0))
        pools = [h.db_pool for h in live if h.db_pool]
        self.metrics.db_connections.labels("used").set(sum(p[0] - p[1] for p in pools))
        self.metrics.db_connections.labels("idle").set(sum(p[1] for p in pools))
        self.metrics.db_connections_max.set(sum(p[2] for p in pools))

    def _check_worker(self, handle: WorkerHandle, now: float) -> None:
        config = self.config
        if not handle.ready and now - handle.spawned_at > config.startup_timeout_seconds:
            self.kill(handle, "startup_timeout",
                       f"not warm after {config.startup_timeout_seconds:g}s")
        elif handle.ready and now - handle.last_seen > config.heartbeat_timeout_seconds:
            self.kill(handle, "heartbeat", f"silent for {now - handle.last_seen:.0f}s")
        elif handle.oldest_task_age(now) > config.task_timeout_seconds + config.hang_grace_seconds:
            self.kill(handle, "timeout",
                       f"task exceeded its {config.task_timeout_seconds:g}s timeout")
        elif handle.retiring is not None and now > handle.retire_deadline:
            self.kill(handle, handle.retiring, "did not finish draining in time")

    def broadcast(self, message: SupervisorMessage) -> None:
        for handle in self._live():
            pipe.send(handle.conn, message)

    # -- probes -----------------------------------------------------------------------------

    def _liveness(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self._last_tick
        return all_ok([(stalled < 10.0, f"supervisor tick {stalled:.1f}s ago"),
                       *(chore.alive() for chore in self._chores)])

    def _readiness(self) -> tuple[bool, str]:
        if self._draining:
            return False, "draining"
        chores_ok, detail = all_ok([chore.ready() for chore in self._chores])
        if not chores_ok:
            return False, detail
        for redis in (self._queue_upkeep.redis, self._leases.redis):
            if not redis.ok:
                return False, f"redis unavailable: {redis.last_error}"
        if not self._db_upkeep.schema_ready:
            return False, f"database schema not ready: {self._db_upkeep.last_error}"
        if self._memory.breaker.is_open:
            return False, "memory breaker open"
        if time.monotonic() >= self._leases_ok_until:
            return False, "leases not confirmed (tasks wait until Redis renews them)"
        warm = sum(1 for h in self._live() if h.ready and h.retiring is None)
        if not warm:
            return False, "no warm worker"
        return True, f"ok: {warm} warm worker(s)"
