"""The pod's main process: keeps N warm workers, replaces bad ones, drains on SIGTERM.

Started by `cli.py`. Workers are forked from a multiprocessing fork server that preloaded the
runtime and the user's handler modules: each new worker starts in milliseconds with the code
already imported and shared copy-on-write, and the supervisor itself may run threads and an
event loop (forking those directly is unsafe).

Every 0.2 s the supervisor checks each worker: not warm in time, silent past the heartbeat
timeout, or running a task past timeout + grace -> SIGKILL and replace; memory is policed by
`memory_guard.py` (per-worker USS limits, the pod-level breaker) through the same kill/retire.
When a worker dies, the tasks it held are moved to its replacement at once (`upkeep.py`), so a
crash costs a re-run, not a lease timeout. The single metrics registry lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import random
import secrets
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from agent_runtime import ipc
from agent_runtime.board import Board
from agent_runtime.config import RuntimeSettings
from agent_runtime.contract import consumer_name
from agent_runtime.entries import TEXT_ERRORS
from agent_runtime.handles import RunningEntry, WorkerHandle, describe_exit
from agent_runtime.health import HealthServer
from agent_runtime.maintenance import QueueMaintenance
from agent_runtime.memory_guard import MemoryGuard
from agent_runtime.metrics import RuntimeMetrics
from agent_runtime.pgbouncer_metrics import PgBouncerMetrics
from agent_runtime.reaper import reap_orphans
from agent_runtime.supervised import Supervised, all_ok
from agent_runtime.upkeep import DatabaseUpkeep, HandOver, LeaseRenewal, QueueUpkeep
from agent_runtime.worker_process import EXIT_BOOT_ERROR
from agent_runtime.worker_process import main as worker_main

log = logging.getLogger(__name__)

TICK_SECONDS = 0.2
MEMORY_EVERY_SECONDS = 0.5
MAX_SPAWN_BACKOFF_SECONDS = 30.0
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
        self.metrics = RuntimeMetrics(self.config.handler_map)
        self.metrics.workers_max.set(self.config.workers)
        self._boot_id = secrets.token_hex(3)
        self._mp = multiprocessing.get_context("forkserver")
        self._slots: dict[int, WorkerHandle | None] = dict.fromkeys(range(self.config.workers))
        self._generation = dict.fromkeys(range(self.config.workers), 0)
        self._spawn_after = dict.fromkeys(range(self.config.workers), 0.0)
        self._failures = dict.fromkeys(range(self.config.workers), 0)
        self._retiring: list[WorkerHandle] = []
        # Dead workers whose entries go to their slot's next worker once it is live.
        self._transfers: list[WorkerHandle] = []
        # Consumers of ours that may still hold entries (forgotten once handed over).
        self._consumers: set[str] = set()
        self._memory = MemoryGuard(self.config, self.metrics, self)
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
        # The fork server imports these once; every worker starts with them loaded and shared.
        refs = [*self.config.handler_map.values(), self.config.init_hook or ""]
        modules = ["agent_runtime.worker_process"] + [r.partition(":")[0] for r in refs if r]
        self._mp.set_forkserver_preload(sorted(set(modules)))
        redis = Redis.from_url(self.settings.secrets.redis_url.get_secret_value(),
                               decode_responses=True, encoding_errors=TEXT_ERRORS,
                               socket_connect_timeout=5.0, socket_timeout=10.0,
                               client_name=f"{self.settings.pod_name}-sup")
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
            ipc.send(handle.conn, {"type": "drain", "seconds": grace})
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

    def _spawn(self, slot: int) -> WorkerHandle | None:
        self._generation[slot] += 1
        generation = self._generation[slot]
        consumer = consumer_name(self.settings.pod_name, self._boot_id, slot, generation)
        max_tasks = None
        if self.config.max_tasks_per_worker is not None:
            # Jitter staggers recycling so the workers do not all restart together.
            max_tasks = self.config.max_tasks_per_worker + random.randint(
                0, self.config.max_tasks_jitter)
        parent_conn, child_conn = self._mp.Pipe(duplex=True)
        board = Board.create(self.config.concurrency)
        board.confirm_leases_until(self._leases_ok_until)
        process = self._mp.Process(
            target=worker_main, name=f"agentpool-worker-{slot}",
            args=(self.settings, slot, consumer, child_conn, max_tasks, board))
        try:
            process.start()
        except OSError as exc:
            log.error("cannot start worker for slot %d: %s", slot, exc)
            parent_conn.close()
            child_conn.close()
            board.close()
            self._spawn_after[slot] = time.monotonic() + 1.0
            return None
        child_conn.close()
        handle = WorkerHandle(slot=slot, generation=generation, consumer=consumer,
                              process=process, conn=parent_conn, max_tasks=max_tasks,
                              board=board)
        self._slots[slot] = handle
        self._consumers.add(consumer)
        loop = asyncio.get_running_loop()
        loop.add_reader(parent_conn.fileno(), self._on_message, handle)
        loop.add_reader(process.sentinel, self._on_exit, handle)
        log.info("started worker %s (pid %s, max tasks %s)", consumer, process.pid, max_tasks)
        return handle

    def _live(self) -> list[WorkerHandle]:
        current = [h for h in self._slots.values() if h is not None]
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
        message = ipc.receive(handle.conn)
        if message is None:
            asyncio.get_running_loop().remove_reader(handle.conn.fileno())
            return
        handle.last_seen = time.monotonic()
        for member in ipc.unpack(message):
            self._dispatch(handle, member)

    def _dispatch(self, handle: WorkerHandle, message: ipc.Message) -> None:
        kind = message.get("type")
        if kind == "heartbeat":
            handle.apply_heartbeat(message)
            self.metrics.apply_worker_stats(message.get("stats", []))
        elif kind == "start":
            handle.running[str(message["entry"])] = RunningEntry(
                str(message["task"]), str(message["handler"]), float(message["at"]))
            self.metrics.task_started(str(message["handler"]), float(message["wait"]))
        elif kind == "done":
            handle.running.pop(str(message["entry"]), None)
            self.metrics.task_finished(str(message["handler"]), str(message["outcome"]),
                                       float(message["duration"]), bool(message["retried"]),
                                       message.get("dead"), float(message["at"]))
        elif kind == "dead":
            self.metrics.dead_lettered.labels(str(message["handler"]),
                                              str(message["reason"])).inc()
        elif kind == "ready":
            handle.ready = True
            self._failures[handle.slot] = 0
            if self._memory.breaker.is_open:
                ipc.send(handle.conn, {"type": "pause"})
        elif kind in ("retiring", "unhealthy"):
            reason = "max_tasks" if kind == "retiring" else "unhealthy"
            if kind == "unhealthy":
                handle.retire_detail = str(message.get("reason", "unhealthy"))
            self.retire(handle, reason, drain=False)
        elif kind == "boot_error":
            handle.boot_error = str(message.get("error"))

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
        if drain:
            ipc.send(handle.conn, {"type": "drain",
                                   "seconds": self.config.task_timeout_seconds})
        if self._slots.get(handle.slot) is handle:
            self._retiring.append(handle)
            self._slots[handle.slot] = None
            if not self._draining:
                self._spawn(handle.slot)

    def kill(self, handle: WorkerHandle, reason: str, detail: str) -> None:
        if handle.kill_reason is not None or handle.exited:
            return
        handle.kill_reason = reason
        if handle.retiring is None:
            self.metrics.restarts.labels(reason).inc()
        log.warning("killing worker %s (pid %s): %s", handle.consumer, handle.pid, detail)
        handle.exit_error = f"worker killed: {detail}"
        started = [slot.entry_id for slot in handle.started_slots()]
        self._remember_errors(handle, started, handle.exit_error)
        handle.process.kill()

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
                self._failures[handle.slot] += 1
        elif handle.exit_error is None and handle.started_at_exit:
            # Retired, and it still had handlers running (a sync handler's thread past its
            # timeout): their tasks run again elsewhere; say why they stopped.
            handle.exit_error = f"worker retired: {handle.retire_detail or handle.retiring}"
            self._remember_errors(handle, handle.started_at_exit, handle.exit_error)
        handle.conn.close()
        if handle in self._retiring:
            self._retiring.remove(handle)
        if self._slots.get(handle.slot) is handle:
            self._slots[handle.slot] = None
            failures = self._failures[handle.slot]
            backoff = min(0.5 * 2 ** (failures - 1), MAX_SPAWN_BACKOFF_SECONDS) if failures else 0
            self._spawn_after[handle.slot] = time.monotonic() + backoff
            if not self._draining and not backoff:
                self._spawn(handle.slot)
        if not self._draining:
            self._transfers.append(handle)

    def _due_transfers(self) -> list[HandOver]:
        due = []
        for source in self._transfers:
            target = self._slots.get(source.slot)
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
                ipc.send(handle.conn, {"type": "adopt"})
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
            for slot, occupant in self._slots.items():
                if occupant is None and now >= self._spawn_after[slot]:
                    self._spawn(slot)
        if now >= self._next_memory_check:
            self._next_memory_check = now + MEMORY_EVERY_SECONDS
            current = {id(h) for h in self._slots.values() if h is not None}
            self._memory.check(self._live(), current)
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

    def broadcast(self, message: dict[str, Any]) -> None:
        for handle in self._live():
            ipc.send(handle.conn, message)

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
